"""``cache=build|use|auto`` for one training run: its key, its store, building it, and reading it.

* ``build``: load the teacher (fine-tuned as configured), run it once over ``cache.splits``, write
  the store, exit. Run again, it resumes an interrupted build or repairs corrupted shards.
* ``use``: train from an existing store; the teacher is never instantiated. Refused when no complete
  store matches the run's key (naming how the closest store differs).
* ``auto``: ``use`` when the store exists, else load the teacher, build, and continue as ``use``.

A student built from the teacher's layers (``student=from_teacher``) is refused under ``use`` and
``auto``: it would need the teacher's weights, which these modes never load (``auto`` would load
them on its first run only, so a sweep's first trial would start from another student than the
rest). Pick a student that does not copy the teacher (``student=tiny_bert``, ``student=scaled``,
``student=pretrained``); ``cache=build`` itself needs no student, unless a hidden-state loss is
configured: the teacher layers its layer map reads (and so the store holds) depend on the student's
depth, read from the student's config like the teacher's depth and width (no model is loaded).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
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
from litdistill.cache.store import (
    CacheKeyMismatch,
    CacheMissingError,
    TeacherStore,
    manifest_summary,
    nearest_store,
)
from litdistill.core.conf import to_plain
from litdistill.losses import SoftTargetKL, TokenDivergence
from litdistill.losses.base import DistillationLoss
from litdistill.losses.features import HiddenStateLoss
from litdistill.models.compatibility import IncompatibleModelsError
from litdistill.models.loading import model_config

log = logging.getLogger("litdistill.cache")

MODES = ("none", "build", "use", "auto")
TEACHER_BUILDERS = ("litdistill.models.layer_subset.student_from_teacher",)


@dataclass(frozen=True)
class CacheRequest:
    """What a run asks of the teacher cache, as plain values (the entry layer builds it from the config:
    ``litdistill.pipeline.builders.cache_request``). ``teacher`` and ``student`` are their config nodes as
    plain dicts: the key and the layer counts are read from them, and no model is loaded."""

    mode: str
    task: str
    teacher: Mapping[str, Any] | None
    student: Mapping[str, Any] | None
    finetune_key: str | None = None  # the fine-tuned teacher's key (teacher_finetune), part of the store's key
    root: str = "teacher_outputs"
    dir: str | None = None
    splits: tuple[str, ...] = ("train", "validation")
    outputs: str = "auto"
    k: int = 64
    dtype: str = "float16"
    codec: str = "raw"
    hidden_states: Any = "auto"
    shard_size: int = 256
    batch_size: int = 32
    verify: bool = True
    max_shards_in_memory: int = 256
    progress: bool = True


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"cache.mode must be one of {list(MODES)}, got {mode!r}")
    return mode


def resolve_outputs(outputs: str, task: str) -> str:
    if outputs == "auto":
        return "topk" if task == "causal_lm" else "logits"
    return outputs


@dataclass(frozen=True)
class HiddenPlan:
    """The teacher hidden states a store holds (``cache.hidden_states``) and those each hidden-state loss reads."""

    setting: Any = "auto"  # cache.hidden_states: auto | all | false | [layers]
    layers: tuple[int, ...] = ()  # stored teacher layers (hidden_states indices, 0 = embeddings)
    size: int | None = None  # the teacher's hidden size
    teacher_layers: int | None = None  # the teacher's block count
    reads: dict[str, list[int]] = field(default_factory=dict)  # loss term -> teacher layers its map reads


def hidden_setting(value: Any) -> Any:
    """``cache.hidden_states`` checked: "auto", "all", False, or a sorted list of teacher layers."""
    value = to_plain(value)
    if value is False or value in ("auto", "all"):
        return value
    layers = isinstance(value, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    if layers and value and min(value) >= 0:
        return sorted(set(value))
    raise ValueError(
        "cache.hidden_states must be auto (the layers the hidden-state losses map to), all, false or a "
        f"non-empty list of teacher layers (0 = embeddings), got {value!r}"
    )


def model_shape(spec: Any, role: str) -> tuple[int, int]:
    """(blocks, hidden size) of the configured ``role`` model, from its Hugging Face config alone: under
    cache=use the teacher is never loaded, and the student is built only after the store is found."""
    from transformers import AutoConfig

    spec = dict(to_plain(spec) or {})
    target = str(spec.get("_target_", ""))
    try:
        if target == "litdistill.models.loading.from_config":
            config = model_config(spec.get("config"), spec.get("base"))
        elif target == "litdistill.models.loading.load_pretrained":
            config = AutoConfig.from_pretrained(str(spec["name_or_path"]), revision=spec.get("revision"))
        else:
            config = None
    except (OSError, ValueError) as err:
        raise ValueError(
            f"teacher cache: cannot read the {role}'s config to resolve the hidden-state layer maps: {err}"
        ) from err
    layers, size = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    if not isinstance(layers, int) or not isinstance(size, int):
        raise ValueError(
            f"teacher cache: hidden-state losses need the {role}'s layer count and hidden size before any model "
            f"is loaded, and {role}._target_={target!r} gives no config with them (from_config and "
            "load_pretrained do)"
        )
    return layers, size


def student_layers(student: Mapping[str, Any] | None, names: list[str]) -> int:
    """The configured student's depth, which the layer maps of the hidden-state losses ``names`` depend on."""
    if not student or str(student.get("_target_", "")) in TEACHER_BUILDERS:
        raise ValueError(
            f"teacher cache: the hidden-state losses {names} map student layers to teacher layers, so the hidden "
            "states "
            "a store holds depend on the student it trains: configure that student (student=tiny_bert, student=scaled, "
            "student=pretrained ...; not student=from_teacher, which cache=use/auto refuse), or list the teacher "
            "layers "
            "to store: cache.hidden_states=[...] or all"
        )
    return model_shape(student, "student")[0]


