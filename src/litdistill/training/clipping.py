"""Gradient clipping that also works under FSDP.

Lightning's ``FSDPPrecision`` refuses ``gradient_clip_algorithm='norm'``: ``torch.nn.utils.clip_grad_norm_``
over sharded gradients would compute each rank's local norm, not the global one. FSDP's own
``FullyShardedDataParallel.clip_grad_norm_`` on the *root* module computes the global norm across
ranks, so under FSDP norm clipping goes there; everything else (no clipping, clipping by value, other
strategies, DeepSpeed, which clips inside its engine) is left to Lightning.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.optim import Optimizer


def clip_gradients(
    module: L.LightningModule, optimizer: Optimizer, clip_val: float | None, algorithm: Any = None
) -> None:
    """Clip like ``Trainer(gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)`` would, FSDP included."""
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = module.trainer.strategy
    if isinstance(strategy, FSDPStrategy) and clip_val and algorithm in (None, "norm"):
        strategy.model.clip_grad_norm_(clip_val)  # the root FSDP unit: a global norm over every rank's shards
        return
    module.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
