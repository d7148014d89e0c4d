"""Stage 2, teacher: load it, fine-tune it on the labels, and run it once into the offline cache.

Every check that can fail runs before the step it protects: the vocabulary before the load, a
quantized source for a layer-cut student and the layer maps before the fine-tuning steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
from torch import nn

from litdistill.cache.run import TeacherCacheRun
from litdistill.models.compatibility import check_tokenizers, check_vocabulary_covers
from litdistill.models.layer_subset import check_cut
from litdistill.models.loading import load_tokenizer
from litdistill.pipeline.outline import teacher_validation
from litdistill.training.ddp_launch import start_ranks
from litdistill.training.finetune import FinetuneJob, check_layer_maps, finetune_members, finetuned_teacher
from litdistill.training.strategies import leave_process_group

StudentCut = tuple[list[int] | None, int | None]  # a layer-cut student's (layers, every)


def load_teacher(
    load: Callable[[], nn.Module], source: str | None, data_tokenizer, student_cut: StudentCut | None
) -> nn.Module:
    """The frozen teacher, checked before any step is spent on it: ``source`` (its hub name or folder)
    against the data tokenizer before it loads; then its embedding against the data's ids, and, for a
    student cut from its layers (``student_cut``: the student's ``layers`` and ``every``), that cut
    against its depth and its weights (packed 8/4-bit blocks cannot be copied into a student)."""
    if source:
        check_tokenizers(load_tokenizer(source), data_tokenizer)
    teacher = load()
    primary = getattr(teacher, "primary_model", teacher)
    check_vocabulary_covers(primary, data_tokenizer, "teacher")
    if student_cut is not None:
        check_cut(primary, *student_cut)
    return teacher


def finetune_teacher(
    teacher: nn.Module,
    jobs: FinetuneJob | Mapping[str, FinetuneJob],
    datamodule: L.LightningDataModule,
    make_trainer: Callable[..., L.Trainer],
    losses: Mapping[str, Any],
    make_student: Callable[[nn.Module | None], nn.Module] | None,
    task: str,
) -> tuple[nn.Module, dict[str, float] | None]:
    """``teacher_finetune``: fit the teacher (each member of several, by name) on the labels, cached by
    config. The losses' layer maps are resolved against the student first: a bad map fails before any step.
    Returns the teacher and, for one teacher, its validation score, logged the moment it is ready."""
    check_layer_maps(dict(losses), teacher, make_student)
    if isinstance(jobs, Mapping):
        return finetune_members(teacher, jobs, datamodule, make_trainer), None
    teacher = finetuned_teacher(teacher, jobs, datamodule, make_trainer)
    return teacher, teacher_validation(teacher, datamodule, task)


def run_cache(
    cache: TeacherCacheRun, teacher: nn.Module | None, make_trainer: Callable[..., L.Trainer]
) -> L.LightningDataModule | None:
    """Build the store when this run loaded the teacher for it; then the data module that reads it.

    None for ``cache=build``: the store is written and nothing is trained. Under DDP the ranks start
    before the build, and each builds its own shards on its own device.
    """
    device = None
    if teacher is not None:
        builder = make_trainer(logger=False, callbacks=[], enable_checkpointing=False)
        start_ranks(builder)
        device = builder.strategy.root_device
    cached = cache.prepare(teacher, device)
    if cached is None:
        leave_process_group()  # every rank: a multirun's next job starts its own ranks
    return cached