def plan_hidden(request: CacheRequest, losses: dict[str, DistillationLoss]) -> HiddenPlan:
    """Which teacher hidden states the run's store holds and which each hidden-state loss reads, from
    the configs (nothing is loaded)."""
    setting = hidden_setting(request.hidden_states)
    hidden = {name: loss for name, loss in losses.items() if isinstance(loss, HiddenStateLoss)}
    if not hidden and setting in ("auto", False):
        return HiddenPlan(setting)
    depth, size = model_shape(request.teacher, "teacher")
    reads: dict[str, list[int]] = {}
    if hidden:
        depth_s = student_layers(request.student, list(hidden))
        reads = {name: loss.teacher_layers(depth_s, depth) for name, loss in hidden.items()}
    if setting is False:
        layers: Any = ()
    elif setting == "auto":
        layers = sorted(set().union(*reads.values()))
    elif setting == "all":
        layers = range(depth + 1)
    elif max(setting) > depth:
        raise ValueError(f"cache.hidden_states={setting}: the teacher has layers 0..{depth} (0 = embeddings)")
    else:
        layers = setting
    return HiddenPlan(setting, tuple(layers), size if layers else None, depth if layers else None, reads)


def topk_temperature(losses: dict[str, DistillationLoss]) -> float:
    """The one temperature a top-k store is captured at: the teacher-reading logit losses' own.

    A top-k store is exact only at the temperature it was tempered at (losses/sparse.py), so the logit
    losses that read it must share one; different ones are refused, naming them.
    """
    temperatures = {
        name: float(loss.temperature)
        for name, loss in losses.items()
        if loss.uses_teacher and isinstance(loss, (SoftTargetKL, TokenDivergence))
    }
    if len(set(temperatures.values())) > 1:
        raise ValueError(
            f"a top-k teacher cache is captured at one temperature, but the losses reading it use {temperatures}; "
            "give them one temperature, or use cache.outputs=logits"
        )
    return next(iter(temperatures.values()), 1.0)


