"""Progressive layer dropping (Zhang & He, 2020) for the student, as a Lightning callback.

A layer-subset student is layer dropping done once, before training (``layer_subset``). Progressive
layer dropping does it stochastically during training: at step t, student block i (0-based, of L)
is kept with probability

    keep_i(t) = 1 - (i + 1) / L * (1 - theta(t)),   theta(t) = (1 - theta_bar) * exp(-gamma * t) + theta_bar

so training starts with every block (theta(0) = 1), drops more as it goes (theta -> theta_bar), and
drops deep blocks more often than shallow ones. A dropped block is the identity (its input passes
through unchanged, as in a residual network with the branch switched off) and costs nothing, which
is where the speed-up comes from. Evaluation, export and the teacher always run every block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from litdistill.core.architecture import layer_stack


class ProgressiveLayerDrop(L.Callback):
    """Skip student blocks at random during training, more of them and deeper ones as steps go by.

    Args:
        theta_bar: the keep probability the last block tends to (0 < theta_bar <= 1; 1 = never drop).
        gamma: how fast theta(t) decays towards theta_bar, per optimizer step (>= 0).
    """

    def __init__(self, theta_bar: float = 0.5, gamma: float = 0.001) -> None:
        if not 0.0 < theta_bar <= 1.0:
            raise ValueError(f"theta_bar must be in (0, 1], got {theta_bar}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.theta_bar, self.gamma = theta_bar, gamma
        self._blocks: list[nn.Module] = []
        self._step = 0

    def keep_probability(self, step: int, index: int, num_layers: int) -> float:
        theta = (1.0 - self.theta_bar) * math.exp(-self.gamma * step) + self.theta_bar
        return 1.0 - (index + 1) / num_layers * (1.0 - theta)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "attentions" in getattr(pl_module, "needs", frozenset()):
            raise ValueError(
                "ProgressiveLayerDrop cannot run with an attention loss: a dropped block has no "
                "attention map to compare; remove callbacks.layer_drop or the attention term"
            )
        if trainer.world_size > 1:  # ranks would drop different blocks: DDP's gradient buckets would wait forever
            raise ValueError(
                f"ProgressiveLayerDrop runs in one process only, got world_size={trainer.world_size}; "
                "remove callbacks.layer_drop or train on one device"
            )
        _, stack = layer_stack(pl_module.student)
        self._blocks = list(stack)
        for index, block in enumerate(self._blocks):
            block.forward = self._droppable(block, block.forward, index, len(self._blocks))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the blocks' own forward back: inference and export run the whole student."""
        for block in self._blocks:
            if "forward" in vars(block):
                del block.forward
        self._blocks = []

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)  # an interrupted fit leaves no patched blocks behind either

    def _droppable(
        self, block: nn.Module, forward: Callable[..., Any], index: int, num_layers: int
    ) -> Callable[..., Any]:
        shape: dict[str, int | None] = {}  # the block's output: a tensor (None) or a tuple of this length

        def maybe_skip(*args: Any, **kwargs: Any) -> Any:
            keep = self.keep_probability(self._step, index, num_layers)
            if not block.training or "tuple_len" not in shape or float(torch.rand(())) < keep:
                out = forward(*args, **kwargs)
                shape["tuple_len"] = len(out) if isinstance(out, tuple) else None
                return out
            hidden: Tensor = args[0] if args else kwargs["hidden_states"]  # [B, T, H], passed through
            n = shape["tuple_len"]
            return hidden if n is None else (hidden, *([None] * (n - 1)))

        return maybe_skip
