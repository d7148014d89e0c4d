"""Held-out predictions and CPU speed of a model, for the report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

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


def agreement_rate(a: Tensor, b: Tensor, labels: Tensor, task: str) -> float:
    agree, counted = agreement(a, b, labels if task == "causal_lm" else None)
    return agree / max(counted, 1)


@torch.inference_mode()  # what deployed inference runs under: no autograd bookkeeping at all
def cpu_speeds(
    models: dict[str, nn.Module], example: dict[str, Tensor], threads: int, batch_size: int = 32, repeats: int = 10
) -> dict[str, dict[str, float]]:
    """Median latency per example at batch 1 and throughput at ``batch_size``, on CPU, per model.

    Both time the example batch's median-length row, unpadded (:func:`median_row`); batch
    ``batch_size`` repeats it.

    Every model gets the same example row, batch size and thread count, and the repetitions are
    interleaved across models, so machine noise hits all of them alike and their ratios hold.
    """
    for name, model in models.items():
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise ValueError(f"cpu_speeds measures CPU models; move {name!r} with .cpu() first")
        model.eval()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    one = median_row(example)
    many = {k: v.repeat(batch_size, 1) for k, v in one.items()}
    single: dict[str, list[float]] = {name: [] for name in models}
    batched: dict[str, list[float]] = {name: [] for name in models}
    try:
        for model in models.values():  # warm-up
            seconds(model, **one), seconds(model, **many)
        for i in range(repeats):
            for name, model in models.items():
                single[name].append(seconds(model, **one))
                if i % 3 == 0:
                    batched[name].append(seconds(model, **many))
    finally:
        torch.set_num_threads(previous_threads)
    return {
        name: {
            "latency_ms": 1000 * statistics.median(single[name]),
            "throughput_per_s": batch_size / statistics.median(batched[name]),
        }
        for name in models
    }