def check_losses(losses: dict[str, DistillationLoss], outputs: str, hidden: HiddenPlan) -> None:
    """Cached teachers give logits (or top-k) and the stored hidden states: losses needing anything else
    (attention maps, hooked submodule outputs, unstored layers) are refused, naming what is missing."""

    stores = "it stores logits or top-k and, for hidden-state losses, the mapped hidden states"
    for name, loss in losses.items():
        if not loss.uses_teacher:
            continue
        label = f"loss {name!r} ({type(loss).__name__})"
        if isinstance(loss, HiddenStateLoss):
            missing = sorted(set(hidden.reads[name]) - set(hidden.layers))
            if missing:
                raise ValueError(
                    f"{label} reads the teacher's hidden states of layers {hidden.reads[name]}, but the teacher "
                    "cache stores "
                    f"{list(hidden.layers) or 'none'} (cache.hidden_states={hidden.setting}): layers {missing} are "
                    "missing. "
                    "Set cache.hidden_states=auto (the layers the losses map to) or list them, or use cache=none"
                )
            continue
        extra = set(loss.needs) - {"logits"}
        if "attentions" in extra:
            raise ValueError(
                f"{label} needs the teacher's attention maps, which a teacher cache does not store ({stores}); "
                "use cache=none for it"
            )
        if extra or getattr(loss, "teacher_features", ()):
            what = f"outputs of {loss.teacher_features}" if getattr(loss, "teacher_features", ()) else sorted(extra)
            raise ValueError(
                f"{label} needs the teacher's {what}, which a teacher cache does not store ({stores}); "
                "use cache=none for it"
            )
        if outputs == "topk" and not isinstance(loss, (SoftTargetKL, TokenDivergence)):
            raise ValueError(
                f"loss {name!r} ({type(loss).__name__}) needs the teacher's full logits; a top-k cache works "
                "with soft_kl, forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl and tvd "
                "(or set cache.outputs=logits)"
            )


def cache_key(request: CacheRequest, datamodule: Any, spec: StoreSpec, splits: list[str]) -> dict[str, Any]:
    """The store's key fields, in the order a mismatch is reported (see litdistill.cache.keys)."""
    sources = split_sources(datamodule, splits)
    dataset, options, max_length = dataset_identity(getattr(datamodule, "hparams", {}))
    return {
        "format": FORMAT,
        "task": spec.task,
        "teacher": teacher_identity(request.teacher or {}, request.finetune_key),
        "tokenizer": tokenizer_identity(datamodule.tokenizer),
        "dataset": dataset,
        "data_options": options,
        "max_length": max_length,
        "splits": {split: split_fingerprint(src.dataset, spec.task) for split, src in sources.items()},
        "outputs": spec.outputs,
        "k": spec.k if spec.outputs == "topk" else None,
        "dtype": spec.dtype,
        "codec": spec.codec if spec.outputs == "topk" else None,
        **({"topk_temperature": spec.temperature} if spec.outputs == "topk" and spec.temperature != 1.0 else {}),
        **({"hidden_layers": list(spec.hidden_layers), "hidden_size": spec.hidden_size} if spec.hidden_layers else {}),
    }


