"""Checks that teacher and student speak the same output space before any training starts.

Two models of one family can differ by a handful of vocabulary entries; a logit loss then compares
wrong ids silently. These checks name exactly what differs.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase


class IncompatibleModelsError(ValueError):
    """Teacher and student outputs cannot be compared position by position."""


def first_vocab_differences(teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase, limit: int = 5) -> list[str]:
    """Up to ``limit`` ids whose token differs (or exists on one side only), as readable strings."""
    t_by_id = {i: tok for tok, i in teacher.get_vocab().items()}
    s_by_id = {i: tok for tok, i in student.get_vocab().items()}
    diffs = []
    for i in sorted(set(t_by_id) | set(s_by_id)):
        if t_by_id.get(i) != s_by_id.get(i):
            diffs.append(f"id {i}: teacher {t_by_id.get(i)!r} vs student {s_by_id.get(i)!r}")
            if len(diffs) == limit:
                break
    return diffs


def check_tokenizers(teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase) -> None:
    diffs = first_vocab_differences(teacher, student)
    if diffs:
        raise IncompatibleModelsError(
            f"teacher and student vocabularies differ (teacher {teacher.name_or_path!r}: {len(teacher)} tokens, "
            f"student {student.name_or_path!r}: {len(student)} tokens); first differing ids: {'; '.join(diffs)}. "
            "Token-level logit losses need one vocabulary: pick a student of the teacher's family, or use "
            "sequence-level distillation (litdistill generate) which needs no shared vocabulary."
        )


def check_output_spaces(teacher: PreTrainedModel, student: PreTrainedModel, task: str) -> None:
    """Classification: same label count and names. Causal LM: same vocabulary size."""
    tc, sc = teacher.config, student.config
    if task == "classification":
        if tc.num_labels != sc.num_labels:
            raise IncompatibleModelsError(f"teacher has {tc.num_labels} labels, student {sc.num_labels}; set data.num_labels for both")
        if tc.id2label != sc.id2label:
            raise IncompatibleModelsError(f"label names differ: teacher {tc.id2label} vs student {sc.id2label}")
    elif tc.vocab_size != sc.vocab_size:
        raise IncompatibleModelsError(
            f"teacher logits cover {tc.vocab_size} tokens, student logits {sc.vocab_size}; "
            "token-level losses need equal vocabularies (or use sequence-level distillation)"
        )
