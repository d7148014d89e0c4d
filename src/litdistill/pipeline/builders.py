"""The composed config turned into the objects the stages take: the one module that reads ``cfg``.

:func:`plan_run` builds a :class:`RunPlan` (factories, plain values, typed config nodes; nothing is
loaded), so the stages take what they need and never the config: a stage can be called from Python
with objects built any other way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn

from litdistill.cache.run import CacheRequest
from litdistill.config.schema import ExportConfig, ReportConfig
from litdistill.core.conf import to_plain
from litdistill.losses import DistillationLoss
from litdistill.pipeline.fit import StudentRecipe
from litdistill.training.checkpointing import AtomicCheckpointIO
from litdistill.training.fault_tolerance import FaultTolerance, resume_checkpoint
from litdistill.training.finetune import FinetuneJob, finetune_key
from litdistill.training.progress import StepProgress
from litdistill.training.safe_logger import guard_logger

TrainerFactory = Callable[..., L.Trainer]
StudentFactory = Callable[[nn.Module | None], nn.Module]


def build_losses(cfg: DictConfig | None) -> dict[str, DistillationLoss]:
    """Instantiate every loss term now, so bad values fail before any model is loaded."""
    losses = {name: instantiate(term) for name, term in (cfg or {}).items() if term is not None}
    if not losses:
        raise ValueError("no loss terms configured; pick one with loss=<name> (see conf/loss/)")
    return losses


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The configured Trainer; ``overrides`` replace config keys (used for the extra stages).
    ``stage`` names the trainer's progress (:mod:`litdistill.training.progress`).
    ``callbacks="training"`` keeps the configured callbacks that change training (schedules, layer drop)
    and leaves out checkpoints and the SIGTERM handler: a repeat under another seed writes nothing."""
    stage = overrides.pop("stage", "student")
    kwargs = {"plugins": [AtomicCheckpointIO()], **overrides}
    if overrides.get("callbacks", "all") in ("all", "training"):  # "training": no checkpoints, no signal handling
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
        if overrides.get("callbacks") == "training":
            callbacks = [c for c in callbacks if not isinstance(c, (Checkpoint, FaultTolerance))]
        kwargs["callbacks"] = callbacks
    # progress in optimizer steps, titled by stage: a bar on a terminal, plain lines without one
    kwargs["callbacks"] = [*kwargs["callbacks"], StepProgress(stage)]
    kwargs["enable_progress_bar"] = False
    if "logger" not in overrides:
        loggers = [guard_logger(instantiate(lg)) for lg in (cfg.get("logger") or {}).values() if lg]
        kwargs["logger"] = loggers or False
    return instantiate(cfg.trainer, **kwargs)


def check_trainer(make_trainer: TrainerFactory) -> None:
    """Build the run's Trainer once and drop it: a strategy, accelerator, device count or precision that
    Lightning cannot run here (``+trainer.strategy=foo``, ``trainer=ddp`` without a GPU) fails now, before
    any data or model is loaded, not after the teacher's fine-tuning."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # its "GPU available" lines come with the real Trainer
    try:
        make_trainer(logger=False, callbacks=[], enable_checkpointing=False)
    except Exception as error:  # noqa: BLE001  (Lightning raises ValueError, MisconfigurationException...)
        cause = error.__cause__ or error
        raise ValueError(
            f"trainer: {type(cause).__name__}: {cause} (trainer groups: conf/trainer/; docs/scaling.md)"
        ) from error
    finally:
        lightning_log.setLevel(level)


def trainer_factory(cfg: DictConfig) -> TrainerFactory:
    """``factory(**overrides) -> Trainer``: the run's trainer, or a plain one for an extra stage."""
    return partial(build_trainer, cfg)


def student_factory(cfg: DictConfig) -> StudentFactory:
    """``factory(teacher) -> student``: a fresh student each call (the run's, the baseline's)."""

    def build(teacher: nn.Module | None) -> nn.Module:
        return instantiate(cfg.student)(teacher=getattr(teacher, "primary_model", teacher))

    return build


