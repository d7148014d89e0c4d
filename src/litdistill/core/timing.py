"""CPU timing shared by the report and the export checks: one clock, one example row."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from litdistill.core.forward import MODEL_INPUTS


def seconds(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Wall time of one call ``fn(*args, **kwargs)``, in seconds (``time.perf_counter``)."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def median_ms(fn: Callable[[], Any], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return 1000 * statistics.median(seconds(fn) for _ in range(max(1, repeats)))


def median_row(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch's median-length row without its padding, [1, T]: what one request to a deployed model holds.

    Timing a row padded to the batch's longest would time the padding too.
    """
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()  # [B, T]
    lengths = mask.sum(-1)
    row = int(lengths.argsort()[(len(lengths) - 1) // 2])
    return {k: v[row][mask[row]].unsqueeze(0) for k, v in inputs.items()}
