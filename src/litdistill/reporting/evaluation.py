"""Held-out predictions and CPU speed of a model, for the report."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litdistill.core.forward import align_labels, run_model
from litdistill.core.metrics import agreement, metric_values, task_metrics
from litdistill.core.timing import median_row, seconds


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict[str, Tensor]], task: str) -> tuple[Tensor, Tensor, float]:
    """Argmax predictions, labels (token positions flattened for causal LMs) and the mean NLL of the
    labels (its exp is the perplexity on this data for causal LMs)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, labels, nll, counted = [], [], 0.0, 0
    for batch in batches:
        batch = align_labels({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}, task)
        logits = run_model(model, batch, frozenset({"logits"}), task).logits
        flat_labels = batch["labels"].reshape(-1)
        nll += float(
            F.cross_entropy(
                logits.reshape(flat_labels.numel(), -1).float(), flat_labels, ignore_index=-100, reduction="sum"
            )
        )
        counted += int((flat_labels != -100).sum())
        preds.append(logits.argmax(-1).reshape(-1).cpu())
        labels.append(flat_labels.cpu())
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels), nll / max(counted, 1)


def score(preds: Tensor, labels: Tensor, task: str, num_labels: int, mean_nll: float | None = None) -> dict[str, float]:
    """Task metrics; causal LMs also get the perplexity of the held-out responses."""
    metrics = task_metrics(task, num_labels)
    metrics.update(preds, labels)
    values = metric_values(metrics)
    if task == "causal_lm" and mean_nll is not None:
        values["perplexity"] = math.exp(min(mean_nll, 50.0))
    return values


def num_classes(model: nn.Module, task: str) -> int:
    """What a model's argmax ranges over: its labels, or a causal LM's vocabulary."""
    return model.config.num_labels if task == "classification" else model.config.vocab_size


def majority_class_rate(labels: Tensor) -> float:
    """The share of the most frequent label among the counted rows (label -100 is not counted)."""
    counted = labels[labels != -100]
    return float(torch.bincount(counted).max() / max(len(counted), 1))


def agreement_rate(a: Tensor, b: Tensor, labels: Tensor, task: str) -> float:
    agree, counted = agreement(a, b, labels if task == "causal_lm" else None)
    return agree / max(counted, 1)


# a model's latency is reported as reliable when the interquartile range of its timed repetitions is
# within this fraction of their median; more rounds are timed (up to the time budget) until it is
RELIABLE_SPREAD = 0.10


@torch.inference_mode()  # what deployed inference runs under: no autograd bookkeeping at all
def cpu_speeds(
    models: dict[str, Callable[..., Any]],
    example: dict[str, Tensor],
    threads: int,
    batch_size: int = 32,
    repeats: int = 10,
    budget_s: float = 30.0,
) -> dict[str, dict[str, float]]:
    """Median latency per example at batch 1 and throughput at ``batch_size``, on CPU, per model, with
    the spread of the repetitions. A model is an ``nn.Module`` or any callable on the same keyword
    inputs (an exported format's runner), so every row of the report is timed in the same rounds.

    Both time the example batch's median-length row, unpadded (:func:`median_row`); batch
    ``batch_size`` repeats it. Every model gets the same example row, batch size and thread count,
    and the repetitions are interleaved across models (the order rotated every round), so machine
    noise hits all of them alike and their ratios hold.

    At least ``repeats`` rounds; then more, while any model's spread (interquartile range over median
    of its batch-1 times, ``latency_spread_pct``) exceeds 10% and ``budget_s`` is not spent. A spread
    still above 10% at the end means the machine was busy: the report says the figures are not reliable.
    """
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            continue
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise ValueError(f"cpu_speeds measures CPU models; move {name!r} with .cpu() first")
        model.eval()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    one = median_row(example)
    many = {k: v.repeat(batch_size, 1) for k, v in one.items()}
    names = list(models)
    single: dict[str, list[float]] = {name: [] for name in names}
    batched: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    try:
        for model in models.values():  # warm-up
            seconds(model, **one), seconds(model, **many)
        while rounds < max(1, repeats) or (
            max(_spread(single[n]) for n in names) > RELIABLE_SPREAD and time.perf_counter() - start < budget_s
        ):
            order = names[rounds % len(names) :] + names[: rounds % len(names)]  # rotate who goes first
            for name in order:
                single[name].append(seconds(models[name], **one))
                if rounds % 3 == 0:
                    batched[name].append(seconds(models[name], **many))
            rounds += 1
    finally:
        torch.set_num_threads(previous_threads)
    return {
        name: {
            "latency_ms": 1000 * statistics.median(single[name]),
            "throughput_per_s": batch_size / statistics.median(batched[name]),
            "latency_spread_pct": 100 * _spread(single[name]),
            "timing_rounds": rounds,
        }
        for name in names
    }


def _spread(times: list[float]) -> float:
    """Interquartile range over median; infinite with fewer than 4 times (not enough to judge)."""
    if len(times) < 4:
        return math.inf
    q1, median, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / median if median > 0 else math.inf
