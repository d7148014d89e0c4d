"""Training progress in optimizer steps, the unit every stage is set in (``max_steps``, or the steps its
epochs make): a tqdm bar on a terminal, plain log lines otherwise (CI, ``nohup``, a SLURM log).

Lightning's own bar counts batches within an epoch and titles a fit by steps ``Epoch 2/-2``
(``max_epochs=-1``); with output redirected it prints nothing readable until the stage ends, so a long
teacher fine-tune looks hung. This callback replaces it: one bar (or a line every ``every_s`` seconds,
as Hugging Face's Trainer logs every ``logging_steps``) over the fit's real total.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from tqdm.auto import tqdm

log = logging.getLogger("litdistill.progress")


def has_terminal() -> bool:
    return sys.stderr.isatty()


class StepProgress(L.Callback):
    """``<stage>: step 40/120 (33%), loss 0.412, 12 s elapsed, ~24 s left``: as a bar, or as lines."""

    def __init__(self, stage: str = "training", every_s: float = 10.0, bar: bool | None = None) -> None:
        self.stage, self.every_s = stage, every_s
        self.bar = has_terminal() if bar is None else bar
        self._start = self._last = 0.0
        self._total = 0.0  # optimizer steps of the whole fit, read once the loaders are set up
        self._tqdm: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._total = trainer.estimated_stepping_batches
        if self.bar and trainer.is_global_zero:
            self._tqdm = tqdm(total=int(self._total), desc=self.stage, unit="step", dynamic_ncols=True)
            self._tqdm.update(trainer.global_step)  # a resumed fit starts where it stopped

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not trainer.is_global_zero:
            return
        if self._tqdm is not None:
            self._tqdm.update(trainer.global_step - self._tqdm.n)
            loss = self._loss(trainer)
            if loss is not None:
                self._tqdm.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s or trainer.global_step >= self._total:
            self._last = now
            log.info(self.line(trainer, now))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    @staticmethod
    def _loss(trainer: L.Trainer) -> float | None:
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        return None if loss is None else float(loss)

    def line(self, trainer: L.Trainer, now: float) -> str:
        step, total = trainer.global_step, self._total
        elapsed = now - self._start
        loss = self._loss(trainer)
        parts = [f"step {step}/{int(total)} ({100 * step / max(total, 1):.0f}%)"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts.append(f"{elapsed:.0f} s elapsed")
        if 0 < step < total:
            parts.append(f"~{elapsed / step * (total - step):.0f} s left")
        return f"{self.stage}: " + ", ".join(parts)
