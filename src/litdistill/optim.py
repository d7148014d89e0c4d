"""Optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "ln_")


def parameter_groups(named: Sequence[tuple[str, nn.Parameter]]) -> list[dict]:
    """Two groups: weight decay for matrices, none for biases and norms (the BERT/Llama convention)."""
    decay = [p for n, p in named if not any(tag in n for tag in NO_DECAY)]
    no_decay = [p for n, p in named if any(tag in n for tag in NO_DECAY)]
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def warmup_decay(
    optimizer: torch.optim.Optimizer, num_training_steps: int, warmup_ratio: float = 0.1, shape: str = "linear"
) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear or cosine decay to zero."""
    if shape not in ("linear", "cosine", "constant"):
        raise ValueError(f"unknown schedule shape {shape!r}; valid: linear, cosine, constant")
    warmup = int(warmup_ratio * num_training_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if shape == "constant":
            return 1.0
        progress = (step - warmup) / max(1, num_training_steps - warmup)
        return max(0.0, 1.0 - progress) if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return LambdaLR(optimizer, factor)
