"""Every check of the composed config that needs no data and no model: run first, so a bad value is
refused before any download, fine-tuning or training, with the key, the value and what is valid.

Types and unknown keys of the typed nodes are refused earlier still, by the schemas at compose time
(:mod:`litdistill.config.schema`). Each rule here is one small named function; :func:`check_config`
runs them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from litdistill.cache.build import OUTPUTS
from litdistill.cache.codec import CODECS, DTYPES
from litdistill.cache.run import MODES as CACHE_MODES
from litdistill.config.schema import EXPORT_CHECKPOINTS, SCHEMAS
from litdistill.core.forward import TASKS
from litdistill.data.transfer import check_label_fraction
from litdistill.reporting.intervals import METRICS as INTERVAL_METRICS
from litdistill.training.fault_tolerance import check_resume_mode
from litdistill.training.strategies import TEACHER_PLACEMENTS, normalize_precision, strategy_kind

CACHE_OUTPUTS = ("auto", *OUTPUTS)


def check_config(cfg: DictConfig) -> None:
    """Run every check below; the first failing one raises ``ValueError``."""
    check_typed_nodes(cfg)
    check_task(cfg)
    check_resume(cfg)
    check_report(cfg.get("report"))
    check_export(cfg.get("export"))
    check_export_checkpoint(cfg)
    check_teacher_finetune(cfg.get("teacher_finetune"))
    check_cache(cfg.get("cache"))
    check_data_sizes(cfg.get("data"))
    check_transfer_set(cfg)
    check_seeds(cfg)
    check_epochs(cfg.trainer)
    check_scaling(cfg)


def _choice(key: str, value: Any, valid: Iterable[Any]) -> None:
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not valid; valid values: {valid}")


def _at_least(key: str, value: Any, low: float) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"{key}={value!r} is not valid; it must be a number >= {low}")


def check_typed_nodes(cfg: DictConfig) -> None:
    """A key added to a typed node with ``+`` (Hydra lets it through the schema) is a typo: refuse it."""
    for node, schema in SCHEMAS.items():
        extra = sorted(set(cfg.get(node) or {}) - set(schema.__dataclass_fields__))
        if extra:
            raise ValueError(
                f"{node}.{extra[0]} is not a key of {node}; valid keys: {sorted(schema.__dataclass_fields__)}"
            )


def check_task(cfg: DictConfig) -> None:
    _choice("task", cfg.get("task"), TASKS)


def check_resume(cfg: DictConfig) -> None:
    check_resume_mode(cfg.get("resume"))


def check_report(report: DictConfig | None) -> None:
    if report:
        _at_least("report.threads", report.threads, 1)
        _at_least("report.repeats", report.repeats, 1)
        _at_least("report.timing_budget_s", report.timing_budget_s, 0)
        _at_least("report.seeds", report.seeds, 1)


def check_export(export: DictConfig | None) -> None:
    if export:
        _at_least("export.opset", export.opset, 7)
        _at_least("export.check_batches", export.check_batches, 1)


def check_export_checkpoint(cfg: DictConfig) -> None:
    """``export.checkpoint=best`` needs a monitored checkpoint on one process (FSDP/DeepSpeed shard it)."""
    which = OmegaConf.select(cfg, "export.checkpoint", default="last")
    _choice("export.checkpoint", which, EXPORT_CHECKPOINTS)
    if which != "best":
        return
    if not OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None):
        raise ValueError(
            "export.checkpoint=best needs callbacks.model_checkpoint with a monitor (callbacks=default); "
            "or export.checkpoint=last"
        )
    kind = strategy_kind(cfg.trainer.get("strategy"))[0]
    if kind in ("fsdp", "deepspeed"):
        raise ValueError(f"export.checkpoint=best with trainer.strategy={kind}: sharded checkpoints; use last")


def check_teacher_finetune(spec: DictConfig | None) -> None:
    if spec:
        _at_least("teacher_finetune.max_steps", spec.max_steps, 1)
        if spec.get("max_epochs") is not None:
            _at_least("teacher_finetune.max_epochs", spec.max_epochs, 1)
        if not spec.lr > 0:
            raise ValueError(f"teacher_finetune.lr={spec.lr!r} is not valid; it must be > 0")
        if not 0 <= spec.warmup_ratio < 1:
            raise ValueError(f"teacher_finetune.warmup_ratio={spec.warmup_ratio!r} is not valid; it must be in [0, 1)")


def check_cache(cache: DictConfig | None) -> None:
    if not cache:
        return
    _choice("cache.mode", cache.mode, CACHE_MODES)
    _choice("cache.outputs", cache.outputs, CACHE_OUTPUTS)
    _choice("cache.dtype", cache.dtype, DTYPES)
    _choice("cache.codec", cache.codec, CODECS)
    for key in ("k", "shard_size", "batch_size", "max_shards_in_memory"):
        _at_least(f"cache.{key}", cache[key], 1)


def check_data_sizes(data: DictConfig | None) -> None:
    """``data.batch_size`` and ``data.max_length`` (where the data module has them) must be >= 1."""
    for key in ("batch_size", "max_length"):
        if data and data.get(key) is not None:
            _at_least(f"data.{key}", data[key], 1)


def check_seeds(cfg: DictConfig) -> None:
    """``report.seeds`` > 1 compares the student with the baseline on one process, by a metric the
    bootstrap computes."""
    seeds = OmegaConf.select(cfg, "report.seeds", default=1)
    if seeds == 1:
        return
    if not cfg.get("baseline"):
        raise ValueError(f"report.seeds={seeds} compares the student with the labels-only baseline; set baseline=true")
    _choice("report.metric (with report.seeds > 1)", cfg.report.metric, INTERVAL_METRICS)
    devices, kind = cfg.trainer.get("devices", 1), strategy_kind(cfg.trainer.get("strategy"))[0]
    several = (isinstance(devices, int) and devices > 1) or (not isinstance(devices, (int, str)) and len(devices) > 1)
    if several or kind in ("ddp", "fsdp", "deepspeed"):
        raise ValueError(
            f"report.seeds={seeds} with trainer.devices={devices}, strategy={kind}: the extra seeds run on one "
            "process; run them as separate jobs (litdistill -m seed=1,2,3,4,5) or use one device"
        )


def has_transfer_set(cfg: DictConfig) -> bool:
    """Train rows without a label: hidden labels, unlabelled text or augmented sentences."""
    data = cfg.get("data") or {}
    fraction = data.get("label_fraction", 1.0)
    return bool(data.get("unlabeled")) or bool(cfg.get("augment")) or fraction != 1


def check_transfer_set(cfg: DictConfig) -> None:
    """Rows without a label need something to teach them: a teacher and a loss that uses it (hard CE
    skips them), or an LLM's labels for them (``data.teacher_labels``). Classification data only."""
    data = cfg.get("data") or {}
    if "label_fraction" in data:
        check_label_fraction(data.label_fraction)
    if not has_transfer_set(cfg):
        return
    what = (
        f"the train split has rows without a label (data.label_fraction={data.get('label_fraction')}, "
        f"data.unlabeled={data.get('unlabeled')}, augment={'on' if cfg.get('augment') else 'none'})"
    )
    fix = "; or train on labels only: data.label_fraction=1.0 with no data.unlabeled and augment=none"
    if cfg.get("task") != "classification" or "label_fraction" not in data:
        raise ValueError(f"{what}: transfer sets apply to classification data (task={cfg.get('task')})")
    if data.get("teacher_labels"):
        return  # the LLM's labels are the unlabelled rows' targets
    if not cfg.get("teacher"):
        raise ValueError(f"{what}: rows without a label need a teacher to score them, but teacher=null{fix}")
    terms = {name: term for name, term in (cfg.get("loss") or {}).items() if term}
    if not any(getattr(get_class(term._target_), "uses_teacher", True) for term in terms.values()):
        raise ValueError(
            f"{what}: loss={sorted(terms)} has only hard-label terms, which skip rows without a label; "
            f"add a soft-target term (loss=kd_ce, loss=kd){fix}"
        )


