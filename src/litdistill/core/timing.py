"""CPU timing: one clock and one example row (the median-length request) for every timed model."""

from __future__ import annotations

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


def median_row(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch's median-length row without its padding, [1, T]: what one request to a deployed model holds.

    Timing a row padded to the batch's longest would time the padding too.
    """
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()  # [B, T]
    lengths = mask.sum(-1)
    row = int(lengths.argsort()[(len(lengths) - 1) // 2])
    return {k: v[row][mask[row]].unsqueeze(0) for k, v in inputs.items()}
