"""A training order that a resumed run reproduces exactly, even from a checkpoint written mid-epoch.

The order is a function of (seed, epoch) only, on one process or many (it is a ``DistributedSampler``,
so Lightning keeps it instead of injecting its own). The DataModule stores where training stood
(epoch, batches consumed) in every checkpoint, and a resumed run skips the batches already seen.
Lightning's own stateful-dataloader path is not used: it never loads the state when
``estimated_stepping_batches`` (which the LR schedule reads) built the loader first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Shuffle by ``seed + epoch`` (this rank's share under DDP); after a resume, start part-way in once.

    ``resume`` ({"epoch": e, "samples": n}, shared with the DataModule) is consumed by the first
    iteration of epoch >= e, whichever loader makes it. ``__len__`` stays the full epoch: Lightning
    counts the batches already consumed itself.
    """

    def __init__(
        self,
        dataset: Sized,
        seed: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        resume: dict[str, int] | None = None,
    ) -> None:
        if num_replicas is None or rank is None:
            distributed = dist.is_available() and dist.is_initialized()
            num_replicas = dist.get_world_size() if distributed else 1
            rank = dist.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.resume = {} if resume is None else resume

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self.resume and self.resume["epoch"] <= self.epoch:
            if self.resume["epoch"] == self.epoch:
                indices = indices[self.resume["samples"] :]
            self.resume.clear()
        return iter(indices)


class ResumableTrainOrder:
    """Mixin for a LightningDataModule: ``train_sampler`` plus the ``state_dict`` Lightning checkpoints."""

    _train_sampler: ResumableSampler | None = None
    _train_batch_size = 1

    @property
    def _resume(self) -> dict[str, int]:
        return self.__dict__.setdefault("_resume_slot", {})

    def shuffle_seed(self) -> int:
        """The run's seed (``seed_everything`` exports it), so every rank and a resumed run agree."""
        return int(os.environ.get("PL_GLOBAL_SEED", getattr(self, "hparams", {}).get("seed", 0)))

    def loader_generator(self) -> torch.Generator:
        """For DataLoader iterators, which otherwise draw their base seed from the global RNG (dropout's)."""
        return torch.Generator().manual_seed(self.shuffle_seed())

    def train_sampler(self, dataset: Sized, batch_size: int) -> ResumableSampler:
        self._train_batch_size = batch_size
        self._train_sampler = ResumableSampler(dataset, seed=self.shuffle_seed(), resume=self._resume)
        if self._resume:  # for loaders that start iterating (workers) before Lightning sets the epoch
            self._train_sampler.set_epoch(self._resume["epoch"])
        return self._train_sampler

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != "fit" or self._train_sampler is None:
            return {}
        ready = trainer.fit_loop.epoch_loop.batch_progress.current.ready  # batches of this epoch trained on
        if ready >= trainer.num_training_batches:  # the epoch's data is used up: the next one starts fresh
            return {}
        return {"epoch": trainer.current_epoch, "batches": ready, "batch_size": self._train_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume.clear()
        if state:
            self._resume.update(epoch=state["epoch"], samples=state["batches"] * state["batch_size"])
