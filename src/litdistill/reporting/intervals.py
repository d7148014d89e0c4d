""" "A beats B" with an interval: the paired bootstrap over test rows and seeds.

Both models are scored on the same test rows, so the comparison is paired: every bootstrap replicate
draws the test rows with replacement once (the same rows for both models and every seed) and the
seeds with replacement, and computes the mean over the drawn seeds of ``metric(A_s) - metric(B_s)``.
The 95% interval is the 2.5th to 97.5th percentile of the replicates; it holds both sources of
variation, the test sample and the training seed.

The metrics are computed here from weighted confusion counts, vectorised over replicates (thousands of
torchmetrics calls would take minutes); a test checks them against the report's torchmetrics values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

METRICS = ("acc", "f1", "token_acc")


@dataclass(frozen=True)
class PairedDifference:
    """``metric(A) - metric(B)``: the mean over seeds, its per-seed values and the bootstrap interval."""

    metric: str
    difference: float
    per_seed: list[float]
    ci95: tuple[float, float]
    rounds: int

    def as_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "difference": self.difference,
            "seeds": len(self.per_seed),
            "per_seed": self.per_seed,
            "ci95": list(self.ci95),
            "bootstrap_rounds": self.rounds,
        }


def weighted_metric(preds: Tensor, labels: Tensor, weights: Tensor, metric: str, num_labels: int) -> Tensor:
    """``metric`` of ``preds`` [S, N] against ``labels`` [N] under row weights [B, N] -> [B, S].

    acc / token_acc: weighted share correct over rows whose label is not -100. f1: the positive class's
    F1 when binary, else the macro mean over classes (a class with no true or predicted row counts 0),
    the definitions of :func:`litdistill.core.metrics.task_metrics`.
    """
    counted = (labels != -100).to(weights.dtype)  # [N]
    w = weights * counted  # [B, N]
    if metric in ("acc", "token_acc"):
        correct = (preds == labels).to(w.dtype)  # [S, N]
        return (w @ correct.T) / w.sum(-1, keepdim=True).clamp_min(1e-12)  # [B, S]
    if metric != "f1":
        raise ValueError(f"report.metric={metric!r} has no bootstrap interval; valid: {list(METRICS)}")
    classes = [1] if num_labels == 2 else list(range(num_labels))
    scores = []
    for c in classes:
        is_pred, is_true = (preds == c).to(w.dtype), (labels == c).to(w.dtype)  # [S, N], [N]
        tp = w @ (is_pred * is_true).T  # [B, S]
        fp = w @ (is_pred * (1 - is_true)).T
        fn = (w * is_true) @ (1 - is_pred).T
        denominator = 2 * tp + fp + fn
        scores.append(torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1e-12), torch.zeros_like(tp)))
    return torch.stack(scores).mean(0)  # [B, S]


def _draws(rows: int, seeds: int, rounds: int, seed: int) -> tuple[Tensor, Tensor]:
    """Bootstrap draws: test-row multiplicities [B, N] and seed indices [B, S]."""
    rng = np.random.default_rng(seed)
    weights = torch.from_numpy(rng.multinomial(rows, np.full(rows, 1 / rows), size=rounds)).to(torch.float64)
    return weights, torch.from_numpy(rng.integers(0, seeds, size=(rounds, seeds)))


def paired_bootstrap(
    a: Tensor,
    b: Tensor,
    labels: Tensor,
    metric: str,
    num_labels: int,
    rounds: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """Mean over seeds of ``metric(a) - metric(b)`` with its paired-bootstrap 95% interval.

    ``a``, ``b``: predictions [S, N], one row per training seed, on the same test rows; ``labels`` [N].
    """
    if a.shape != b.shape or a.dim() != 2 or a.shape[1] != labels.shape[0]:
        raise ValueError(f"predictions must be [seeds, rows] alike, got {tuple(a.shape)}, {tuple(b.shape)}")
    seeds, rows = a.shape
    ones = torch.ones(1, rows, dtype=torch.float64)
    per_seed = (
        weighted_metric(a, labels, ones, metric, num_labels) - weighted_metric(b, labels, ones, metric, num_labels)
    )[0]  # [S]
    weights, drawn = _draws(rows, seeds, rounds, seed)
    diff = weighted_metric(a, labels, weights, metric, num_labels) - weighted_metric(
        b, labels, weights, metric, num_labels
    )  # [B, S]
    replicates = diff.gather(1, drawn).mean(1)  # [B]
    low, high = np.percentile(replicates.numpy(), [2.5, 97.5])
    return PairedDifference(metric, float(per_seed.mean()), per_seed.tolist(), (float(low), float(high)), rounds)


def bootstrap_interval(
    preds: Tensor, labels: Tensor, metric: str, num_labels: int, rounds: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """One model's ``metric``, the mean over its seeds (``preds`` [S, N]), with the 95% bootstrap interval
    over test rows and seeds, drawn as :func:`paired_bootstrap` draws them."""
    seeds, rows = preds.shape
    mean = float(weighted_metric(preds, labels, torch.ones(1, rows, dtype=torch.float64), metric, num_labels).mean())
    weights, drawn = _draws(rows, seeds, rounds, seed)
    replicates = weighted_metric(preds, labels, weights, metric, num_labels).gather(1, drawn).mean(1)  # [B]
    low, high = np.percentile(replicates.numpy(), [2.5, 97.5])
    return mean, (float(low), float(high))
