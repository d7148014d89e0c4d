"""``cache=build|use|auto`` in the training entry (``litdistill.train``).

* ``build``: load the teacher (fine-tuned as configured), run it once over ``cache.splits``, write
  the store, exit. Run again, it resumes an interrupted build or repairs corrupted shards.
* ``use``: train from an existing store; the teacher is never instantiated. Refused when no complete
  store matches the run's key (naming how the closest store differs).
* ``auto``: ``use`` when the store exists, else load the teacher, build, and continue as ``use``.

A student built from the teacher's layers (``student=from_teacher``) is refused under ``use`` and
``auto``: it would need the teacher's weights, which these modes never load (``auto`` would load
them on its first run only, so a sweep's first trial would start from another student than the
rest). Pick a student that does not copy the teacher (``student=tiny_bert``, ``student=scaled``,
``student=pretrained``); ``cache=build`` itself needs no student.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from litdistill.cache.build import StoreSpec, build_store, split_sources
from litdistill.cache.data import CachedTeacher, CachedTeacherDataModule
from litdistill.cache.keys import (
    FORMAT,
    dataset_identity,
    describe_differences,
    split_fingerprint,
    teacher_identity,
    tokenizer_identity,
)
from litdistill.cache.store import CacheKeyMismatch, CacheMissingError, TeacherStore, manifest_summary, nearest_store
from litdistill.losses.base import DistillationLoss

log = logging.getLogger("litdistill.cache")

MODES = ("none", "build", "use", "auto")
TEACHER_BUILDERS = ("litdistill.layer_subset.student_from_teacher",)


def cache_mode(cfg: DictConfig) -> str:
    mode = str((cfg.get("cache") or {}).get("mode", "none"))
    if mode not in MODES:
        raise ValueError(f"cache.mode must be one of {list(MODES)}, got {mode!r}")
    return mode


def resolve_outputs(outputs: str, task: str) -> str:
    if outputs == "auto":
        return "topk" if task == "causal_lm" else "logits"
    return outputs


def check_losses(losses: dict[str, DistillationLoss], outputs: str) -> None:
    """Cached teachers give logits (or top-k): losses needing teacher hidden states/attentions are refused."""
    from litdistill.losses import SoftTargetKL, TokenDivergence

    for name, loss in losses.items():
        if not loss.uses_teacher:
            continue
        extra = set(loss.needs) - {"logits"}
        if extra or getattr(loss, "teacher_features", ()):
            raise ValueError(f"loss {name!r} ({type(loss).__name__}) needs the teacher's {sorted(extra) or 'features'}, "
                             "which a teacher cache does not store (it stores logits); use cache=none for it")
        if outputs == "topk" and not isinstance(loss, (SoftTargetKL, TokenDivergence)):
            raise ValueError(f"loss {name!r} ({type(loss).__name__}) needs the teacher's full logits; a top-k cache works "
                             "with soft_kl, forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl and tvd "
                             "(or set cache.outputs=logits)")


def cache_key(cfg: DictConfig, datamodule: Any, spec: StoreSpec, splits: list[str]) -> dict[str, Any]:
    """The store's key fields, in the order a mismatch is reported (see litdistill.cache.keys)."""
    sources = split_sources(datamodule, splits)
    dataset, options, max_length = dataset_identity(getattr(datamodule, "hparams", {}))
    return {
        "format": FORMAT,
        "task": spec.task,
        "teacher": teacher_identity(cfg),
        "tokenizer": tokenizer_identity(datamodule.tokenizer),
        "dataset": dataset,
        "data_options": options,
        "max_length": max_length,
        "splits": {split: split_fingerprint(src.dataset, spec.task) for split, src in sources.items()},
        "outputs": spec.outputs,
        "k": spec.k if spec.outputs == "topk" else None,
        "dtype": spec.dtype,
        "codec": spec.codec if spec.outputs == "topk" else None,
    }


