"""Labels written by an LLM teacher (``litdistill generate prompt=ade_label``) as training targets.

Black-box distillation for classification: the teacher is an endpoint that labelled the sentences,
so its "outputs" are a file. The train split's gold labels are replaced by the teacher's, matched by
sentence text (the generation record's ``text`` field); with ``soft`` labels each row also carries
the teacher's class probabilities, which reach the losses as ``teacher_logits = log p`` [C], so the
usual KD terms train on them. The held-out splits keep their gold labels: the report scores the
LLM's own labels of the test sentences against gold, next to the student's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor

from litdistill.generation.store import load_generated

LABEL_TYPES = ("hard", "soft")
TEACHER_LOGITS = "teacher_logits"
PROB_FLOOR = 1e-6  # log(0) would make every KD term infinite


@dataclass(frozen=True)
class TeacherLabel:
    label: int
    probs: tuple[float, ...] | None  # [C], summing to 1; None when the endpoint gave no logprobs


def read_teacher_labels(path: str | Path, num_labels: int) -> dict[str, TeacherLabel]:
    """Sentence text -> the teacher's label, from a generation run's directory or JSONL file.

    Raises before training when the file holds no labels (a run with ``prompt=answer``, say), a label
    outside ``0..num_labels-1``, or two different labels for one sentence.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(
            f"data.teacher_labels={str(path)!r} does not exist; give the output_dir (or its "
            "dataset.jsonl) of `litdistill generate prompt=ade_label ...`"
        )
    labels: dict[str, TeacherLabel] = {}
    for record in load_generated(source):
        if record.get("label") is None or record.get("text") is None:
            continue
        label = int(record["label"])
        if not 0 <= label < num_labels:
            raise ValueError(
                f"data.teacher_labels={str(path)!r}: record {record.get('id')!r} has label {label}, "
                f"outside 0..{num_labels - 1} (data.num_labels={num_labels})"
            )
        probs = _probs(record.get("soft_label"), num_labels, record.get("id"), path)
        previous = labels.get(record["text"])
        if previous is not None and previous.label != label:
            raise ValueError(
                f"data.teacher_labels={str(path)!r} labels the sentence {record['text'][:60]!r} both "
                f"{previous.label} and {label}; regenerate into a fresh output_dir"
            )
        labels[record["text"]] = TeacherLabel(label, probs)
    if not labels:
        raise ValueError(
            f"data.teacher_labels={str(path)!r} holds no labelled records (fields 'text' and 'label'); "
            "generate them with a label prompt, e.g. `litdistill generate prompt=ade_label ...`"
        )
    return labels


def _probs(soft: Any, num_labels: int, ident: Any, path: str | Path) -> tuple[float, ...] | None:
    if soft is None:
        return None
    if len(soft) != num_labels or any(not math.isfinite(p) or p < 0 for p in soft) or sum(soft) <= 0:
        raise ValueError(
            f"data.teacher_labels={str(path)!r}: record {ident!r} has soft_label {soft}; expected "
            f"{num_labels} non-negative probabilities"
        )
    total = float(sum(soft))
    return tuple(float(p) / total for p in soft)


def relabel(
    ds: Dataset, labels: dict[str, TeacherLabel], text_column: str, label_column: str, label_type: str, split: str
) -> tuple[Dataset, dict[str, int]]:
    """``ds`` with its labels replaced by the teacher's; rows the teacher did not label are dropped.

    ``soft`` adds a ``teacher_logits`` column, log of the teacher's probabilities [C]. Returns the new
    split and counts (``kept``, ``dropped``) for the log and the report.
    """
    if label_type not in LABEL_TYPES:
        raise ValueError(f"data.teacher_label_type={label_type!r}; valid types: {list(LABEL_TYPES)}")
    texts = ds[text_column]
    keep = [i for i, text in enumerate(texts) if text in labels]
    if not keep:
        raise ValueError(
            f"none of the {len(ds)} {split!r} sentences is in the teacher labels "
            f"({len(labels)} labelled sentences): was the generation run on this split's {text_column!r} column?"
        )
    chosen = [labels[texts[i]] for i in keep]
    if label_type == "soft" and any(t.probs is None for t in chosen):
        missing = sum(t.probs is None for t in chosen)
        raise ValueError(
            f"data.teacher_label_type=soft, but {missing} of the {len(chosen)} matched labels have no "
            "soft_label (the endpoint returned no logprobs); use data.teacher_label_type=hard"
        )
    out = ds.select(keep).remove_columns([label_column]).add_column(label_column, [t.label for t in chosen])
    if label_type == "soft":
        out = out.add_column(TEACHER_LOGITS, [[math.log(max(p, PROB_FLOOR)) for p in t.probs] for t in chosen])
    return out, {"kept": len(keep), "dropped": len(ds) - len(keep)}


def teacher_predictions(ds: Dataset, labels: dict[str, TeacherLabel], text_column: str) -> Tensor:
    """The teacher's label for each row of ``ds`` in order, [N]; -1 where it gave none."""
    return torch.tensor([labels[t].label if t in labels else -1 for t in ds[text_column]], dtype=torch.long)
