"""A teacher-output store on disk: keyed, sharded, checksummed, resumable, safe to share.

Layout of a store directory::

    key.json                     the key fields (and the verified teacher weights hash); written first
    <split>/00000.safetensors    one shard: the rows of examples [start, end) of the split
    <split>/00000.json           its sidecar: rows, bytes, sha256; written after the shard = "shard done"
    manifest.json                written last, when every shard is done: the store is complete

Guarantees:

* **Atomic shards.** A shard is written to a uniquely named temporary file in the same directory,
  fsynced and renamed over its final name (``os.replace``), then its sidecar likewise. A reader or a
  resumed build never sees half a shard; a shard without a sidecar (killed between the two renames)
  is simply computed again.
* **Resume.** A build skips every shard whose sidecar exists and whose bytes hash to the sidecar's
  sha256; it computes the others. Shard contents are deterministic (fixed examples per shard, fixed
  teacher batches inside a shard, no timestamps), so a resumed build ends with the same bytes as an
  uninterrupted one.
* **Concurrent builds** of one key (two sweep trials, two nodes): each holds an ``flock`` on
  ``.lock-r<rank>-of-<world>`` while building, so the second waits and then finds the shards done.
  Where ``flock`` does not work (some network file systems), the unique temporary names and the
  identical deterministic contents still leave a valid store.
* **Data parallel builds**: the shards of all splits, in order, are dealt to ranks as
  ``shards[rank::world]``; ranks write disjoint files, rank 0 writes the manifest once every
  sidecar exists, and every rank then reads the whole store.
* **Checksums.** The manifest lists every shard's sha256; a reader streams a shard through sha256
  once, when it first opens it, and raises :class:`CorruptShardError` naming the file.
* **Memory-mapped reads.** A reader maps shards (``safetensors.torch.load_file``) instead of
  reading them into memory: pages come from the OS page cache as rows are used, and only a bounded
  number of shards (``max_shards``, least recently used first) stay open. Raw top-k and logits rows
  are converted per example; a ``packed`` shard is one zlib blob, decoded whole when opened.
* **Keys.** A store whose ``key.json`` differs from the run's key is refused with
  :class:`CacheKeyMismatch` naming the differing field; it is never reused or overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save
from torch import Tensor

from litdistill.cache.codec import decode_topk, payload_rows, pop_hidden
from litdistill.cache.keys import (
    FORMAT,
    describe_differences,
    differing_fields,
    key_hash,
)
from litdistill.core.io import atomic_write_bytes, atomic_write_text, sha256_file
from litdistill.core.outputs import TopK

log = logging.getLogger(__name__)

MANIFEST, KEY_FILE = "manifest.json", "key.json"
STALE_TMP_SECONDS = 600


class CacheKeyMismatch(ValueError):
    """A store exists for different teacher outputs than this run's; names the differing field."""


class CorruptShardError(RuntimeError):
    """A shard's bytes do not hash to the manifest's sha256."""


class CorruptStoreError(RuntimeError):
    """A store's manifest or key file is not readable JSON."""


class CacheMissingError(FileNotFoundError):
    """``cache=use`` found no complete store for this run's key."""


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"{self.split}/{self.index:05d}"


def plan_shards(split_sizes: Mapping[str, int], shard_size: int) -> list[ShardPlan]:
    """Every shard of every split, in split order: examples [start, end) each."""
    if shard_size < 1:
        raise ValueError(f"cache.shard_size must be >= 1, got {shard_size}")
    plan = []
    for split, n in split_sizes.items():
        for i, start in enumerate(range(0, n, shard_size)):
            plan.append(ShardPlan(split, i, start, min(start + shard_size, n)))
    return plan


