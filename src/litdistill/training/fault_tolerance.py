"""Preemption and exact resume: checkpoint on SIGTERM/SIGINT, RNG state in checkpoints, ``resume=true``.

A resumed run reaches the same weights as an uninterrupted one: Lightning restores weights, optimizer,
LR schedule and loop position; the DataModule restores the data position (data/resumable.py); this
callback restores the random state (dropout) right before the first resumed batch.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException

from litdistill.data.resumable import ResumableTrainOrder

log = logging.getLogger(__name__)


def rng_states() -> dict[str, Any]:
    """Every RNG the step uses, in types ``torch.load(weights_only=True)`` accepts (no numpy arrays)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class FaultTolerance(L.Callback):
    """Write ``<checkpoint dir>/last.ckpt`` when a stop is requested, and make resumes exact.

    SIGTERM (a scheduler's preemption notice) is handled by Lightning: the current step finishes, then
    the fit stops with ``SIGTERMException``; this callback checkpoints at that point. The first Ctrl+C
    (SIGINT) is turned into the same graceful stop; a second one stops at once. Checkpoints every N
    optimizer steps, for hard kills that give no notice (SIGKILL, node loss), are Lightning's
    ``ModelCheckpoint(every_n_train_steps=N)`` (``callbacks.step_checkpoint`` in ``conf/callbacks/default.yaml``);
    what Lightning lacks, and this callback adds to every checkpoint, is every rank's random state.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "last",
        graceful_sigint: bool = True,
    ) -> None:
        self.dirpath, self.filename, self.graceful_sigint = dirpath, filename, graceful_sigint
        self._pending_rng: dict[str, Any] | None = None
        self._previous_sigint: Any = None
        self._sigint_seen = False

    # ---- random state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This process's RNG states and, under data parallelism, every rank's (``rng_per_rank``): only
        rank 0 writes the checkpoint, and each rank's dropout stream has moved on by its own batches.
        Every rank saves a checkpoint together, so the gather runs at the same point on all of them."""
        states = rng_states()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return {"rng": states}
        per_rank: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, states)
        return {"rng": states, "rng_per_rank": per_rank}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("rng_per_rank")
        rank, world = (
            (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        )
        if per_rank is not None and len(per_rank) == world:
            self._pending_rng = per_rank[rank]
            return
        if per_rank is not None:  # another world size: the data split changes too, so no resume is exact
            log.warning(
                "checkpoint saved by %d ranks, resumed on %d: every rank takes rank 0's random state",
                len(per_rank),
                world,
            )
        self._pending_rng = state_dict.get("rng")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # as late as possible: setup, sanity checks and loader creation must not shift the stream
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    # ---- graceful stop --------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.datamodule, ResumableTrainOrder):  # it does resume mid-epoch exactly
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its signal handlers: its teardown then restores the original SIGINT one
        if self.graceful_sigint and threading.current_thread() is threading.main_thread():
            self._sigint_seen = False
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint()

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._sigint_seen:
            raise KeyboardInterrupt
        self._sigint_seen = True
        log.warning(
            "interrupted: finishing this step, writing a checkpoint, then stopping (Ctrl+C again stops at once)"
        )
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's graceful path; it forwards SIGTERM to DDP children

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        dirpath = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        return Path(dirpath or Path(trainer.default_root_dir) / "checkpoints") / f"{self.filename}.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, SIGTERMException):
            return  # a crash or a hard stop mid-step: keep the last good checkpoint, not a half-done step
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning(
                "stopped at global step %d (epoch %d); checkpoint: %s. Continue with: litdistill <same "
                "overrides> resume=true run_dir=%s",
                trainer.global_step,
                trainer.current_epoch,
                path,
                trainer.default_root_dir,
            )


def check_resume_mode(mode: Any) -> None:
    if mode not in (True, False, None, "auto"):
        raise ValueError(f"resume={mode!r}; valid: false, true (a checkpoint must exist), auto (use one if present)")


def resume_checkpoint(
    ckpt_path: str | None, mode: bool | str | None, checkpoints: str | Path, run_dir: str | Path
) -> str | None:
    """The checkpoint to start from: ``ckpt_path`` if set; with ``resume=true`` (``mode``) the newest
    checkpoint of the run (``<checkpoints>/*.ckpt``, Lightning's SLURM ``<run_dir>/hpc_ckpt_*.ckpt``),
    an error if there is none; ``resume=auto`` the same, or a fresh start when there is none yet
    (requeued SLURM jobs)."""
    if ckpt_path:
        return str(ckpt_path)
    check_resume_mode(mode)
    if not mode:
        return None
    directory = Path(checkpoints)
    # any checkpoint is a full training state: the newest one wins (never the hidden .tmp of a cut write)
    found = [*directory.glob("*.ckpt"), *Path(run_dir).glob("hpc_ckpt_*.ckpt")]
    for leftover in directory.glob(".*.ckpt.*.tmp"):  # a write cut short by a hard kill: never a checkpoint
        leftover.unlink(missing_ok=True)
    if found:
        return str(max(found, key=lambda p: p.stat().st_mtime))
    if mode == "auto":
        return None
    raise FileNotFoundError(
        f"resume=true, but {directory} holds no checkpoint; pass run_dir=<the interrupted run's "
        "directory> (or hydra.run.dir=...), or ckpt_path=<a .ckpt file>; resume=auto starts "
        "fresh when there is none"
    )
