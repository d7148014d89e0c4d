"""Stage 3, student: built (from the teacher's layers, a config, or a checkpoint) and checked against
what teaches it, then wrapped with the losses in a :class:`DistillationModule`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from litdistill.cache.run import TeacherCacheRun
from litdistill.losses import DistillationLoss, HardCE
from litdistill.models.compatibility import check_output_spaces
from litdistill.training.module import DistillationModule
from litdistill.training.strategies import enable_gradient_checkpointing

log = logging.getLogger(__name__)


def build_student(
    make_student: Callable[[nn.Module | None], nn.Module],
    teacher: nn.Module | None,
    cache: TeacherCacheRun | None,
    task: str,
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """The student, its label count or vocabulary checked against the teacher's (or the cached outputs')."""
    student = make_student(teacher)
    if gradient_checkpointing:
        enable_gradient_checkpointing(student)
    if teacher is not None:
        check_output_spaces(teacher, student, task)
    elif cache is not None:
        cache.check_student(student)
    return student


def losses_for(losses: dict[str, DistillationLoss], teaches: bool) -> dict[str, DistillationLoss]:
    """With nothing to teach (``teacher=null``, no cache, no LLM labels), keep the label losses only."""
    if teaches or not any(loss.uses_teacher for loss in losses.values()):
        return losses
    kept = {name: loss for name, loss in losses.items() if not loss.uses_teacher} or {"ce": HardCE()}
    log.info("teacher=null: training on labels alone with losses %s", list(kept))
    return kept


def distillation_module(
    student: nn.Module,
    teacher: nn.Module | None,
    losses: dict[str, DistillationLoss],
    optimizers: tuple[Any, Any],
    task: str,
) -> DistillationModule:
    optimizer, scheduler = optimizers
    return DistillationModule(student, teacher, losses, optimizer=optimizer, scheduler=scheduler, task=task)
