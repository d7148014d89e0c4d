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
from litdistill.models.compatibility import check_tokenizers
from litdistill.models.layer_subset import refuse_quantized_source
from litdistill.models.loading import load_tokenizer
from litdistill.training.ddp_launch import start_ranks
from litdistill.training.finetune import FinetuneJob, check_layer_maps, finetune_members, finetuned_teacher
from litdistill.training.strategies import leave_process_group


def load_teacher(load: Callable[[], nn.Module], source: str | None, data_tokenizer, cuts_layers: bool) -> nn.Module:
    """The frozen teacher. ``source`` (its hub name or folder) is checked against the data tokenizer first."""
    if source:  # a vocabulary mismatch fails before any model loads
        check_tokenizers(load_tokenizer(source), data_tokenizer)
    teacher = load()
    if cuts_layers:  # a student cut from packed 8/4-bit layers would train on garbage
        refuse_quantized_source(getattr(teacher, "primary_model", teacher))
    return teacher


def finetune_teacher(
    teacher: nn.Module,
    jobs: FinetuneJob | Mapping[str, FinetuneJob],
    datamodule: L.LightningDataModule,
    make_trainer: Callable[..., L.Trainer],
    losses: Mapping[str, Any],
    make_student: Callable[[nn.Module | None], nn.Module] | None,
) -> nn.Module:
    """``teacher_finetune``: fit the teacher (each member of several, by name) on the labels, cached by
    config. The losses' layer maps are resolved against the student first: a bad map fails before any step."""
    check_layer_maps(dict(losses), teacher, make_student)
    if isinstance(jobs, Mapping):
        return finetune_members(teacher, jobs, datamodule, make_trainer)
    return finetuned_teacher(teacher, jobs, datamodule, make_trainer)


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
