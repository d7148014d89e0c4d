"""The training entry: instantiate what the config names, wire it, fit, export, report."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from litdistill.checkpointing import AtomicCheckpointIO
from litdistill.compat import check_output_spaces, check_tokenizers
from litdistill.evaluation import agreement_rate, cpu_speeds, predict, score
from litdistill.export import directory_size_mb, export_student
from litdistill.export_formats import export_configured
from litdistill.finetune import finetuned_teacher
from litdistill.io import atomic_write_text
from litdistill.losses import DistillationLoss, HardCE
from litdistill.models import count_parameters, load_tokenizer, memory_footprint
from litdistill.module import DistillationModule
from litdistill.plots import report_figures
from litdistill.report import summarize, to_markdown, write_report
from litdistill.tracking import log_run

log = logging.getLogger(__name__)


def build_losses(cfg: DictConfig | None) -> dict[str, DistillationLoss]:
    """Instantiate every loss term now, so bad values fail before any model is loaded."""
    losses = {name: instantiate(term) for name, term in (cfg or {}).items() if term is not None}
    if not losses:
        raise ValueError("no loss terms configured; pick one with loss=<name> (see conf/loss/)")
    return losses


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The configured Trainer; ``overrides`` replace config keys (used for the extra stages)."""
    kwargs = {"plugins": [AtomicCheckpointIO()], **overrides}
    if "callbacks" not in overrides:
        kwargs["callbacks"] = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if "logger" not in overrides:
        kwargs["logger"] = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg] or False
    return instantiate(cfg.trainer, **kwargs)


def train(cfg: DictConfig) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    losses = build_losses(cfg.loss)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # reads and validates the data before any model is loaded
    trainer_factory = partial(build_trainer, cfg)

    teacher = instantiate(cfg.teacher) if cfg.get("teacher") else None
    if teacher is not None and cfg.get("teacher_finetune"):
        teacher = finetuned_teacher(cfg, teacher, datamodule, trainer_factory)
    student = instantiate(cfg.student)(teacher=teacher)
    if teacher is not None:
        check_output_spaces(teacher, student, cfg.task)
        if cfg.teacher.get("name_or_path"):
            check_tokenizers(load_tokenizer(cfg.teacher.name_or_path), datamodule.tokenizer)
    elif any(loss.uses_teacher for loss in losses.values()):
        losses = {name: loss for name, loss in losses.items() if not loss.uses_teacher} or {"ce": HardCE()}
        log.info("teacher=null: training on labels alone with losses %s", list(losses))

    module = DistillationModule(student, teacher, losses, optimizer=instantiate(cfg.optimizer),
                                scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None, task=cfg.task)
    trainer = trainer_factory()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    baseline = None
    if cfg.get("baseline") and teacher is not None:
        log.info("training the no-distillation baseline (same student, same steps, labels only)")
        L.seed_everything(cfg.seed, workers=True)
        baseline = instantiate(cfg.student)(teacher=teacher)
        baseline_module = DistillationModule(baseline, None, {"ce": HardCE()}, optimizer=instantiate(cfg.optimizer),
                                             scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
                                             task=cfg.task)
        trainer_factory(logger=False, callbacks=[], enable_checkpointing=False).fit(baseline_module, datamodule=datamodule)

    if not trainer.is_global_zero:
        return {}
    export_dir = export_student(student, datamodule.tokenizer, out_dir / "student")
    models = {"teacher": teacher, "student": student, "baseline": baseline}
    report = evaluate_models({k: m for k, m in models.items() if m is not None}, datamodule, cfg)
    report["models"]["student"]["size_on_disk_mb"] = directory_size_mb(export_dir)
    exports = export_configured(cfg, student, datamodule, out_dir)  # export.onnx / export.int8
    if exports:
        report["exports"] = exports
    if (cfg.get("report") or {}).get("plots", True):
        report["figures"] = report_figures(report, out_dir, trainer)
    write_report(report, out_dir)
    atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    print(to_markdown(report))
    log_run(trainer, cfg, report, out_dir)  # W&B: config, report table, figures, student artifact
    return report


def evaluate_models(models: dict[str, torch.nn.Module], datamodule: L.LightningDataModule, cfg: DictConfig) -> dict[str, Any]:
    """Test-split metrics, agreement with the teacher, and CPU speed at equal threads and inputs."""
    task, threads = cfg.task, cfg.report.threads
    loader = datamodule.test_dataloader()
    example = next(iter(loader))
    rows, preds = {}, {}
    labels = None
    for name, model in models.items():
        preds[name], labels, mean_nll = predict(model, loader, task)
        num_labels = model.config.num_labels if task == "classification" else model.config.vocab_size
        row = {"params_m": count_parameters(model) / 1e6, "size_mb": memory_footprint(model) / 2**20,
               "metrics": score(preds[name], labels, task, num_labels, mean_nll)}
        rows[name] = row
    if cfg.report.speed:
        timed = {name: model.cpu() for name, model in models.items() if not getattr(model, "is_quantized", False)}
        for name, speed in cpu_speeds(timed, example, threads, repeats=cfg.report.repeats).items():
            rows[name].update(speed)
    agreement = agreement_rate(preds["student"], preds["teacher"], labels, task) if "teacher" in preds else None
    if "teacher" in preds and "baseline" in preds:
        rows["baseline"]["agreement"] = agreement_rate(preds["baseline"], preds["teacher"], labels, task)
    majority = float(torch.bincount(labels[labels != -100]).max() / (labels != -100).sum()) if task == "classification" else None
    return summarize(rows, cfg.report.metric, agreement, threads, {"majority_class_rate": majority, "task": task})
