"""Objects built from the composed config: the only place besides ``train`` that reads ``cfg``.

Each builder returns a plain object or a factory, so the stages take what they need and never the
config: a stage can be called from Python with objects built any other way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from litdistill.losses import DistillationLoss
from litdistill.training.checkpointing import AtomicCheckpointIO
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
    """The configured Trainer; ``overrides`` replace config keys (used for the extra stages)."""
    kwargs = {"plugins": [AtomicCheckpointIO()], **overrides}
    if "callbacks" not in overrides:
        kwargs["callbacks"] = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if "logger" not in overrides:
        loggers = [guard_logger(instantiate(lg)) for lg in (cfg.get("logger") or {}).values() if lg]
        kwargs["logger"] = loggers or False
    return instantiate(cfg.trainer, **kwargs)


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


def cuts_teacher_layers(student_cfg: DictConfig | None) -> bool:
    """True when the student is cut from the teacher's layers (``student=from_teacher``)."""
    return bool(student_cfg) and str(student_cfg.get("_target_", "")).endswith("student_from_teacher")
