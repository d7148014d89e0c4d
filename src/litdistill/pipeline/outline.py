"""The run's first screen and its stage clock.

Before the first long stage a user sees what each stage will do and how big it is (the rows, the
teacher's fine-tuning or its cache, the student's steps); the teacher's validation score is printed as
soon as the teacher exists, so a teacher that learnt nothing shows in the first minutes, not in the
final report. The clock records each stage's wall time for ``report.json`` (``stage_seconds``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from litdistill.reporting.evaluation import majority_class_rate, num_classes, predict, score
from litdistill.training.finetune import FinetuneJob

log = logging.getLogger(__name__)


def split_sizes(datamodule: L.LightningDataModule) -> dict[str, int]:
    """Rows per split of a set-up data module (``splits``), empty when it keeps none."""
    splits = getattr(datamodule, "splits", None) or {}
    return {name: len(ds) for name, ds in splits.items()}


def student_steps(trainer_settings: dict[str, Any], train_rows: int, batch_size: int) -> str:
    """The student's length as configured: ``max_steps``, or epochs and the optimizer steps they make
    (one process; DDP divides them by the world size)."""
    max_steps = trainer_settings.get("max_steps") or -1
    if max_steps > 0:
        return f"{max_steps} optimizer steps"
    epochs = trainer_settings.get("max_epochs") or 1
    limit = trainer_settings.get("limit_train_batches")
    batches = math.ceil(train_rows / max(batch_size, 1))
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        batches = min(batches, limit)
    elif isinstance(limit, float) and 0 < limit < 1:
        batches = int(batches * limit)
    steps = epochs * math.ceil(batches / max(trainer_settings.get("accumulate_grad_batches") or 1, 1))
    return f"{epochs} epoch{'s' * (epochs != 1)} (~{steps} optimizer steps of {batch_size} rows)"


def teacher_line(finetune: FinetuneJob | dict[str, FinetuneJob] | None, labelled: int | None) -> str:
    if finetune is None:
        return "used as it is (teacher_finetune=null)"
    jobs = finetune if isinstance(finetune, dict) else {"": finetune}
    parts = []
    for name, job in jobs.items():
        who = f"{name}: " if name else ""
        if job.cached:
            parts.append(f"{who}loaded from the fine-tune cache ({job.cache_dir})")
            continue
        length = f"{job.max_epochs} epochs" if job.max_epochs else f"{job.max_steps} steps"
        on = f" on the {labelled:,} labelled rows" if labelled is not None else ""
        parts.append(f"{who}fine-tuned for {length}{on}, then cached ({job.cache_dir})")
    return "; ".join(parts)


@rank_zero_only
def say(message: str) -> None:
    """One line in the run's log (console and cli.log), from rank 0 only."""
    log.info(message)


def log_outline(
    datamodule: L.LightningDataModule,
    trainer_settings: dict[str, Any],
    finetune: FinetuneJob | dict[str, FinetuneJob] | None,
    has_teacher: bool,
    baseline: bool,
    seeds: int,
) -> None:
    """What the run will do, stage by stage, logged before its first long stage."""
    sizes = split_sizes(datamodule)
    counts = getattr(datamodule, "transfer_counts", None)
    train = f"train {sizes.get('train', 0):,} rows"
    if counts is not None and counts.total > counts.labelled:
        train += f" ({counts.labelled:,} labelled, {counts.total - counts.labelled:,} taught by the teacher alone)"
    data = ", ".join([train] + [f"{s} {n:,}" for s, n in sizes.items() if s != "train"])
    batch = int(getattr(datamodule, "hparams", {}).get("batch_size") or 0)
    length = student_steps(trainer_settings, sizes.get("train", 0), batch) if batch else "as configured"
    lines = [f"data: {data}"]
    if has_teacher:
        lines.append("teacher: " + teacher_line(finetune, counts.labelled if counts else None))
    lines.append(f"student: {'distilled' if has_teacher else 'trained on the labels'} for {length}")
    if baseline and has_teacher:
        lines.append("baseline: the same student on the labelled rows alone, as many steps")
    if seeds > 1 and baseline and has_teacher:
        lines.append(f"seeds: student and baseline again under {seeds - 1} more seeds (report.seeds={seeds})")
    lines.append("then: export, the test split scored, CPU speed timed, report.md")
    say("the run, stage by stage:\n  " + "\n  ".join(lines))


def teacher_validation(teacher: nn.Module, datamodule: L.LightningDataModule, task: str) -> dict[str, float]:
    """The teacher's score on the validation split, logged the moment the teacher is ready."""
    preds, labels, mean_nll = predict(teacher, datamodule.val_dataloader(), task)
    values = score(preds, labels, task, num_classes(teacher, task), mean_nll)
    shown = ", ".join(f"{k} {v:.3f}" if v < 100 else f"{k} {v:,.0f}" for k, v in values.items())
    if task == "classification":
        majority = values["majority_class_rate"] = majority_class_rate(labels)
        shown += f" (majority class {majority:.3f})"
    say(f"teacher ready: validation {shown}")
    return values


class StageClock:
    """Wall seconds per stage: ``lap(name)`` closes the stage that began at the previous lap."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self.last, 1)
        self.last = now
