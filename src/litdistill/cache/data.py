"""Joining cached teacher outputs to training batches, by example index.

:class:`CachedTeacherDataModule` wraps any data module whose loaders are map-style ``DataLoader``
objects (``TextClassificationDataModule``, ``SFTDataModule``): for each cached split it rebuilds the
loader over :class:`IndexedDataset` with the *same batch sampler object* (so the same shuffled,
resumable or distributed order), generator, workers and collate, so every example travels with its
dataset index, and :class:`CachedCollate` adds, after the data module's own collate:

* ``idx`` [B]: the examples' indices in their split;
* full logits: ``teacher_logits`` [B, C] (classification) or [B, T-1, V] (causal LM, zeros off the
  real tokens);
* top-k: ``teacher_topk_logprobs`` [B, (T-1,) k] float32, ``teacher_topk_ids`` int64 (-1 = empty),
  ``teacher_topk_log_tail`` [B, (T-1)] float32;
* hidden states (train split of a store that has them): ``teacher_hidden_states``, a dict from teacher
  layer to [B, T, H] in the store dtype, zeros off the real tokens (attention mask 0), which the
  hidden-state losses mask out anyway.

Causal-LM rows are stored for the real tokens only and are scattered back to the positions where
the shifted labels are not -100 (the module's ``token_mask``), which is what the stored rows were
computed from; a count mismatch raises :class:`CacheAlignmentError` naming the example.
:class:`CachedTeacher` stands in for the teacher in the ``DistillationModule``: no weights, and a
clear error if a batch ever arrives without cached outputs.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from litdistill.cache.codec import hidden_positions
from litdistill.cache.store import ShardReader, TeacherStore
from litdistill.core.outputs import TeacherOutputsInBatch, TopK
from litdistill.data.token_counts import StepTokenCounts
from litdistill.losses.sparse import FLOOR


class CacheAlignmentError(RuntimeError):
    """Cached rows and a batch's real tokens do not line up."""


class IndexedDataset(Dataset):
    """``dataset[i]`` as ``(i, dataset[i])``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return int(i), self.dataset[i]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        """A batch's rows in one call where the wrapped dataset reads batches (a Hugging Face dataset
        does, ~20x faster than row by row), as the plain loader would read them."""
        getitems = getattr(self.dataset, "__getitems__", None)
        rows = getitems(list(indices)) if getitems else [self.dataset[i] for i in indices]
        return [(int(i), row) for i, row in zip(indices, rows)]


class CachedCollate:
    """The data module's collate, then the cached teacher outputs of the batch's examples."""

    def __init__(self, collate: Any, reader: ShardReader, task: str) -> None:
        self.collate, self.reader, self.task = collate, reader, task

    def __call__(self, items: list[tuple[int, Any]]) -> dict[str, Any]:
        idx = [i for i, _ in items]
        batch = dict(self.collate([row for _, row in items]))
        batch["idx"] = torch.as_tensor(idx, dtype=torch.long)
        batch.update(self.teacher_fields(idx, batch))
        if "teacher_topk_ids" in batch:  # the temperature the store's top-k distribution was tempered at
            batch["teacher_topk_temperature"] = torch.full((len(idx),), self.reader.topk_temperature)
        batch.update(self.hidden_fields(idx, batch))
        return batch

    def check_rows(self, idx: list[int], got: list[int], real: list[int], kind: str) -> None:
        """Each example's cached rows must be its real tokens in this batch, one for one."""
        for i, n_rows, n_real in zip(idx, got, real):
            if n_rows != n_real:
                raise CacheAlignmentError(
                    f"example {i} of the cached {self.reader.split!r} split has {n_rows} cached {kind} rows but "
                    f"{n_real} real tokens in this batch: the store does not match the data (rebuild it)"
                )

    def hidden_fields(self, idx: list[int], batch: dict[str, Any]) -> dict[str, dict[int, Tensor]]:
        """``teacher_hidden_states`` {teacher layer: [B, T, H]}: the stored rows scattered back to the real
        tokens, zeros elsewhere; nothing when the examples' shards hold no hidden states."""
        rows = [self.reader.hidden_states(i) for i in idx]  # each [n_i, L, H] or None
        if all(r is None for r in rows):
            return {}
        real = hidden_positions(batch)  # [B, T]
        self.check_rows(idx, [0 if r is None else r.shape[0] for r in rows], real.sum(1).tolist(), "hidden-state")
        flat = torch.cat(rows)  # [R, L, H]
        joined = flat.new_zeros((flat.shape[1], *real.shape, flat.shape[2]))  # [L, B, T, H]
        joined[:, real] = flat.transpose(0, 1)
        return {"teacher_hidden_states": dict(zip(self.reader.hidden_layers, joined.unbind(0)))}

    def teacher_fields(self, idx: list[int], batch: dict[str, Any]) -> dict[str, Tensor]:
        rows = [self.reader.example(i) for i in idx]
        if self.task != "causal_lm":
            if isinstance(rows[0], TopK):
                return _topk_fields(
                    TopK(*(torch.cat([getattr(r, f) for r in rows]) for f in ("logprobs", "ids", "log_tail")))
                )
            return {"teacher_logits": torch.cat(rows).float()}
        mask = batch["labels"][:, 1:] != -100  # [B, T-1]: where the module's token_mask is True
        self.check_rows(
            idx, [(r.ids if isinstance(r, TopK) else r).shape[0] for r in rows], mask.sum(1).tolist(), "token"
        )
        if isinstance(rows[0], TopK):
            k = rows[0].ids.shape[-1]
            flat = TopK(*(torch.cat([getattr(r, f) for r in rows]) for f in ("logprobs", "ids", "log_tail")))
            logprobs = torch.full((*mask.shape, k), FLOOR, dtype=torch.float32)
            ids = torch.full((*mask.shape, k), -1, dtype=torch.long)
            log_tail = torch.zeros(mask.shape, dtype=torch.float32)  # empty rows: all mass in the tail
            logprobs[mask], ids[mask], log_tail[mask] = flat.logprobs.float(), flat.ids.long(), flat.log_tail.float()
            return {"teacher_topk_logprobs": logprobs, "teacher_topk_ids": ids, "teacher_topk_log_tail": log_tail}
        logits = torch.zeros((*mask.shape, rows[0].shape[-1]), dtype=torch.float32)
        logits[mask] = torch.cat(rows).float()
        return {"teacher_logits": logits}


