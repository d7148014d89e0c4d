"""Test-only callback that interrupts a real CLI run at an exact point (configured by Hydra override).

+callbacks.killer._target_=tests.killer.KillAt +callbacks.killer.step=3          SIGTERM after step 3
+callbacks.killer._target_=tests.killer.KillAt +callbacks.killer.val_batch=0     SIGTERM in validation
+callbacks.killer._target_=tests.killer.KillAt +callbacks.killer.write_at_step=8 SIGKILL mid checkpoint write
"""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAt(L.Callback):
    def __init__(
        self,
        step: int | None = None,
        val_batch: int | None = None,
        val_epoch: int = 0,
        write_at_step: int | None = None,
        sig: str = "SIGTERM",
    ) -> None:
        self.step, self.val_batch, self.val_epoch, self.write_at_step = step, val_batch, val_epoch, write_at_step
        self.sig = getattr(signal, sig)
        self.fired = False

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            os.kill(os.getpid(), self.sig)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.write_at_step is None:
            return
        fsync = os.fsync

        def dying_fsync(fd: int) -> None:  # inside litdistill.core.io.atomic_write_bytes, before the rename
            if trainer.global_step == self.write_at_step:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)  # half of the checkpoint reached the disk
                os.kill(os.getpid(), signal.SIGKILL)
            fsync(fd)

        os.fsync = dying_fsync

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step is not None and trainer.global_step == self.step:
            self._fire()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (
            self.val_batch is not None
            and not trainer.sanity_checking
            and batch_idx == self.val_batch
            and trainer.current_epoch == self.val_epoch
        ):
            self._fire()