def check_epochs(trainer: DictConfig) -> None:
    """An unbounded run (``max_epochs=-1``) needs ``max_steps``: schedulers size themselves from one of them."""
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if epochs is not None and epochs != -1:
        _at_least("trainer.max_epochs", epochs, 1)
    elif steps is None or steps < 1:
        raise ValueError(
            f"trainer.max_epochs={epochs!r} with trainer.max_steps={steps!r} never ends; "
            "set trainer.max_epochs >= 1 or trainer.max_steps >= 1"
        )


def check_scaling(cfg: DictConfig) -> None:
    """Refuse unsupported strategy/precision combinations before data or models are loaded."""
    trainer = cfg.trainer
    precision = normalize_precision(trainer.get("precision", 32))
    accelerator = str(trainer.get("accelerator", "auto"))
    kind, zero = strategy_kind(trainer.get("strategy"))
    if precision == "16-mixed" and accelerator == "cpu":
        raise ValueError(
            "trainer.precision=16-mixed needs a GPU (fp16 autocast is not supported on CPU); "
            "use trainer.precision=bf16-mixed on CPU"
        )
    if kind in ("fsdp", "deepspeed") and accelerator == "cpu":
        raise ValueError(f"the {kind} strategy needs GPUs; on CPU use trainer=ddp_cpu (gloo)")
    has_teacher = bool(cfg.get("teacher"))
    if kind == "deepspeed" and zero == 3:
        raise ValueError(
            "DeepSpeed ZeRO-3 is refused: it partitions every parameter inside its engine, so after the fit the "
            "student holds only placeholders and the export and report would need a ZeRO-3 gather litdistill does "
            "not have; with a teacher (two models in one engine) the frozen teacher would also be partitioned into "
            "every checkpoint the engine writes. Use trainer=deepspeed (ZeRO-2), or trainer=fsdp (full-state "
            "gather for export; teacher_placement=shard|replicate)"
        )
    placement = cfg.get("teacher_placement", "shard")
    if placement not in TEACHER_PLACEMENTS:
        raise ValueError(f"teacher_placement={placement!r}; valid: {list(TEACHER_PLACEMENTS)}")
    if kind == "fsdp" and has_teacher:
        if cfg.get("teacher_finetune"):
            raise ValueError(
                "teacher_finetune under FSDP would wrap (and shard) the teacher in place before "
                "distillation; fine-tune it in a separate run and point teacher.name_or_path at the "
                "result, then set teacher_finetune=null"
            )
        if cfg.get("baseline"):
            raise ValueError(
                "baseline=true under FSDP would copy a student out of an already sharded teacher; "
                "set baseline=false (run the baseline separately with teacher=null)"
            )
    if int(trainer.get("accumulate_grad_batches", 1)) < 1:
        raise ValueError(f"trainer.accumulate_grad_batches must be >= 1, got {trainer.accumulate_grad_batches}")