def assigned(plan: list[ShardPlan], rank: int, world: int) -> list[ShardPlan]:
    """The shards rank ``rank`` of ``world`` builds: ``plan[rank::world]`` (disjoint, covering)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside 0..{world - 1}")
    return plan[rank::world]


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of a running torch.distributed group, else from RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class TeacherStore:
    """One store directory for one key (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, key: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.key = dict(key)
        self.hash = key_hash(self.key)

    # ---- paths and state ----------------------------------------------------------------------
    def shard_path(self, shard: ShardPlan) -> Path:
        return self.path / f"{shard.name}.safetensors"

    def sidecar_path(self, shard: ShardPlan) -> Path:
        return self.path / f"{shard.name}.json"

    def manifest(self) -> dict[str, Any] | None:
        return _read_json(self.path / MANIFEST, "manifest")

    @property
    def complete(self) -> bool:
        manifest = self.manifest()
        return manifest is not None and manifest.get("key") == self.key

    def stored_key(self) -> dict[str, Any] | None:
        return _read_json(self.path / KEY_FILE, "key file")

    def check_key(self) -> None:
        """Refuse a directory that holds a store for another key, naming the differing field."""
        stored = self.stored_key()
        if stored is None:
            manifest = self.manifest()
            stored = {"key": manifest["key"]} if manifest else None
        if stored is not None and stored.get("key") != self.key:
            raise CacheKeyMismatch(
                f"teacher cache at {self.path} was built for other teacher outputs: "
                f"{describe_differences(differing_fields(stored.get('key', {}), self.key))}. "
                "A store is never reused for different outputs: point cache.dir elsewhere, or delete that directory."
            )

    def claim(self, teacher_weights: str | None) -> None:
        """Write key.json (first builder) or check the recorded teacher weights against the loaded teacher."""
        self.check_key()
        stored = self.stored_key()
        if stored is None:
            atomic_write_text(
                self.path / KEY_FILE,
                json.dumps({"key": self.key, "teacher_weights_sha256": teacher_weights}, indent=2, sort_keys=True)
                + "\n",
            )
            return
        recorded = stored.get("teacher_weights_sha256")
        if teacher_weights and recorded and recorded != teacher_weights:
            raise CacheKeyMismatch(
                f"teacher cache at {self.path}: field 'teacher_weights' differs (store: {recorded[:16]}, this run: "
                f"{teacher_weights[:16]}): the loaded teacher's weights are not the ones the store was built from, "
                "although its config is the same (a non-deterministic init or fine-tune, or changed files). "
                "Delete the store to rebuild it."
            )

    # ---- writing ------------------------------------------------------------------------------
    @contextmanager
    def lock(self, rank: int = 0, world: int = 1) -> Iterator[None]:
        """Exclusive flock per (rank, world) while building; a second builder of the key waits."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / f".lock-r{rank}-of-{world}"
        with open(path, "a+") as f:
            try:
                import fcntl

                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("another build of this teacher cache holds %s; waiting for it", path)
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            except (ImportError, OSError):  # no flock here: unique temp names + identical contents still hold
                pass
            yield

    def shard_done(self, shard: ShardPlan) -> bool:
        """Sidecar present and the shard's bytes hash to its sha256 (anything else is rebuilt)."""
        try:
            info = json.loads(self.sidecar_path(shard).read_text())
            digest = sha256_file(self.shard_path(shard))
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        if digest != info.get("sha256"):
            log.warning("teacher cache shard %s does not match its checksum; rebuilding it", self.shard_path(shard))
            return False
        return True

    def write_shard(
        self, shard: ShardPlan, tensors: dict[str, Tensor], offsets: Tensor, num_outputs: int
    ) -> dict[str, Any]:
        """Write one shard atomically, then its sidecar (the "done" marker). Deterministic bytes."""
        payload = {"offsets": offsets.to(torch.int32).contiguous(), **tensors}
        data = st_save(payload)
        info = {
            "file": f"{shard.name}.safetensors",
            "split": shard.split,
            "index": shard.index,
            "start": shard.start,
            "end": shard.end,
            "rows": payload_rows(tensors),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "num_outputs": int(num_outputs),
        }
        atomic_write_bytes(self.shard_path(shard), data)
        atomic_write_text(self.sidecar_path(shard), json.dumps(info, indent=2, sort_keys=True) + "\n")
        return info

    def finalize(
        self,
        plan: list[ShardPlan],
        spec: Mapping[str, Any],
        rank: int = 0,
        world: int = 1,
        timeout: float = 24 * 3600.0,
        poll: float = 2.0,
    ) -> dict[str, Any]:
        """Rank 0: wait for every sidecar, then write the manifest. Other ranks: wait for the manifest."""
        deadline = time.monotonic() + timeout
        if rank != 0:
            while not self.complete:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rank {rank}: no manifest in {self.path} after {timeout:.0f} s")
                time.sleep(poll)
            return self.manifest()
        infos = []
        for shard in plan:
            while not self.sidecar_path(shard).is_file():
                if world == 1 or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"teacher cache shard {self.shard_path(shard)} is missing; run cache=build again"
                    )
                time.sleep(poll)
            infos.append(json.loads(self.sidecar_path(shard).read_text()))
        manifest = self._manifest(plan, infos, spec)
        atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        self._remove_stale_temps()
        return manifest

    def _manifest(self, plan: list[ShardPlan], infos: list[dict[str, Any]], spec: Mapping[str, Any]) -> dict[str, Any]:
        splits: dict[str, Any] = {}
        for shard, info in zip(plan, infos):
            entry = splits.setdefault(shard.split, {"examples": 0, "rows": 0, "bytes": 0, "shards": []})
            entry["examples"] = max(entry["examples"], info["end"])
            entry["rows"] += info["rows"]
            entry["bytes"] += info["bytes"]
            entry["shards"].append({k: info[k] for k in ("file", "start", "end", "rows", "bytes", "sha256")})
        for entry in splits.values():
            entry["bytes_per_row"] = entry["bytes"] / max(entry["rows"], 1)
        total_bytes = sum(e["bytes"] for e in splits.values())
        total_rows = sum(e["rows"] for e in splits.values())
        stored = self.stored_key() or {}
        return {
            "format": FORMAT,
            "key": self.key,
            "key_hash": self.hash,
            **dict(spec),
            "num_outputs": infos[0]["num_outputs"] if infos else None,
            "teacher_weights_sha256": stored.get("teacher_weights_sha256"),
            "splits": splits,
            "bytes": total_bytes,
            "rows": total_rows,
            "bytes_per_row": total_bytes / max(total_rows, 1),
        }

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for tmp in self.path.rglob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass

    # ---- reading ------------------------------------------------------------------------------
    def reader(self, split: str, verify: bool = True, max_shards: int = 256) -> ShardReader:
        manifest = self.manifest()
        if manifest is None:
            raise CacheMissingError(f"teacher cache at {self.path} is not complete (no {MANIFEST}); run cache=build")
        if split not in manifest["splits"]:
            raise KeyError(f"teacher cache at {self.path} has no split {split!r}; it has {sorted(manifest['splits'])}")
        return ShardReader(self.path, manifest, split, verify=verify, max_shards=max_shards)


