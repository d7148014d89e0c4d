"""Stage 6b, seeds (``report.seeds=N``): the student and its labels-only baseline trained again under
N-1 more seeds, so "distillation beats labels alone" comes with a paired-bootstrap interval
(:mod:`litdistill.reporting.intervals`) rather than one seed's difference.

Each extra seed repeats the run's recipe exactly (the same teacher or cache, losses, schedules, data,
steps); nothing is logged or checkpointed for it, and only its test predictions are kept.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import lightning as L
from torch import nn

from litdistill.cache.run import TeacherCacheRun
from litdistill.pipeline.fit import StudentRecipe, fit_baseline
from litdistill.pipeline.student import build_student, distillation_module, losses_for
from litdistill.reporting.evaluation import predict

log = logging.getLogger(__name__)


def extra_seeds(seed: int, count: int) -> list[int]:
    """The seeds after the run's own: ``seed + 1 .. seed + count - 1``."""
    return [seed + i for i in range(1, count)]


def repeat_over_seeds(
    recipe: StudentRecipe,
    seeds: list[int],
    teacher: nn.Module | None,
    teaches: nn.Module | None,
    cache: TeacherCacheRun | None,
    datamodule: L.LightningDataModule,
    labelled: L.LightningDataModule,
) -> dict[str, list[Any]]:
    """``{"seeds": seeds, "student": [preds [N] per seed], "baseline": [...]}``: test predictions.

    ``teacher``: the loaded teacher (students cut from its layers); ``teaches``: what the losses read
    (it, a cache or LLM labels); ``labelled``: the labelled rows, for the baseline.
    """
    preds: dict[str, list[Any]] = {"seeds": list(seeds), "student": [], "baseline": []}
    for seed in seeds:
        log.info("report.seeds: student and baseline under seed %d", seed)
        L.seed_everything(seed, workers=True)
        student = build_student(recipe.make_student, teacher, cache, recipe.task)
        losses = losses_for(recipe.make_losses(), teaches is not None)
        module = distillation_module(student, teaches, losses, recipe.optimizers, recipe.task)
        trainer = recipe.make_trainer(
            logger=False,
            callbacks="training",
            enable_checkpointing=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            stage=f"student (seed {seed})",
        )
        trainer.fit(module, datamodule=datamodule)
        baseline, _ = fit_baseline(replace(recipe, log_dir=None), teacher, labelled, seed, trainer.global_step)
        for name, model in (("student", student), ("baseline", baseline)):
            preds[name].append(predict(model, datamodule.test_dataloader(), recipe.task)[0])
    return preds
