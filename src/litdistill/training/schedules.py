"""Temperature and loss-weight schedules, as Lightning callbacks that set a loss attribute per step."""

from __future__ import annotations

import math

import lightning as L

from litdistill.losses.base import check_temperature

SHAPES = ("constant", "linear", "cosine")


class LossParamSchedule(L.Callback):
    """Move ``losses[loss].<param>`` from ``start`` to ``end`` over training.

    ``warmup_steps`` hold ``start``; then the value moves linearly or along a half cosine until the
    last step (``total_steps``, default: the trainer's estimated optimizer steps).
    """

    def __init__(
        self,
        loss: str,
        param: str,
        start: float,
        end: float,
        shape: str = "linear",
        warmup_steps: int = 0,
        total_steps: int | None = None,
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown schedule shape {shape!r}; valid: {list(SHAPES)}")
        if param not in ("temperature", "weight"):
            raise ValueError(f"schedulable params are 'temperature' and 'weight', got {param!r}")
        for value in (start, end):
            if param == "temperature":
                check_temperature(f"schedule of {loss}.temperature", value)
            elif not (math.isfinite(value) and value >= 0):
                raise ValueError(f"schedule of {loss}.weight: values must be finite and >= 0, got {value}")
        self.loss, self.param, self.start, self.end = loss, param, float(start), float(end)
        self.shape, self.warmup_steps, self.total_steps = shape, warmup_steps, total_steps

    def value_at(self, step: int, total: int) -> float:
        """The value at optimizer step ``step`` of ``total``: a pure function, so a resumed run and a
        test get the same value at the same step. ``end`` is reached at step ``total - 1``, then held."""
        if self.shape == "constant" or step < self.warmup_steps:
            return self.start
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - 1 - self.warmup_steps))
        if self.shape == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.start + (self.end - self.start) * progress

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.loss not in pl_module.losses:
            raise ValueError(f"schedule targets loss {self.loss!r}; configured losses: {list(pl_module.losses)}")
        if not hasattr(pl_module.losses[self.loss], self.param):
            raise ValueError(f"loss {self.loss!r} has no {self.param!r} to schedule")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        total = self.total_steps or int(trainer.estimated_stepping_batches)
        value = self.value_at(trainer.global_step, total)
        setattr(pl_module.losses[self.loss], self.param, value)
        pl_module.log(f"schedule/{self.loss}.{self.param}", value, on_step=True, on_epoch=False)