def optimizer_factories(cfg: DictConfig) -> tuple[Any, Any]:
    """``(optimizer, scheduler)`` factories for :class:`~litdistill.training.module.DistillationModule`."""
    return instantiate(cfg.optimizer), instantiate(cfg.scheduler) if cfg.get("scheduler") else None


def _student_cut(student: DictConfig | None) -> tuple[list[int] | None, int | None] | None:
    """``(layers, every)`` of a student cut from the teacher's layers (``student=from_teacher``), else None."""
    if not student or not str(student.get("_target_", "")).endswith("student_from_teacher"):
        return None
    layers = student.get("layers")
    return (list(layers) if layers is not None else None), student.get("every")


# data keys that add only unlabelled rows: the teacher is fine-tuned on the labelled rows, so one fine-tuned
# teacher serves every transfer set of the same labels (data.label_fraction does change them)
TRANSFER_ONLY_KEYS = ("unlabeled", "unlabeled_text_column", "unlabeled_split", "augment", "augment_cache_dir")


def teacher_finetune_key(cfg: DictConfig, teacher: DictConfig | None = None) -> str | None:
    """The fine-tuned teacher's key (None without ``teacher_finetune``); ``teacher``: one member's node."""
    if not cfg.get("teacher_finetune"):
        return None
    nodes = {k: OmegaConf.select(cfg, k) for k in ("teacher", "teacher_finetune", "data", "task", "tokenizer", "seed")}
    data = {k: v for k, v in (to_plain(nodes["data"]) or {}).items() if k not in TRANSFER_ONLY_KEYS}
    return finetune_key({**nodes, "data": data, "teacher": teacher if teacher is not None else cfg.teacher})


def finetune_job(cfg: DictConfig, teacher: DictConfig | None = None) -> FinetuneJob:
    """``teacher_finetune`` for the teacher (or one member of ``teacher=multi``) as a plain job."""
    node = teacher if teacher is not None else cfg.teacher
    spec = cfg.teacher_finetune
    quantization = node.get("quantization")
    return FinetuneJob(
        max_steps=int(spec.max_steps),
        max_epochs=None if spec.get("max_epochs") is None else int(spec.max_epochs),
        lr=float(spec.lr),
        warmup_ratio=float(spec.warmup_ratio),
        cache_dir=Path(cfg.paths.cache_dir) / "teachers" / teacher_finetune_key(cfg, teacher),
        task=str(cfg.task),
        seed=int(cfg.seed),
        dtype=str(node.get("dtype", "float32")),
        quantization=quantization,
        load_float=partial(instantiate, node, quantization=None) if quantization else None,
    )


def finetune_jobs(cfg: DictConfig) -> FinetuneJob | dict[str, FinetuneJob]:
    """One job, or one per member of ``teacher=multi`` (each cached by its own config)."""
    members = cfg.teacher.get("teachers") if str(cfg.teacher.get("_target_", "")).endswith("MultiTeacher") else None
    if members:
        return {name: finetune_job(cfg, node) for name, node in members.items()}
    return finetune_job(cfg)


def cache_request(cfg: DictConfig) -> CacheRequest | None:
    """The ``cache`` group as a plain request (None without one)."""
    cache = cfg.get("cache")
    if not cache:
        return None
    return CacheRequest(
        mode=str(cache.mode),
        task=str(cfg.task),
        teacher=to_plain(cfg.get("teacher")),
        student=to_plain(cfg.get("student")),
        finetune_key=teacher_finetune_key(cfg) if cfg.get("teacher") else None,
        root=str(cache.root),
        dir=None if cache.get("dir") is None else str(cache.dir),
        splits=tuple(cache.get("splits") or ("train", "validation")),
        outputs=str(cache.outputs),
        k=int(cache.k),
        dtype=str(cache.dtype),
        codec=str(cache.codec),
        hidden_states=to_plain(cache.get("hidden_states", "auto")),
        shard_size=int(cache.shard_size),
        batch_size=int(cache.batch_size),
        verify=bool(cache.verify),
        max_shards_in_memory=int(cache.max_shards_in_memory),
        progress=bool(cache.progress),
    )


