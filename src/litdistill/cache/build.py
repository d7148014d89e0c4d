"""Run the teacher once over the dataset splits and write its outputs into a store.

Each shard covers a fixed run of examples, in dataset order (never shuffled), and is computed from
fixed teacher batches inside it, so its bytes do not depend on which process builds it or when.

Hidden states (``StoreSpec.hidden_layers``) are stored for the ``train`` split only: the fit's
validation step reads the teacher's logits alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import nn

from litdistill.cache.codec import (
    CODECS,
    encode_hidden,
    encode_logits,
    encode_topk,
    hidden_positions,
    value_dtype,
)
from litdistill.cache.data import unwrap_loader
from litdistill.cache.keys import weights_sha256
from litdistill.cache.store import (
    ShardPlan,
    TeacherStore,
    assigned,
    dist_rank_world,
    manifest_summary,
    plan_shards,
)
from litdistill.core.forward import align_labels, run_model
from litdistill.losses.features import hidden_size, num_layers
from litdistill.losses.sparse import dense_to_topk

log = logging.getLogger(__name__)

OUTPUTS = ("logits", "topk")
HIDDEN_SPLITS = ("train",)  # the only split whose batches feed the hidden-state losses


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
    hidden_layers: tuple[int, ...] = ()  # teacher layers (hidden_states indices, 0 = embeddings) stored raw
    hidden_size: int | None = None  # the teacher's; None: taken from the loaded teacher at build
    teacher_layers: int | None = None  # the teacher's block count, likewise
    temperature: float = 1.0  # top-k only: the teacher is tempered (logits / T) before its top k are taken

    def __post_init__(self) -> None:
        if self.outputs not in OUTPUTS:
            raise ValueError(f"cache.outputs must be one of {list(OUTPUTS)} or auto, got {self.outputs!r}")
        if self.outputs == "topk" and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"cache.k must be an integer >= 1 for top-k outputs, got {self.k!r}")
        if self.codec not in CODECS:
            raise ValueError(f"cache.codec must be one of {list(CODECS)}, got {self.codec!r}")
        value_dtype(self.dtype)
        layers = list(self.hidden_layers)
        top = self.teacher_layers if self.teacher_layers is not None else float("inf")
        if layers != sorted(set(layers)) or any(not 0 <= i <= top for i in layers):
            raise ValueError(
                f"StoreSpec.hidden_layers must be increasing teacher layers in 0..{self.teacher_layers} "
                f"(0 = embeddings), got {layers}"
            )

    def for_teacher(self, teacher: nn.Module) -> StoreSpec:
        """This spec with the loaded teacher's depth and hidden size filled in, or checked against them
        (a key computed from the teacher's config must describe the hidden states actually stored)."""
        if not self.hidden_layers:
            return self
        actual = (num_layers(teacher), hidden_size(teacher))
        if (self.teacher_layers, self.hidden_size) in ((None, None), actual):
            return replace(self, teacher_layers=actual[0], hidden_size=actual[1])
        raise ValueError(
            f"teacher cache: the teacher's config gives {self.teacher_layers} layers of hidden size "
            f"{self.hidden_size}, but the loaded teacher has {actual[0]} of {actual[1]}"
        )

    def manifest_fields(self) -> dict[str, Any]:
        item = value_dtype(self.dtype).itemsize
        hidden = (
            {
                "hidden_layers": list(self.hidden_layers),
                "hidden_size": self.hidden_size,
                "teacher_layers": self.teacher_layers,
                "hidden_splits": list(HIDDEN_SPLITS),
                "hidden_bytes_per_token": len(self.hidden_layers) * self.hidden_size * item,
            }
            if self.hidden_layers
            else {}
        )
        return {
            "task": self.task,
            "outputs": self.outputs,
            "k": self.k if self.outputs == "topk" else None,
            "dtype": self.dtype,
            "codec": self.codec if self.outputs == "topk" else None,
            "topk_temperature": self.temperature if self.outputs == "topk" else None,
            "row_unit": "token" if self.task == "causal_lm" else "example",
            "shard_size": self.shard_size,
            **hidden,
        }


class TeacherRows(NamedTuple):
    """One teacher batch's stored rows: logits (and hidden states), with how many belong to each example."""

    logits: torch.Tensor  # [R, C|V]: one per example (classification) or per real label token (causal LM)
    counts: list[int]
    hidden: torch.Tensor | None  # [R_h, L, H]: one per attended token, the stored layers in order
    hidden_counts: list[int]


def teacher_rows(teacher: nn.Module, batch: dict[str, Any], task: str, layers: Sequence[int] = ()) -> TeacherRows:
    """The teacher's logit rows that count and, for ``layers``, its raw hidden states at the real tokens."""
    aligned = align_labels(batch, task)
    out = run_model(teacher, aligned, frozenset({"logits", "hidden_states"} if layers else {"logits"}), task)
    if task == "causal_lm":
        mask = aligned["token_mask"].bool()  # [B, T-1], labels already shifted
        logits, counts = out.logits[mask], mask.sum(1).tolist()
    else:
        logits, counts = out.logits, [1] * out.logits.shape[0]
    if not layers:
        return TeacherRows(logits, counts, None, [])
    real = hidden_positions(aligned)  # [B, T]
    hidden = torch.stack([out.hidden_states[i] for i in layers], dim=2)[real]  # [B, T, L, H] -> [R_h, L, H]
    return TeacherRows(logits, counts, hidden, real.sum(1).tolist())


@torch.no_grad()
def build_shard(
    teacher: nn.Module,
    source: SplitSource,
    shard: ShardPlan,
    spec: StoreSpec,
    batch_size: int,
    device: torch.device,
    progress: Any = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Payload tensors, example row offsets [n+1] and the output width for one shard."""
    layers = spec.hidden_layers if shard.split in HIDDEN_SPLITS else ()
    rows, counts, hidden, hidden_counts = [], [], [], []
    for start in range(shard.start, shard.end, batch_size):
        items = [source.dataset[i] for i in range(start, min(start + batch_size, shard.end))]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in dict(source.collate(items)).items()}
        out = teacher_rows(teacher, batch, spec.task, layers)
        rows.append(out.logits.float().cpu())
        counts += out.counts
        if out.hidden is not None:  # in the store dtype at once: a shard's hidden rows are its bulk
            hidden.append(out.hidden.to(value_dtype(spec.dtype)).cpu())
            hidden_counts += out.hidden_counts
        if progress is not None:
            progress.update(len(items))
    logits = torch.cat(rows) if rows else torch.zeros(0, 0)
    width = int(logits.shape[-1])
    offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.as_tensor(counts, dtype=torch.int64), 0)
    if spec.outputs == "logits":
        tensors = encode_logits(logits, spec.dtype)
    else:
        topk = dense_to_topk(logits, spec.k, spec.temperature)  # tempered first: exact (losses/sparse.py)
        tensors = encode_topk(topk, width, spec.dtype, spec.codec)
    if hidden:
        tensors.update(encode_hidden(torch.cat(hidden), hidden_counts, spec.dtype))
    return tensors, offsets, width


def _device(teacher: nn.Module) -> torch.device:
    try:
        return next(teacher.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def build_store(
    store: TeacherStore,
    teacher: nn.Module,
    sources: Mapping[str, SplitSource],
    spec: StoreSpec,
    batch_size: int = 32,
    rank: int | None = None,
    world: int | None = None,
    progress: bool = True,
    on_shard: Callable[[ShardPlan], None] | None = None,
    poll: float = 2.0,
) -> dict[str, Any]:
    """Build (or resume, or repair) ``store``: this rank's missing shards, then the manifest.

    Returns the manifest. ``rank``/``world`` default to the running torch.distributed group or the
    RANK/WORLD_SIZE environment; each rank builds ``shards[rank::world]``.
    """
    if rank is None or world is None:
        rank, world = dist_rank_world()
    spec = spec.for_teacher(teacher)
    teacher.eval()
    store.claim(weights_sha256(teacher))
    plan = plan_shards({split: len(src.dataset) for split, src in sources.items()}, spec.shard_size)
    mine = assigned(plan, rank, world)
    started = time.perf_counter()
    built = 0
    with store.lock(rank, world):
        todo = [shard for shard in mine if not store.shard_done(shard)]
        if todo:
            log.info(
                "teacher cache: building %d of %d shards (rank %d of %d) into %s",
                len(todo),
                len(plan),
                rank,
                world,
                store.path,
            )
        bar = _progress(sum(s.end - s.start for s in todo), progress and bool(todo))
        device = _device(teacher)
        try:
            for shard in todo:
                tensors, offsets, width = build_shard(
                    teacher, sources[shard.split], shard, spec, batch_size, device, bar
                )
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

    methods = {"train": "train_dataloader", "validation": "val_dataloader", "test": "test_dataloader"}
    sources = {}
    for split in splits:
        if split not in methods:
            raise ValueError(f"cache.splits: unknown split {split!r}; valid: {list(methods)}")
        loader = unwrap_loader(getattr(datamodule, methods[split])())[0]
        sources[split] = SplitSource(loader.dataset, loader.collate_fn)
    return sources
