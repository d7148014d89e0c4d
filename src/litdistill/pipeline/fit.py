"""Stage 4, fit: distil the student, then train the no-distillation baseline on the same steps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from litdistill.losses import HardCE
from litdistill.pipeline.student import distillation_module
from litdistill.reporting.plots import BASELINE_LOG
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


def student_weights(trainer: L.Trainer, module: L.LightningModule, which: str) -> str:
    """``export.checkpoint``: ``last`` keeps the weights training ended with; ``best`` loads the student's
    weights from the checkpoint with the best validation metric (the monitored ModelCheckpoint,
    ``checkpoints/``), so the report scores and ``student/`` holds that one. Returns which weights."""
    if which == "last":
        return "last: the weights at the end of training"
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    path = monitored[0].best_model_path if monitored else ""
    if not path:
        raise ValueError(
            "export.checkpoint=best, but no checkpoint with a validation metric was written "
            "(callbacks.model_checkpoint with a monitor, and validation, are needed); use export.checkpoint=last"
        )
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    score = monitored[0].best_model_score
    log.info("export.checkpoint=best: the student's weights from %s (%s)", path, monitored[0].monitor)
    return f"best: {path} ({monitored[0].monitor}={float(score):.4f})" if score is not None else f"best: {path}"


@dataclass
class StudentRecipe:
    """What trains one more student like the run's: its factories, fresh loss terms, optimizers, task
    (the baseline, and the students of ``report.seeds``)."""

    make_student: Callable[[nn.Module | None], nn.Module]
    make_trainer: Callable[..., L.Trainer]
    make_losses: Callable[[], dict[str, Any]]  # fresh terms: a learned projection starts anew
    optimizers: tuple[Any, Any]
    task: str
    log_dir: Path | None = None  # the run's folder: the baseline logs its curves to <log_dir>/csv_baseline


def fit_baseline(
    recipe: StudentRecipe, teacher: nn.Module | None, datamodule: L.LightningDataModule, seed: int, max_steps: int
) -> tuple[nn.Module, int]:
    """The same student, reseeded to ``seed``, trained on the labels alone (``datamodule``: the labelled
    rows) for the student's ``max_steps`` optimizer steps. With a transfer set the student's epochs hold
    more rows than the labels: the baseline then takes more epochs over the labelled rows, so a distilled
    student that wins did not win by more updates. Returns it and the steps it took (the report shows
    them beside the student's). With ``recipe.log_dir`` it logs its training loss and validates about five
    times into ``<log_dir>/csv_baseline`` (the report's training curves); without, it validates nothing.
    Validation runs in eval mode on its own loader, so the baseline's weights are the same either way."""
    log.info("training the no-distillation baseline (same student, %d steps, labelled rows only)", max_steps)
    L.seed_everything(seed, workers=True)
    baseline = recipe.make_student(teacher)
    module = distillation_module(baseline, None, {"ce": HardCE()}, recipe.optimizers, recipe.task)
    logged = recipe.log_dir is not None
    trainer = recipe.make_trainer(
        logger=CSVLogger(str(recipe.log_dir), name=BASELINE_LOG, version="") if logged else False,
        callbacks=[],
        enable_checkpointing=False,
        max_steps=max_steps,
        max_epochs=-1,
        num_sanity_val_steps=0,
        val_check_interval=max(1, max_steps // 5),  # ~5 validations, however few rows an epoch holds
        check_val_every_n_epoch=None,
        stage=f"baseline (seed {seed})",
        **({} if logged else {"limit_val_batches": 0}),
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
