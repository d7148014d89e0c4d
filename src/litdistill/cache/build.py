"""Run the teacher once over the dataset splits and write its outputs into a store.

Each shard covers a fixed run of examples, in dataset order (never shuffled), and is computed from
fixed teacher batches inside it, so its bytes do not depend on which process builds it or when.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from litdistill.cache.codec import CODECS, encode_logits, encode_topk, value_dtype
from litdistill.cache.keys import weights_sha256
from litdistill.cache.store import ShardPlan, TeacherStore, assigned, dist_rank_world, manifest_summary, plan_shards
from litdistill.forward import align_labels, run_model
from litdistill.losses.sparse import dense_to_topk

log = logging.getLogger(__name__)

OUTPUTS = ("logits", "topk")


@dataclass
class SplitSource:
    """A split's examples (map-style, dataset order) and the collate function the training loader uses."""

    dataset: Any
    collate: Callable[[list[Any]], dict[str, Any]]


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds (all of it is also in the key)."""

    task: str
    outputs: str = "logits"  # logits | topk
    k: int | None = None
    dtype: str = "float16"
    codec: str = "raw"
    shard_size: int = 256

    def __post_init__(self) -> None:
        if self.outputs not in OUTPUTS:
            raise ValueError(f"cache.outputs must be one of {list(OUTPUTS)} or auto, got {self.outputs!r}")
        if self.outputs == "topk" and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"cache.k must be an integer >= 1 for top-k outputs, got {self.k!r}")
        if self.codec not in CODECS:
            raise ValueError(f"cache.codec must be one of {list(CODECS)}, got {self.codec!r}")
        value_dtype(self.dtype)

    def manifest_fields(self) -> dict[str, Any]:
        return {"task": self.task, "outputs": self.outputs, "k": self.k if self.outputs == "topk" else None,
                "dtype": self.dtype, "codec": self.codec if self.outputs == "topk" else None,
                "row_unit": "token" if self.task == "causal_lm" else "example", "shard_size": self.shard_size}


def teacher_rows(teacher: nn.Module, batch: dict[str, Any], task: str) -> tuple[torch.Tensor, list[int]]:
    """Teacher logit rows that count, [R, C|V], and how many belong to each example of the batch."""
    aligned = align_labels(batch, task)
    logits = run_model(teacher, aligned, frozenset({"logits"}), task).logits
    if task == "causal_lm":
        mask = aligned["token_mask"].bool()  # [B, T-1], labels already shifted
        return logits[mask], mask.sum(1).tolist()
    return logits, [1] * logits.shape[0]


@torch.no_grad()
def build_shard(teacher: nn.Module, source: SplitSource, shard: ShardPlan, spec: StoreSpec, batch_size: int,
                device: torch.device, progress: Any = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Payload tensors, example row offsets [n+1] and the output width for one shard."""
    rows, counts = [], []
    for start in range(shard.start, shard.end, batch_size):
        items = [source.dataset[i] for i in range(start, min(start + batch_size, shard.end))]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in dict(source.collate(items)).items()}
        out, per_example = teacher_rows(teacher, batch, spec.task)
        rows.append(out.float().cpu())
        counts += per_example
        if progress is not None:
            progress.update(len(items))
    logits = torch.cat(rows) if rows else torch.zeros(0, 0)
    width = int(logits.shape[-1])
    offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.as_tensor(counts, dtype=torch.int64), 0)
    if spec.outputs == "logits":
        return encode_logits(logits, spec.dtype), offsets, width
    return encode_topk(dense_to_topk(logits, spec.k), width, spec.dtype, spec.codec), offsets, width


def _device(teacher: nn.Module) -> torch.device:
    try:
        return next(teacher.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def build_store(store: TeacherStore, teacher: nn.Module, sources: Mapping[str, SplitSource], spec: StoreSpec,
                batch_size: int = 32, rank: int | None = None, world: int | None = None, progress: bool = True,
                on_shard: Callable[[ShardPlan], None] | None = None, poll: float = 2.0) -> dict[str, Any]:
    """Build (or resume, or repair) ``store``: this rank's missing shards, then the manifest.

    Returns the manifest. ``rank``/``world`` default to the running torch.distributed group or the
    RANK/WORLD_SIZE environment; each rank builds ``shards[rank::world]``.
    """
    if rank is None or world is None:
        rank, world = dist_rank_world()
    teacher.eval()
    store.claim(weights_sha256(teacher))
    plan = plan_shards({split: len(src.dataset) for split, src in sources.items()}, spec.shard_size)
    mine = assigned(plan, rank, world)
    started = time.perf_counter()
    built = 0
    with store.lock(rank, world):
        todo = [shard for shard in mine if not store.shard_done(shard)]
        if todo:
            log.info("teacher cache: building %d of %d shards (rank %d of %d) into %s",
                     len(todo), len(plan), rank, world, store.path)
        bar = _progress(sum(s.end - s.start for s in todo), progress and bool(todo))
        device = _device(teacher)
        try:
            for shard in todo:
                tensors, offsets, width = build_shard(teacher, sources[shard.split], shard, spec, batch_size, device, bar)
                store.write_shard(shard, tensors, offsets, width)
                built += 1
                if on_shard is not None:
                    on_shard(shard)
        finally:
            if bar is not None:
                bar.close()
    manifest = store.finalize(plan, spec.manifest_fields(), rank, world, poll=poll)
    seconds = time.perf_counter() - started
    log.info("teacher cache %s: %s; %d shards built in %.1f s", store.path, manifest_summary(manifest), built, seconds)
    return manifest


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="teacher cache", unit="ex", leave=False)


def split_sources(datamodule: Any, splits: Sequence[str]) -> dict[str, SplitSource]:
    """The datasets and collate functions behind a data module's loaders (dataset order)."""
    from litdistill.cache.data import unwrap_loader

    methods = {"train": "train_dataloader", "validation": "val_dataloader", "test": "test_dataloader"}
    sources = {}
    for split in splits:
        if split not in methods:
            raise ValueError(f"cache.splits: unknown split {split!r}; valid: {list(methods)}")
        loader = unwrap_loader(getattr(datamodule, methods[split])())[0]
        sources[split] = SplitSource(loader.dataset, loader.collate_fn)
    return sources
