"""Progress as plain log lines when no terminal shows a bar (CI, ``nohup``, a SLURM log).

Lightning's bar redraws one terminal line; with output redirected it prints nothing readable until the
stage ends, so a long teacher fine-tune looks hung. Without a TTY the trainers get this callback instead
(as Hugging Face's Trainer logs every ``logging_steps``): a line every ``every_s`` seconds and at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L

log = logging.getLogger("litdistill.progress")


def has_terminal() -> bool:
    return sys.stderr.isatty()


class PlainProgress(L.Callback):
    """``<stage>: step 40/120 (33%), loss 0.412, 12 s elapsed, ~24 s left`` every ``every_s`` seconds."""

    def __init__(self, stage: str = "training", every_s: float = 10.0) -> None:
        self.stage, self.every_s = stage, every_s
        self._start = self._last = 0.0
        self._total = 0.0  # optimizer steps of the whole fit, read once the loaders are set up

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._total = trainer.estimated_stepping_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = time.monotonic()
        if trainer.is_global_zero and (now - self._last >= self.every_s or trainer.global_step >= self._total):
            self._last = now
            log.info(self.line(trainer, now))

    def line(self, trainer: L.Trainer, now: float) -> str:
        step, total = trainer.global_step, self._total
        elapsed = now - self._start
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        parts = [f"step {step}/{int(total)} ({100 * step / max(total, 1):.0f}%)"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"{elapsed:.0f} s elapsed")
        if 0 < step < total:
            parts.append(f"~{elapsed / step * (total - step):.0f} s left")
        return f"{self.stage}: " + ", ".join(parts)
