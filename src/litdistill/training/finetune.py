"""Fit a teacher's task head on the labels first (``teacher_finetune``), cached by its inputs.

Task-specific distillation needs a competent teacher; a pretrained encoder has no task head. The
fine-tuned teacher is saved under ``paths.cache_dir`` keyed by a hash of everything that changes it,
so later runs and sweep trials load it instead of training it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import PreTrainedModel

from litdistill.losses import HardCE
from litdistill.models.loading import load_pretrained
from litdistill.models.multi_teacher import MultiTeacher
from litdistill.models.saving import export_student
from litdistill.training.module import DistillationModule
from litdistill.training.optim import adamw, warmup_decay

log = logging.getLogger(__name__)


def finetune_key(cfg: DictConfig) -> str:
    resolved = {
        k: OmegaConf.select(cfg, k) for k in ("teacher", "teacher_finetune", "data", "task", "tokenizer", "seed")
    }
    parts = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in resolved.items()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_layer_maps(cfg: DictConfig, losses: dict[str, Any], teacher: Any) -> None:
    """Resolve the layer maps of the configured losses before ``teacher_finetune`` spends its steps.

    A layer map (HiddenStateLoss, AttentionLoss: anything with ``layer_map``) is otherwise checked only
    when the distillation module is built, after fine-tuning. Fine-tuning changes no layer counts, so
    copies of those losses are set up against the teacher as loaded and the configured student (built
    here and discarded; the run's own is built after fine-tuning, from the fine-tuned teacher). The RNG
    state is restored, so the run is unchanged; only a bad map (or student config) fails sooner.
    """
    mapped = [loss for loss in losses.values() if hasattr(loss, "layer_map")]
    if not mapped or not cfg.get("student"):
        return
    import copy

    import torch
    from hydra.utils import instantiate

    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):  # a from_config student seeds the RNG
        student = instantiate(cfg.student)(teacher=getattr(teacher, "primary_model", teacher))
        for loss in mapped:
            copy.deepcopy(loss).setup(student, teacher)
    del student


def finetuned_teacher(
    cfg: DictConfig, teacher: PreTrainedModel, datamodule: L.LightningDataModule, trainer_factory: Any
) -> PreTrainedModel:
    """Return the cached fine-tuned teacher, or fine-tune ``teacher`` on the labels and cache it.

    Packed 8-bit/4-bit weights cannot be trained: a quantized teacher (``teacher.quantization``) is
    fine-tuned as a float copy loaded from the same source, cached in float, and quantized as it is
    loaded back, so the distillation runs against the quantized model the config asked for.
    """
    spec = cfg.teacher_finetune
    cache = Path(cfg.paths.cache_dir) / "teachers" / finetune_key(cfg)
    quantization = cfg.teacher.get("quantization")
    if not (cache / "config.json").is_file():
        if quantization:
            from hydra.utils import instantiate

            del teacher
            teacher = instantiate(cfg.teacher, quantization=None)
        log.info("fine-tuning the teacher for %d steps (cached afterwards in %s)", spec.max_steps, cache)
        module = DistillationModule(
            teacher,
            None,
            {"ce": HardCE()},
            optimizer=adamw(spec.lr),
            scheduler=partial(warmup_decay, warmup_ratio=spec.get("warmup_ratio", 0.1)),
            task=cfg.task,
        )
        trainer = trainer_factory(
            max_steps=spec.max_steps,
            max_epochs=-1,
            enable_checkpointing=False,
            logger=False,
            callbacks=[],
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(module, datamodule=datamodule)
        if trainer.is_global_zero:
            export_student(teacher, datamodule.tokenizer, cache)
        trainer.strategy.barrier()  # every rank may read the cache next
        if not quantization:
            teacher.requires_grad_(False)
            return teacher.eval()
    log.info("loading fine-tuned teacher from %s", cache)
    model = load_pretrained(
        str(cache), task=cfg.task, dtype=cfg.teacher.get("dtype", "float32"), quantization=quantization
    )
    model.requires_grad_(False)
    return model.eval()


def finetune_members(cfg: Any, teacher: MultiTeacher, datamodule: Any, trainer_factory: Any) -> MultiTeacher:
    """``teacher_finetune`` for a MultiTeacher: each teacher is fine-tuned on the labels (all the
    training data) and cached by its own config, exactly as a single teacher would be."""

    for name in teacher.names:
        member_cfg = cfg.copy()
        with open_dict(member_cfg):
            member_cfg.teacher = cfg.teacher.teachers[name]
        teacher.teachers[name] = finetuned_teacher(member_cfg, teacher.teachers[name], datamodule, trainer_factory)
    teacher.requires_grad_(False)
    return teacher.eval()