class TeacherCacheRun:
    """The cache for one training run: its key and store, building, and the wrapped data module."""

    def __init__(self, cfg: DictConfig, losses: dict[str, DistillationLoss], datamodule: Any) -> None:
        c = cfg.cache
        self.mode = cache_mode(cfg)
        self.cfg, self.task = cfg, cfg.task
        if not cfg.get("teacher"):
            raise ValueError(f"cache={self.mode} caches a teacher's outputs, but no teacher is configured (teacher=null)")
        target = str(cfg.teacher.get("_target_", ""))
        if target.endswith("MultiTeacher"):
            raise ValueError("cache: several teachers (teacher=multi) are not supported by the teacher cache; use cache=none")
        if self.mode in ("use", "auto") and str((cfg.get("student") or {}).get("_target_", "")) in TEACHER_BUILDERS:
            raise ValueError(
                f"cache={self.mode} never loads the teacher, but student=from_teacher copies the teacher's layers. "
                "Use a student that does not need the teacher's weights (student=tiny_bert, student=scaled, "
                "student=pretrained ...), or cache=none. (cache=build needs no student.)")
        self.splits = list(c.get("splits") or ["train", "validation"])
        missing = {"train", "validation"} - set(self.splits)
        if missing:
            raise ValueError(f"cache.splits must include train and validation (the fit reads both), missing {sorted(missing)}")
        outputs = resolve_outputs(str(c.get("outputs", "auto")), cfg.task)
        self.spec = StoreSpec(task=cfg.task, outputs=outputs, k=int(c.k) if outputs == "topk" else None,
                              dtype=str(c.get("dtype", "float16")), codec=str(c.get("codec", "raw")),
                              shard_size=int(c.get("shard_size", 256)))
        check_losses(losses, outputs)
        self.datamodule = datamodule
        self.key = cache_key(cfg, datamodule, self.spec, self.splits)
        root = Path(str(c.root))
        self.explicit_dir = c.get("dir") is not None
        path = Path(str(c.dir)) if self.explicit_dir else root / TeacherStore(root, self.key).hash
        self.store = TeacherStore(path, self.key)
        self.store.check_key()  # an explicit cache.dir holding another key: refused, naming the field
        if self.mode == "use" and not self.store.complete:
            raise CacheMissingError(self._missing_message(root))
        self.manifest: dict[str, Any] | None = None

    def _missing_message(self, root: Path) -> str:
        text = f"cache=use: no complete teacher cache for this run at {self.store.path}"
        near = None if self.explicit_dir else nearest_store(root, self.key)
        if near is not None:
            text += f"; the closest store under {root} ({near[0].name}) differs: {describe_differences(near[1])}"
        return text + ". Build it first with `litdistill cache=build <same overrides>`, or use cache=auto."

    @property
    def needs_teacher(self) -> bool:
        """Whether this run loads the teacher: to build (``build``, or ``auto`` without a complete store)."""
        return self.mode == "build" or (self.mode == "auto" and not self.store.complete)

    def build(self, teacher: nn.Module) -> dict[str, Any]:
        c = self.cfg.cache
        sources = split_sources(self.datamodule, self.splits)
        self.manifest = build_store(self.store, teacher, sources, self.spec, batch_size=int(c.get("batch_size", 32)),
                                    progress=bool(c.get("progress", True)))
        return self.manifest

    def prepare(self, teacher: nn.Module | None) -> CachedTeacherDataModule | None:
        """Build when this run loaded the teacher for it; then the data module reading the store (None for build)."""
        if teacher is not None:
            self.build(teacher)
        if self.mode == "build":
            return None
        self.manifest = self.store.manifest()
        if self.manifest is None or self.manifest.get("key") != self.key:
            raise CacheMissingError(f"teacher cache at {self.store.path} is not complete")
        note = "the teacher was loaded only to build it" if teacher is not None else "the teacher is not loaded"
        log.info("cache=%s: reading teacher outputs from %s (%s); %s",
                 self.mode, self.store.path, manifest_summary(self.manifest), note)
        c = self.cfg.cache
        return CachedTeacherDataModule(self.datamodule, self.store, self.task, verify=bool(c.get("verify", True)),
                                       max_shards=int(c.get("max_shards_in_memory", 256)))

    @property
    def teacher(self) -> CachedTeacher:
        return CachedTeacher(self.manifest or {}, str(self.store.path))

    def check_student(self, student: nn.Module) -> None:
        """The student's output width must be the cached teacher's (labels, or vocabulary size)."""
        config = getattr(student, "config", None)
        width = self.manifest.get("num_outputs") if self.manifest else None
        if config is None or width is None:
            return
        mine = config.num_labels if self.task == "classification" else config.vocab_size
        if mine != width:
            from litdistill.compat import IncompatibleModelsError

            raise IncompatibleModelsError(f"the cached teacher outputs cover {width} {'labels' if self.task == 'classification' else 'tokens'}, "
                                          f"the student's {mine}")

    def summary(self) -> dict[str, Any]:
        m = self.manifest or {}
        return {"mode": self.mode, "dir": str(self.store.path), "key_hash": self.store.hash, "outputs": m.get("outputs"),
                "k": m.get("k"), "dtype": m.get("dtype"), "codec": m.get("codec"), "rows": m.get("rows"),
                "bytes": m.get("bytes"), "bytes_per_row": m.get("bytes_per_row"), "row_unit": m.get("row_unit")}


def teacher_cache(cfg: DictConfig, losses: dict[str, DistillationLoss], datamodule: Any) -> TeacherCacheRun | None:
    """The run's teacher cache, or None for ``cache=none`` (or no ``cache`` group)."""
    if not cfg.get("cache") or cache_mode(cfg) == "none":
        return None
    return TeacherCacheRun(cfg, losses, datamodule)


__all__ = ["CacheKeyMismatch", "CacheMissingError", "TeacherCacheRun", "cache_key", "cache_mode", "teacher_cache"]
