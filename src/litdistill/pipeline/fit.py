"""Stage 4, fit: distil the student, then train the no-distillation baseline on the same steps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class StudentRecipe:
    """What trains one more student like the run's: its factories, fresh loss terms, optimizers, task
    (the baseline, and the students of ``report.seeds``)."""

    make_student: Callable[[nn.Module | None], nn.Module]
    make_trainer: Callable[..., L.Trainer]
    make_losses: Callable[[], dict[str, Any]]  # fresh terms: a learned projection starts anew
    optimizers: tuple[Any, Any]
    task: str


def fit_baseline(
    recipe: StudentRecipe, teacher: nn.Module | None, datamodule: L.LightningDataModule, seed: int, max_steps: int
) -> tuple[nn.Module, int]:
    """The same student, reseeded to ``seed``, trained on the labels alone (``datamodule``: the labelled
    rows) for the student's ``max_steps`` optimizer steps. With a transfer set the student's epochs hold
    more rows than the labels: the baseline then takes more epochs over the labelled rows, so a distilled
    student that wins did not win by more updates. Returns it and the steps it took (the report shows
    them beside the student's). Its validation is skipped (nothing reads it)."""
    log.info("training the no-distillation baseline (same student, %d steps, labelled rows only)", max_steps)
    L.seed_everything(seed, workers=True)
    baseline = recipe.make_student(teacher)
    module = distillation_module(baseline, None, {"ce": HardCE()}, recipe.optimizers, recipe.task)
    trainer = recipe.make_trainer(
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        max_steps=max_steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        val_check_interval=1.0,
        check_val_every_n_epoch=1,
    )
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
