"""Held-out predictions and CPU speed of a model, for the report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from litdistill.forward import align_labels, run_model
from litdistill.metrics import agreement, metric_values, task_metrics


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict[str, Tensor]], task: str) -> tuple[Tensor, Tensor]:
    """Argmax predictions and labels over all batches (token positions flattened for causal LMs)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, labels = [], []
    for batch in batches:
        batch = align_labels({k: v.to(device) for k, v in batch.items()}, task)
        logits = run_model(model, batch, frozenset({"logits"}), task).logits
        preds.append(logits.argmax(-1).reshape(-1).cpu())
        labels.append(batch["labels"].reshape(-1).cpu())
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels)


def score(preds: Tensor, labels: Tensor, task: str, num_labels: int) -> dict[str, float]:
    metrics = task_metrics(task, num_labels)
    metrics.update(preds, labels)
    return metric_values(metrics)


def agreement_rate(a: Tensor, b: Tensor, labels: Tensor, task: str) -> float:
    agree, counted = agreement(a, b, labels if task == "causal_lm" else None)
    return agree / max(counted, 1)


def _median_seconds(model: nn.Module, inputs: dict[str, Tensor], repeats: int) -> float:
    for _ in range(2):  # warm-up
        model(**inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def cpu_speed(model: nn.Module, example: dict[str, Tensor], threads: int, batch_size: int = 32, repeats: int = 10) -> dict[str, float]:
    """Median latency per example at batch 1 and throughput at ``batch_size``, on CPU, fixed threads.

    Both models of a comparison get the same example row, batch size and thread count.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("cpu_speed measures a CPU copy of the model; move it with .cpu() first")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    one = {k: v[:1] for k, v in example.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    many = {k: v.repeat(batch_size, 1) for k, v in one.items()}
    try:
        single = _median_seconds(model, one, repeats)
        batched = _median_seconds(model, many, max(3, repeats // 3))
    finally:
        torch.set_num_threads(previous_threads)
    return {"latency_ms": 1000 * single, "throughput_per_s": batch_size / batched}
