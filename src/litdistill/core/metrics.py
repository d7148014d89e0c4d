"""Task metrics for validation and reports: the same definitions for student, teacher and baseline."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


def task_metrics(task: str, num_labels: int) -> MetricCollection:
    """Accuracy and F1 for classification (F1 of class 1 when binary, macro otherwise); next-token
    accuracy for causal LMs over real tokens (``num_labels`` is then the vocabulary size)."""
    if task == "classification":
        f1 = (
            MulticlassF1Score(num_classes=2, average=None)
            if num_labels == 2
            else MulticlassF1Score(num_classes=num_labels, average="macro")
        )
        return MetricCollection({"acc": MulticlassAccuracy(num_classes=num_labels, average="micro"), "f1": f1})
    return MetricCollection(
        {"token_acc": MulticlassAccuracy(num_classes=num_labels, average="micro", ignore_index=-100)}
    )


def metric_values(metrics: MetricCollection) -> dict[str, float]:
    """Compute and flatten (a per-class F1 of a binary task reports the positive class)."""
    out = {}
    for name, value in metrics.compute().items():
        out[name] = float(value[-1] if value.dim() == 1 else value)
    return out


def agreement(student_preds: Tensor, teacher_preds: Tensor, labels: Tensor | None = None) -> tuple[int, int]:
    """(agreeing, counted) between two prediction tensors; -100 label positions are skipped."""
    mask = torch.ones_like(student_preds, dtype=torch.bool) if labels is None else labels != -100
    return int((student_preds[mask] == teacher_preds[mask]).sum()), int(mask.sum())
