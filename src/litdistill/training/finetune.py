"""Fit a teacher's task head on the labels first (``teacher_finetune``), cached by its inputs.

Task-specific distillation needs a competent teacher; a pretrained encoder has no task head. The
fine-tuned teacher is saved under ``paths.cache_dir`` keyed by a hash of everything that changes it,
so later runs and sweep trials load it instead of training it again.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from litdistill.core.conf import to_plain
from litdistill.core.io import canonical_json, sha256_text
from litdistill.losses import HardCE
from litdistill.models.loading import load_pretrained
from litdistill.models.multi_teacher import MultiTeacher
from litdistill.models.saving import export_student
from litdistill.training.module import DistillationModule
from litdistill.training.optim import adamw, warmup_decay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneJob:
    """One teacher's fine-tuning on the labels: the schedule, where the result is cached, how it loads.

    ``load_float``: for a quantized teacher, a float copy loaded from the same source (packed 8/4-bit
    weights cannot be trained); it is fine-tuned and cached in float, then loaded back quantized.
    """

    max_steps: int
    lr: float
    warmup_ratio: float
    cache_dir: Path  # <cache>/teachers/<finetune_key>
    task: str
    seed: int
    dtype: str = "float32"
    quantization: str | None = None
    load_float: Callable[[], nn.Module] | None = None
    max_epochs: int | None = None  # set: epochs over the labelled rows instead of max_steps

    @property
    def cached(self) -> bool:
        """A fine-tuned teacher is already saved under ``cache_dir``."""
        return (Path(self.cache_dir) / "config.json").is_file()


def finetune_key(parts: Mapping[str, Any]) -> str:
    """The fine-tuned teacher's cache key: a hash of what decides its weights (teacher, schedule, data,
    task, tokenizer, seed), given as plain values."""
    return sha256_text(canonical_json({k: to_plain(v) for k, v in parts.items()}))[:16]


def check_layer_maps(
    losses: dict[str, Any], teacher: Any, make_student: Callable[[nn.Module | None], nn.Module] | None
) -> None:
    """Resolve the layer maps of the configured losses before ``teacher_finetune`` spends its steps.

    A layer map (HiddenStateLoss, AttentionLoss: anything with ``layer_map``) is otherwise checked only
    when the distillation module is built, after fine-tuning. Fine-tuning changes no layer counts, so
    copies of those losses are set up against the teacher as loaded and the configured student (built
    here and discarded; the run's own is built after fine-tuning, from the fine-tuned teacher). The RNG
    state is restored, so the run is unchanged; only a bad map (or student config) fails sooner.
    """
    mapped = [loss for loss in losses.values() if hasattr(loss, "layer_map")]
    if not mapped or make_student is None:
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):  # a from_config student seeds the RNG
        student = make_student(teacher)
        for loss in mapped:
            copy.deepcopy(loss).setup(student, teacher)
    del student


def finetuned_teacher(
    teacher: nn.Module, job: FinetuneJob, datamodule: L.LightningDataModule, trainer_factory: Any
) -> nn.Module:
    """Return the cached fine-tuned teacher, or fine-tune ``teacher`` on the labels and cache it.

    The random state after this call is the same whether the cache was hit or not: the fine-tuning runs
    from ``job.seed`` and the caller reseeds the next stage, so a cold and a warm cache give one student.
    """
    cache = Path(job.cache_dir)
    if not job.cached:
        if job.quantization and job.load_float is not None:
            del teacher
            teacher = job.load_float()
        length = f"{job.max_epochs} epochs" if job.max_epochs else f"{job.max_steps} steps"
        log.info("fine-tuning the teacher for %s (cached afterwards in %s)", length, cache)
        L.seed_everything(job.seed, workers=True)
        module = DistillationModule(
            teacher,
            None,
            {"ce": HardCE()},
            optimizer=adamw(job.lr),
            scheduler=partial(warmup_decay, warmup_ratio=job.warmup_ratio),
            task=job.task,
        )
        trainer = trainer_factory(
            max_steps=-1 if job.max_epochs else job.max_steps,
            max_epochs=job.max_epochs or -1,
            enable_checkpointing=False,
            stage="teacher fine-tune",
            logger=False,
            callbacks=[],
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(module, datamodule=datamodule)
        if trainer.is_global_zero:
            export_student(teacher, datamodule.tokenizer, cache)
        trainer.strategy.barrier()  # every rank may read the cache next
        if not job.quantization:
            teacher.requires_grad_(False)
            return teacher.eval()
    log.info("loading fine-tuned teacher from %s", cache)
    model = load_pretrained(str(cache), task=job.task, dtype=job.dtype, quantization=job.quantization)
    model.requires_grad_(False)
    return model.eval()


def finetune_members(
    teacher: MultiTeacher, jobs: Mapping[str, FinetuneJob], datamodule: Any, trainer_factory: Any
) -> MultiTeacher:
    """``teacher_finetune`` for a MultiTeacher: each teacher is fine-tuned on the labels (all the
    training data) and cached by its own config, exactly as a single teacher would be."""
    for name in teacher.names:
        teacher.teachers[name] = finetuned_teacher(teacher.teachers[name], jobs[name], datamodule, trainer_factory)
    teacher.requires_grad_(False)
    return teacher.eval()