class TeacherCacheRun:
    """The cache for one training run: its key and store, building, and the wrapped data module."""

    def __init__(self, request: CacheRequest, losses: dict[str, DistillationLoss], datamodule: Any) -> None:
        self.request, self.mode, self.task = request, check_mode(request.mode), request.task
        if not request.teacher:
            raise ValueError(
                f"cache={self.mode} caches a teacher's outputs, but no teacher is configured (teacher=null)"
            )
        target = str(request.teacher.get("_target_", ""))
        if target.endswith("MultiTeacher"):
            raise ValueError(
                "cache: several teachers (teacher=multi) are not supported by the teacher cache; use cache=none"
            )
        if self.mode in ("use", "auto") and str((request.student or {}).get("_target_", "")) in TEACHER_BUILDERS:
            raise ValueError(
                f"cache={self.mode} never loads the teacher, but student=from_teacher copies the teacher's layers. "
                "Use a student that does not need the teacher's weights (student=tiny_bert, student=scaled, "
                "student=pretrained ...), or cache=none. (cache=build needs no student.)"
            )
        self.splits = list(request.splits or ["train", "validation"])
        missing = {"train", "validation"} - set(self.splits)
        if missing:
            raise ValueError(
                f"cache.splits must include train and validation (the fit reads both), missing {sorted(missing)}"
            )
        outputs = resolve_outputs(str(request.outputs), request.task)
        hidden = plan_hidden(request, losses)
        self.spec = StoreSpec(
            task=request.task,
            outputs=outputs,
            k=int(request.k) if outputs == "topk" else None,
            dtype=str(request.dtype),
            codec=str(request.codec),
            shard_size=int(request.shard_size),
            hidden_layers=hidden.layers,
            hidden_size=hidden.size,
            teacher_layers=hidden.teacher_layers,
            temperature=topk_temperature(losses) if outputs == "topk" else 1.0,
        )
        check_losses(losses, outputs, hidden)
        self.datamodule = datamodule
        self.key = cache_key(request, datamodule, self.spec, self.splits)
        root = Path(str(request.root))
        self.explicit_dir = request.dir is not None
        path = Path(str(request.dir)) if self.explicit_dir else root / TeacherStore(root, self.key).hash
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

    def build(self, teacher: nn.Module, device: torch.device | None = None) -> dict[str, Any]:
        """Build (or resume) the store with ``teacher`` on ``device`` (the rank's device, as a fit would place
        it; a bitsandbytes-quantized teacher stays where it was loaded: it cannot be moved)."""
        if device is not None and not getattr(teacher, "is_quantized", False):
            teacher.to(device)
        sources = split_sources(self.datamodule, self.splits)
        self.manifest = build_store(
            self.store,
            teacher,
            sources,
            self.spec,
            batch_size=int(self.request.batch_size),
            progress=bool(self.request.progress),
        )
        return self.manifest

    def prepare(self, teacher: nn.Module | None, device: torch.device | None = None) -> CachedTeacherDataModule | None:
        """Build when this run loaded the teacher for it (on ``device``); then the data module reading the
        store (None for build)."""
        if teacher is not None:
            self.build(teacher, device)
        if self.mode == "build":
            return None
        self.manifest = self.store.manifest()
        if self.manifest is None or self.manifest.get("key") != self.key:
            raise CacheMissingError(f"teacher cache at {self.store.path} is not complete")
        note = "the teacher was loaded only to build it" if teacher is not None else "the teacher is not loaded"
        log.info(
            "cache=%s: reading teacher outputs from %s (%s); %s",
            self.mode,
            self.store.path,
            manifest_summary(self.manifest),
            note,
        )
        return CachedTeacherDataModule(
            self.datamodule,
            self.store,
            self.task,
            verify=bool(self.request.verify),
            max_shards=int(self.request.max_shards_in_memory),
        )

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
            raise IncompatibleModelsError(
                f"the cached teacher outputs cover {width} {'labels' if self.task == 'classification' else 'tokens'}, "
                f"the student's {mine}"
            )

    def summary(self) -> dict[str, Any]:
        m = self.manifest or {}
        return {
            "mode": self.mode,
            "dir": str(self.store.path),
            "key_hash": self.store.hash,
            "outputs": m.get("outputs"),
            "k": m.get("k"),
            "dtype": m.get("dtype"),
            "codec": m.get("codec"),
            "rows": m.get("rows"),
            "bytes": m.get("bytes"),
            "bytes_per_row": m.get("bytes_per_row"),
            "row_unit": m.get("row_unit"),
            "hidden_layers": m.get("hidden_layers"),
        }


def teacher_cache(
    request: CacheRequest | None, losses: dict[str, DistillationLoss], datamodule: Any
) -> TeacherCacheRun | None:
    """The run's teacher cache, or None for ``cache=none`` (or no ``cache`` group)."""
    if request is None or check_mode(request.mode) == "none":
        return None
    return TeacherCacheRun(request, losses, datamodule)


__all__ = ["CacheKeyMismatch", "CacheMissingError", "CacheRequest", "TeacherCacheRun", "cache_key", "teacher_cache"]
