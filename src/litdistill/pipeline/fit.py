"""Stage 4, fit: distil the student, then train the no-distillation baseline on the same steps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
from torch import nn

from litdistill.losses import HardCE
from litdistill.pipeline.student import distillation_module
from litdistill.training.strategies import configure_strategy

log = logging.getLogger(__name__)


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None,
    teacher: nn.Module | None,
    teacher_placement: str = "shard",
) -> None:
    """``trainer.fit``, resuming from ``ckpt_path`` when given (this run's own checkpoint, or the user's).

    ``teacher``: the loaded teacher model (None when its outputs arrive in the batches), which FSDP
    shards or replicates by ``teacher_placement``.
    """
    configure_strategy(trainer, module.student, teacher, teacher_placement)
    # weights_only=False: the checkpoint holds the DataModule's OmegaConf hparams
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)


def fit_baseline(
    make_student: Callable[[nn.Module | None], nn.Module],
    teacher: nn.Module | None,
    datamodule: L.LightningDataModule,
    make_trainer: Callable[..., L.Trainer],
    optimizers: tuple[Any, Any],
    task: str,
    seed: int,
) -> tuple[nn.Module, int]:
    """The same student, reseeded to the run's seed, trained on the labels alone for the same steps.
    Returns it and the optimizer steps it took (the report shows them beside the student's)."""
    log.info("training the no-distillation baseline (same student, same steps, labels only)")
    L.seed_everything(seed, workers=True)
    baseline = make_student(teacher)
    module = distillation_module(baseline, None, {"ce": HardCE()}, optimizers, task)
    trainer = make_trainer(logger=False, callbacks=[], enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    return baseline, trainer.global_step


def unsharded_models(
    load_teacher: Callable[[], nn.Module] | None,
    make_student: Callable[[nn.Module | None], nn.Module],
    student_state: dict[str, Any],
) -> tuple[nn.Module | None, nn.Module]:
    """Rank 0 after FSDP (which sharded the models in place): a fresh teacher and a plain student
    holding the trained weights, for the export and the report."""
    teacher = load_teacher() if load_teacher is not None else None
    student = make_student(teacher)
    student.load_state_dict(student_state)
    return teacher, student