def _topk_fields(topk: TopK) -> dict[str, Tensor]:
    return {
        "teacher_topk_logprobs": topk.logprobs.float(),
        "teacher_topk_ids": topk.ids.long(),
        "teacher_topk_log_tail": topk.log_tail.float(),
    }


def unwrap_loader(loader: Any) -> tuple[DataLoader, Any]:
    """(the DataLoader, a function re-applying the wrappers around it) for StepTokenCounts and plain loaders."""
    if isinstance(loader, StepTokenCounts):
        inner, rewrap = unwrap_loader(loader.loader)
        return inner, lambda new: StepTokenCounts(rewrap(new), loader.accumulate, loader.count)
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            f"the teacher cache needs map-style DataLoaders from the data module, got {type(loader).__name__}"
        )
    return loader, lambda new: new


def indexed_loader(loader: DataLoader, collate: Any) -> DataLoader:
    """``loader`` over ``IndexedDataset(loader.dataset)`` with ``collate``, reusing its sampler.

    The same sampler object (shuffled, sequential, resumable or distributed) with the same batch size
    and ``drop_last`` (or the same custom batch sampler) yields the same indices in the same order, so
    the batches are the very ones the plain loader would give, each example now carrying its index.
    The sampler is passed as such, not inside a batch sampler, so that under DDP Lightning sees it as it
    sees the plain loader's: it keeps a distributed one and shards a sequential one at the same batch size
    (given the batch sampler, it replaced the sampler and rebuilt the loader with batch_size=1).
    """
    if loader.batch_sampler is None:
        raise ValueError("the teacher cache needs a DataLoader that batches (batch_size or batch_sampler set)")
    kwargs: dict[str, Any] = {}
    if loader.num_workers > 0:
        kwargs.update(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)
    if loader.batch_size is not None:  # automatic batching
        kwargs.update(batch_size=loader.batch_size, sampler=loader.sampler, drop_last=loader.drop_last)
    else:
        kwargs.update(batch_sampler=loader.batch_sampler)
    return DataLoader(
        IndexedDataset(loader.dataset),
        collate_fn=collate,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        **kwargs,
    )


class CachedTeacherDataModule(L.LightningDataModule):
    """``datamodule``'s loaders, with each batch carrying its examples' cached teacher outputs.

    Splits not in the store (``test`` by default) pass through unchanged. Other attributes
    (``tokenizer``, ``num_labels``, ``splits``, ...) are the wrapped data module's.
    """

    def __init__(
        self,
        datamodule: L.LightningDataModule,
        store: TeacherStore,
        task: str,
        verify: bool = True,
        max_shards: int = 256,
    ) -> None:
        super().__init__()
        self.inner, self.store, self.task = datamodule, store, task
        self.verify, self.max_shards = verify, max_shards
        self.cached_splits = set(store.manifest()["splits"])
        self._readers: dict[str, ShardReader] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.inner.setup(stage)

    def state_dict(self) -> dict[str, Any]:  # the wrapped module's data position (resumable training order)
        self.inner.trainer = self.trainer
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)

    def reader(self, split: str) -> ShardReader:
        if split not in self._readers:
            self._readers[split] = self.store.reader(split, verify=self.verify, max_shards=self.max_shards)
        return self._readers[split]

    def _wrap(self, split: str, method: str) -> Any:
        self.inner.trainer = self.trainer
        loader = getattr(self.inner, method)()
        if split not in self.cached_splits:
            return loader
        inner, rewrap = unwrap_loader(loader)
        reader = self.reader(split)
        if len(inner.dataset) != len(reader):
            raise CacheAlignmentError(
                f"the {split!r} split has {len(inner.dataset)} examples, the store {len(reader)}; rebuild it"
            )
        return rewrap(indexed_loader(inner, CachedCollate(inner.collate_fn, reader, self.task)))

    def train_dataloader(self) -> Any:
        return self._wrap("train", "train_dataloader")

    def val_dataloader(self) -> Any:
        return self._wrap("validation", "val_dataloader")

    def test_dataloader(self) -> Any:
        return self._wrap("test", "test_dataloader")


class CachedTeacher(TeacherOutputsInBatch):
    """The teacher's stand-in under ``cache=use``: its outputs arrive inside the batches, from the store.

    A store with hidden states gives it ``config.num_hidden_layers`` and ``config.hidden_size`` (the
    teacher's, from the manifest) and ``hidden_layers`` (those stored), so hidden-state losses resolve
    their layer maps and projections against it without the teacher being loaded.
    """

    def __init__(self, manifest: dict[str, Any], path: str = "") -> None:
        super().__init__(f"the teacher cache {path or '(in memory)'} (cache=use)", manifest["splits"])
        self.manifest, self.path = manifest, path
        self.hidden_layers = list(manifest.get("hidden_layers") or [])
        if self.hidden_layers:
            self.config = SimpleNamespace(
                num_hidden_layers=manifest["teacher_layers"], hidden_size=manifest["hidden_size"]
            )