class ShardReader:
    """Rows of one split by example index, from memory-mapped shards checked once each (bounded LRU).

    Mapping rather than reading keeps a large store out of the process's memory: the OS pages in
    the rows used and can drop them again. At most ``max_shards`` shards stay mapped; a shard is
    hashed once per reader, however often it is reopened after eviction.
    """

    def __init__(
        self, root: Path, manifest: Mapping[str, Any], split: str, verify: bool = True, max_shards: int = 256
    ) -> None:
        if max_shards < 1:
            raise ValueError(f"cache.max_shards_in_memory must be >= 1, got {max_shards}")
        self.root, self.split, self.verify, self.max_shards = Path(root), split, verify, max_shards
        self.outputs, self.codec = manifest["outputs"], manifest.get("codec", "raw")
        self.k, self.num_outputs = manifest.get("k"), manifest["num_outputs"]
        self.topk_temperature = float(manifest.get("topk_temperature") or 1.0)
        entry = manifest["splits"][split]
        self.shards = entry["shards"]
        self.examples = entry["examples"]
        self.shard_size = self.shards[0]["end"] - self.shards[0]["start"] if self.shards else 1
        self.hidden_layers = list(manifest.get("hidden_layers") or [])  # teacher layers of hidden_states(), in order
        # per shard: (offsets, payload, (hidden offsets, hidden rows) or None)
        self._cache: OrderedDict[int, tuple[Tensor, dict[str, Tensor] | TopK, tuple[Tensor, Tensor] | None]] = (
            OrderedDict()
        )
        self._verified: set[int] = set()

    def __len__(self) -> int:
        return self.examples

    def _shard(self, i: int) -> tuple[Tensor, dict[str, Tensor] | TopK, tuple[Tensor, Tensor] | None]:
        """(offsets, payload, hidden) of shard ``i``: mapped tensors, or the decoded TopK of a packed shard;
        hidden: its mapped (offsets, hidden-state rows), None in a shard without hidden states."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        info = self.shards[i]
        path = self.root / info["file"]
        if not path.is_file():
            raise CorruptShardError(f"teacher cache shard {path} is missing; run cache=build to rebuild it")
        if self.verify and i not in self._verified:
            if sha256_file(path) != info["sha256"]:
                raise CorruptShardError(
                    f"teacher cache shard {path} is corrupted: its sha256 is not the manifest's "
                    f"({info['sha256'][:16]}...). "
                    "Delete it and run cache=build again: only the missing shards are rebuilt."
                )
            self._verified.add(i)
        tensors = st_load_file(path)  # memory-mapped: no copy of the file in this process
        offsets = tensors.pop("offsets").to(torch.int64)
        hidden = pop_hidden(tensors)
        packed = self.outputs == "topk" and self.codec == "packed"
        payload = decode_topk(tensors, self.k, self.num_outputs, self.codec) if packed else tensors
        self._cache[i] = (offsets, payload, hidden)
        if len(self._cache) > self.max_shards:
            self._cache.popitem(last=False)
        return offsets, payload, hidden

    def _locate(self, idx: int) -> tuple[int, int]:
        """(shard, position in the shard) of example ``idx``."""
        if not 0 <= idx < self.examples:
            raise IndexError(f"example {idx} outside the cached {self.split!r} split (0..{self.examples - 1})")
        i = idx // self.shard_size
        return i, idx - self.shards[i]["start"]

    def example(self, idx: int) -> Tensor | TopK:
        """The rows of example ``idx``: logits [n, C], or a TopK of [n, k] / [n]."""
        i, j = self._locate(idx)
        offsets, payload, _ = self._shard(i)
        a, b = int(offsets[j]), int(offsets[j + 1])
        if isinstance(payload, TopK):
            return TopK(payload.logprobs[a:b], payload.ids[a:b], payload.log_tail[a:b])
        rows = {name: value[a:b] for name, value in payload.items()}
        return rows["logits"] if self.outputs == "logits" else decode_topk(rows, self.k, self.num_outputs, self.codec)

    def hidden_states(self, idx: int) -> Tensor | None:
        """Example ``idx``'s stored hidden states, [n, L, H] (n: its real tokens, L: ``hidden_layers``), or
        None when its shard holds none (a store without them, or a split they are not stored for)."""
        i, j = self._locate(idx)
        hidden = self._shard(i)[2]
        if hidden is None:
            return None
        offsets, rows = hidden
        return rows[int(offsets[j]) : int(offsets[j + 1])]

    def verify_all(self) -> None:
        for i in range(len(self.shards)):
            self._shard(i)


def manifest_summary(manifest: Mapping[str, Any]) -> str:
    unit = manifest.get("row_unit", "row")
    outputs = manifest["outputs"] + (
        f" k={manifest['k']} codec={manifest.get('codec')}" if manifest["outputs"] == "topk" else ""
    )
    if manifest.get("hidden_layers"):
        outputs += (
            f", hidden states of teacher layers {manifest['hidden_layers']}: "
            f"{manifest['hidden_bytes_per_token']} bytes/token"
        )
    return (
        f"{manifest['rows']} {unit}s, {manifest['bytes'] / 2**20:.2f} MiB, {manifest['bytes_per_row']:.1f} "
        f"bytes/{unit} "
        f"({outputs}, {manifest.get('dtype')})"
    )


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    """A store's JSON file, None when absent; a damaged one is named with the way out."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptStoreError(
            f"the teacher cache's {what} {path} is damaged ({error}); delete {path.parent} and rebuild the store "
            "(litdistill cache=build <same overrides>)"
        ) from error


def read_key(path: Path) -> dict[str, Any] | None:
    for name in (KEY_FILE, MANIFEST):
        try:
            return json.loads((path / name).read_text()).get("key")
        except (FileNotFoundError, json.JSONDecodeError):
            continue
    return None


def nearest_store(root: Path, key: Mapping[str, Any]) -> tuple[Path, list] | None:
    """The store under ``root`` whose key differs from ``key`` in the fewest fields."""
    best = None
    if not root.is_dir():
        return None
    for child in sorted(root.iterdir()):
        other = read_key(child) if child.is_dir() else None
        if other is None:
            continue
        diffs = differing_fields(other, key)
        if best is None or len(diffs) < len(best[1]):
            best = (child, diffs)
    return best


__all__ = [
    "CacheKeyMismatch",
    "CacheMissingError",
    "CorruptShardError",
    "ShardPlan",
    "ShardReader",
    "TeacherStore",
    "assigned",
    "dist_rank_world",
    "manifest_summary",
    "nearest_store",
    "plan_shards",
]
