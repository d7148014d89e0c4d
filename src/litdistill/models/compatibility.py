"""Checks that teacher and student speak the same output space before any training starts.

Two models of one family can differ by a handful of vocabulary entries; a logit loss then compares
wrong ids silently. These checks name exactly what differs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from litdistill.models.loading import load_tokenizer

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


class IncompatibleModelsError(ValueError):
    """Teacher and student outputs cannot be compared position by position."""


def first_vocab_differences(
    teacher: PreTrainedTokenizerBase,
    student: PreTrainedTokenizerBase,
    limit: int = 5,
    roles: tuple[str, str] = ("teacher", "student"),
) -> list[str]:
    """Up to ``limit`` ids whose token differs (or exists on one side only), as readable strings."""
    t_by_id = {i: tok for tok, i in teacher.get_vocab().items()}
    s_by_id = {i: tok for tok, i in student.get_vocab().items()}
    diffs = []
    for i in sorted(set(t_by_id) | set(s_by_id)):
        if t_by_id.get(i) != s_by_id.get(i):
            diffs.append(f"id {i}: {roles[0]} {t_by_id.get(i)!r} vs {roles[1]} {s_by_id.get(i)!r}")
            if len(diffs) == limit:
                break
    return diffs


def check_tokenizers(teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase) -> None:
    """The teacher's tokenizer against the data's (which is the student's): one vocabulary for logit losses."""
    diffs = first_vocab_differences(teacher, student)
    if diffs:
        raise IncompatibleModelsError(
            f"teacher and student vocabularies differ (teacher {teacher.name_or_path!r}: {len(teacher)} tokens, "
            f"student {student.name_or_path!r}: {len(student)} tokens); first differing ids: {'; '.join(diffs)}. "
            "Token-level logit losses need one vocabulary: pick a student of the teacher's family, or use "
            "sequence-level distillation (litdistill generate) which needs no shared vocabulary."
        )


def check_student_tokenizer(source: str, data: PreTrainedTokenizerBase) -> None:
    """A pretrained student's own tokenizer (at ``source``) against the data tokenizer (``tokenizer:``).

    The data is tokenised once, with ``tokenizer:``; a pretrained student whose vocabulary differs
    would read every id as another token, silently, and compare the wrong ids with the teacher.
    A checkpoint saved without its tokenizer cannot be checked and is let through.
    """

    if Path(source).is_dir() and not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
        log.info("student %s: saved without a tokenizer; not checked against the data tokenizer", source)
        return  # transformers would make up an empty tokenizer from the model config
    try:
        student = load_tokenizer(source)
    except (OSError, ValueError) as e:
        log.info("student %s: no tokenizer to check against the data tokenizer (%s)", source, e)
        return
    diffs = first_vocab_differences(student, data, roles=("student", "data"))
    if diffs:
        raise IncompatibleModelsError(
            f"the pretrained student's tokenizer {student.name_or_path!r} ({len(student)} tokens) differs from the "
            "data "
            f"tokenizer {data.name_or_path!r} ({len(data)} tokens); first differing ids: {'; '.join(diffs)}. "
            f"Set tokenizer={student.name_or_path} (the teacher must share that vocabulary for logit losses), "
            "or pick a student pretrained with the data tokenizer."
        )


def check_output_spaces(teacher: PreTrainedModel, student: PreTrainedModel, task: str) -> None:
    """Classification: same label count and names. Causal LM: same vocabulary size."""
    tc, sc = teacher.config, student.config
    if task == "classification":
        if tc.num_labels != sc.num_labels:
            raise IncompatibleModelsError(
                f"teacher has {tc.num_labels} labels, student {sc.num_labels}; set data.num_labels for both"
            )
        if tc.id2label != sc.id2label:
            raise IncompatibleModelsError(f"label names differ: teacher {tc.id2label} vs student {sc.id2label}")
    elif tc.vocab_size != sc.vocab_size:
        raise IncompatibleModelsError(
            f"teacher logits cover {tc.vocab_size} tokens, student logits {sc.vocab_size}; "
            "token-level losses need equal vocabularies (or use sequence-level distillation)"
        )


def check_vocabulary_covers(model: nn.Module, tokenizer: PreTrainedTokenizerBase, role: str) -> None:
    """The model's embedding must have a row for every id the data tokenizer produces (a model built
    from a config with a smaller ``vocab_size`` would fail with an IndexError mid-training)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    needed = len(tokenizer)
    if vocab is not None and vocab < needed:
        raise IncompatibleModelsError(
            f"the {role}'s embedding has vocab_size={vocab} rows, but the data tokenizer "
            f"({getattr(tokenizer, 'name_or_path', '?')}) produces ids up to {needed - 1}: give the {role} "
            f"vocab_size >= {needed} (e.g. {role}.config.vocab_size={needed}), or use its own tokenizer"
        )