def resume_from(cfg: DictConfig) -> str | None:
    """``ckpt_path``, or with ``resume=true|auto`` the run directory's newest checkpoint."""
    checkpoints = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    run_dir = Path(cfg.paths.output_dir)
    return resume_checkpoint(cfg.get("ckpt_path"), cfg.get("resume"), checkpoints or run_dir / "checkpoints", run_dir)


@dataclass
class RunPlan:
    """Everything a training run wires together, built from the config before anything is loaded."""

    seed: int
    task: str
    out_dir: Path
    predictions: Path  # every model's test predictions, for re-scoring and paired comparisons
    ckpt_path: str | None
    losses: dict[str, DistillationLoss]
    make_losses: Callable[[], dict[str, DistillationLoss]]  # fresh terms (a repeat under another seed)
    optimizers: tuple[Any, Any]
    make_datamodule: Callable[[], L.LightningDataModule]
    make_trainer: TrainerFactory
    make_student: StudentFactory | None  # None: no student configured (cache=build needs none)
    load_teacher: Callable[[], nn.Module] | None  # None: teacher=null
    teacher_target: str | None
    teacher_source: str | None  # its hub name or folder, for the vocabulary check
    student_source: str | None  # a pretrained student's, likewise
    data_tokenizer_source: str | None
    student_cut: tuple[list[int] | None, int | None] | None  # (layers, every) of a student cut from the teacher
    finetune: FinetuneJob | dict[str, FinetuneJob] | None
    cache: CacheRequest | None
    baseline: bool
    teacher_placement: str
    gradient_checkpointing: bool
    report: ReportConfig
    export: ExportConfig
    log_model: Any
    resolved: dict[str, Any]  # the config with every ${...} resolved (config.yaml, W&B)

    @property
    def recipe(self) -> StudentRecipe:
        """What trains another student like the run's (the baseline, the extra seeds)."""
        return StudentRecipe(
            self.make_student, self.make_trainer, self.make_losses, self.optimizers, self.task, self.out_dir
        )


def plan_run(cfg: DictConfig) -> RunPlan:
    """The run's :class:`RunPlan`. Builds the loss terms (a bad value fails here) and finds the checkpoint
    to resume from; loads no data and no model."""
    teacher = cfg.get("teacher")
    make_trainer = trainer_factory(cfg)
    check_trainer(make_trainer)
    return RunPlan(
        seed=int(cfg.seed),
        task=str(cfg.task),
        out_dir=Path(cfg.paths.output_dir),
        predictions=Path(cfg.paths.output_dir) / "predictions.csv",
        ckpt_path=resume_from(cfg),
        losses=build_losses(cfg.loss),
        make_losses=partial(build_losses, cfg.loss),
        optimizers=optimizer_factories(cfg),
        make_datamodule=partial(instantiate, cfg.data),
        make_trainer=make_trainer,
        make_student=student_factory(cfg) if cfg.get("student") else None,
        load_teacher=partial(instantiate, teacher) if teacher else None,
        teacher_target=teacher.get("_target_") if teacher else None,
        teacher_source=teacher.get("name_or_path") if teacher else None,
        student_source=OmegaConf.select(cfg, "student.name_or_path", default=None),
        data_tokenizer_source=cfg.get("tokenizer"),
        student_cut=_student_cut(cfg.get("student")),
        finetune=finetune_jobs(cfg) if teacher and cfg.get("teacher_finetune") else None,
        cache=cache_request(cfg),
        baseline=bool(cfg.get("baseline")),
        teacher_placement=str(cfg.get("teacher_placement", "shard")),
        gradient_checkpointing=bool(cfg.get("student_gradient_checkpointing")),
        report=_typed(cfg.get("report"), ReportConfig),
        export=_typed(cfg.get("export"), ExportConfig),
        log_model=OmegaConf.select(cfg, "logger.wandb.log_model", default=False),
        resolved=OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False),
    )


def _typed(node: DictConfig | None, schema: type) -> Any:
    """A typed node as its dataclass (the schema's defaults when the node is absent)."""
    return OmegaConf.to_object(node) if node is not None else schema()
