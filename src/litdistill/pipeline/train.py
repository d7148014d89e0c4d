"""The training entry: instantiate what the config names, wire it, fit, export, report."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from litdistill.cache.run import teacher_cache
from litdistill.core.io import atomic_write_text
from litdistill.losses import DistillationLoss, HardCE
from litdistill.models.compatibility import (
    check_output_spaces,
    check_student_tokenizer,
    check_tokenizers,
)
from litdistill.models.export_formats import export_configured
from litdistill.models.layer_subset import refuse_quantized_source
from litdistill.models.loading import count_parameters, load_tokenizer, memory_footprint
from litdistill.models.multi_teacher import MultiTeacher
from litdistill.models.saving import export_student, weights_on_disk_mb
from litdistill.reporting.evaluation import agreement_rate, cpu_speeds, predict, score
from litdistill.reporting.plots import report_figures
from litdistill.reporting.report import (
    multi_teacher_memory,
    summarize,
    to_markdown,
    write_report,
)
from litdistill.reporting.tracking import log_run
from litdistill.training.checkpointing import AtomicCheckpointIO
from litdistill.training.fault_tolerance import resume_checkpoint
from litdistill.training.finetune import check_layer_maps, finetune_members, finetuned_teacher
from litdistill.training.module import DistillationModule
from litdistill.training.safe_logger import guard_logger
from litdistill.training.strategies import (
    configure_strategy,
    enable_gradient_checkpointing,
    gather_full_student,
    leave_process_group,
    pin_hydra_run_dir,
    start_ranks,
    unsharded_models,
    validate_scaling,
)

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
        kwargs["logger"] = [guard_logger(instantiate(lg)) for lg in (cfg.get("logger") or {}).values() if lg] or False
    return instantiate(cfg.trainer, **kwargs)


def train(cfg: DictConfig) -> dict[str, Any]:
    validate_scaling(cfg)  # strategy, precision: refused before any data or model is loaded
    pin_hydra_run_dir()  # DDP children re-run this job in this job's directory
    ckpt_path = resume_checkpoint(cfg)  # ckpt_path=, or resume=true: the run dir's last checkpoint
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    losses = build_losses(cfg.loss)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # reads and validates the data before any model is loaded
    trainer_factory = partial(build_trainer, cfg)

    labels_teacher = llm_labels_teacher(cfg, datamodule)  # data.teacher_labels=...: an LLM's labels are the teacher
    cache = teacher_cache(cfg, losses, datamodule)  # cache=build|use|auto, None for none (docs/caching.md)
    loads_teacher = bool(cfg.get("teacher")) and (cache is None or cache.needs_teacher)
    if loads_teacher and cfg.teacher.get("name_or_path"):  # a vocabulary mismatch fails before any model loads
        check_tokenizers(load_tokenizer(cfg.teacher.name_or_path), datamodule.tokenizer)
    student_source = OmegaConf.select(cfg, "student.name_or_path", default=None, throw_on_missing=False)
    if student_source and str(student_source) != str(cfg.get("tokenizer")):  # a pretrained student reads the data's ids
        check_student_tokenizer(str(student_source), datamodule.tokenizer)
    teacher = instantiate(cfg.teacher) if loads_teacher else None
    if teacher is not None and _cuts_teacher_layers(cfg.get("student")):  # before any fine-tuning step
        refuse_quantized_source(getattr(teacher, "primary_model", teacher))
    if teacher is not None and cfg.get("teacher_finetune"):
        check_layer_maps(cfg, losses, teacher)  # a bad layer map fails before the fine-tuning steps
        finetune = finetune_members if isinstance(teacher, MultiTeacher) else finetuned_teacher
        teacher = finetune(cfg, teacher, datamodule, trainer_factory)
    if cache is not None:  # builds the store when this run loaded the teacher for it; training then reads it
        device = None
        if teacher is not None:  # DDP: start the ranks before the build, each builds its own shards on its device
            builder = trainer_factory(logger=False, callbacks=[], enable_checkpointing=False)
            start_ranks(builder)
            device = builder.strategy.root_device
        cached_datamodule = cache.prepare(teacher, device)
        if cached_datamodule is None:  # cache=build: the store is written; nothing is trained
            leave_process_group()  # every rank: a multirun's next job starts its own ranks
            return {"teacher_cache": cache.summary()}
        datamodule, teacher = cached_datamodule, None
    batch_teacher = cache.teacher if cache is not None else labels_teacher  # its outputs arrive in the batches
    student = instantiate(cfg.student)(teacher=getattr(teacher, "primary_model", teacher))  # MultiTeacher: its primary
    if cfg.get("student_gradient_checkpointing"):
        enable_gradient_checkpointing(student)
    if teacher is not None:
        check_output_spaces(teacher, student, cfg.task)
    elif cache is not None:
        cache.check_student(student)  # label count / vocabulary size against the cached outputs
    elif batch_teacher is None and any(loss.uses_teacher for loss in losses.values()):
        losses = {name: loss for name, loss in losses.items() if not loss.uses_teacher} or {"ce": HardCE()}
        log.info("teacher=null: training on labels alone with losses %s", list(losses))

    module = DistillationModule(
        student,
        teacher if teacher is not None else batch_teacher,
        losses,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        task=cfg.task,
    )
    trainer = trainer_factory()
    configure_strategy(trainer, student, teacher, cfg.get("teacher_placement", "shard"))
    # weights_only=False: the checkpoint holds the DataModule's OmegaConf hparams; it is this run's own (or the user's)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)

    baseline = None
    if cfg.get("baseline") and (teacher is not None or batch_teacher is not None):
        log.info("training the no-distillation baseline (same student, same steps, labels only)")
        L.seed_everything(cfg.seed, workers=True)
        baseline = instantiate(cfg.student)(teacher=getattr(teacher, "primary_model", teacher))
        baseline_module = DistillationModule(
            baseline,
            None,
            {"ce": HardCE()},
            optimizer=instantiate(cfg.optimizer),
            scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            task=cfg.task,
        )
        trainer_factory(logger=False, callbacks=[], enable_checkpointing=False).fit(
            baseline_module, datamodule=datamodule
        )

    full_student = gather_full_student(trainer)  # FSDP: every rank takes part; None for other strategies
    if not trainer.is_global_zero:
        return {}
    leave_process_group()  # rank 0 evaluates alone: no metric may wait for the other ranks
    if full_student is not None:  # FSDP sharded the models in place: plain ones for export and report
        teacher, student = unsharded_models(cfg, full_student)
    export_student(student, datamodule.tokenizer, out_dir / "student")
    models = {"teacher": teacher, "student": student, "baseline": baseline}
    report = evaluate_models({k: m for k, m in models.items() if m is not None}, datamodule, cfg)
    exports = export_configured(cfg, student, datamodule, out_dir)  # export.onnx / export.int8
    if exports:
        report["exports"] = exports
    if (cfg.get("report") or {}).get("plots", True):
        report["figures"] = report_figures(report, out_dir, trainer)
    write_report(report, out_dir)
    # resolved: the teacher's real path, the run's real directories (Hydra's .hydra/config.yaml keeps the ${...})
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))
    print(to_markdown(report))
    log_run(trainer, cfg, report, out_dir, resolved)  # W&B: config, report table, figures, student artifact
    return report


def _cuts_teacher_layers(student_cfg: DictConfig | None) -> bool:
    return bool(student_cfg) and str(student_cfg.get("_target_", "")).endswith("student_from_teacher")


def evaluate_models(
    models: dict[str, torch.nn.Module], datamodule: L.LightningDataModule, cfg: DictConfig
) -> dict[str, Any]:
    """Test-split metrics, agreement with the teacher, and CPU speed at equal threads and inputs."""
    task, threads = cfg.task, cfg.report.threads
    loader = datamodule.test_dataloader()
    example = next(iter(loader))
    rows, preds = {}, {}
    labels = None
    for name, model in tqdm(models.items(), desc="evaluating on the test split", unit="model"):
        preds[name], labels, mean_nll = predict(model, loader, task)
        num_labels = model.config.num_labels if task == "classification" else model.config.vocab_size
        row = {
            "params_m": count_parameters(model) / 1e6,
            "size_mb": memory_footprint(model) / 2**20,
            "metrics": score(preds[name], labels, task, num_labels, mean_nll),
        }
        if cfg.report.get("disk_size", True):
            row["disk_mb"] = weights_on_disk_mb(model, cfg.paths.output_dir)
        rows[name] = row
    if cfg.report.speed:
        timed = {name: model.cpu() for name, model in models.items() if not getattr(model, "is_quantized", False)}
        for name, speed in cpu_speeds(timed, example, threads, repeats=cfg.report.repeats).items():
            rows[name].update(speed)
    llm_labels = getattr(datamodule, "teacher_test_labels", None)
    if llm_labels is not None:  # the LLM teacher's own labels of the test sentences, scored like a model
        preds["teacher"], teacher_row = llm_label_row(
            llm_labels, labels, models["student"].config.num_labels, datamodule
        )
        rows = {"teacher": teacher_row, **rows}
    agreement = agreement_rate(preds["student"], preds["teacher"], labels, task) if "teacher" in preds else None
    if "teacher" in preds and "baseline" in preds:
        rows["baseline"]["agreement"] = agreement_rate(preds["baseline"], preds["teacher"], labels, task)
    majority = (
        float(torch.bincount(labels[labels != -100]).max() / (labels != -100).sum())
        if task == "classification"
        else None
    )
    return summarize(
        rows,
        cfg.report.metric,
        agreement,
        threads,
        {"majority_class_rate": majority, "task": task, **multi_teacher_memory(models.get("teacher"))},
    )


def llm_labels_teacher(cfg: DictConfig, datamodule: L.LightningDataModule) -> torch.nn.Module | None:
    """With ``data.teacher_labels`` the teacher is an LLM that labelled the data: no teacher model may be
    configured too. Soft labels give a weightless stand-in (the probabilities travel in the batches)."""
    if not getattr(datamodule, "teacher_label_counts", None):
        return None
    if cfg.get("teacher"):
        raise ValueError(
            "data.teacher_labels makes the LLM that wrote the labels the teacher, but teacher="
            f"{cfg.teacher.get('_target_', cfg.teacher)} is set too; add teacher=null"
        )
    return datamodule.labels_teacher


def llm_label_row(
    llm_labels: torch.Tensor, gold: torch.Tensor, num_labels: int, datamodule: L.LightningDataModule
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Report row of the LLM teacher: its labels of the test split against gold. A sentence it failed
    to label counts as wrong (scored as a class other than gold), so every model is scored on all rows."""
    missing = llm_labels < 0
    preds = torch.where(missing, (gold + 1) % num_labels, llm_labels)
    source = str(datamodule.hparams.teacher_labels)
    row = {
        "source": f"LLM labels ({teacher_model_name(source)}): {source}",
        "labelled_fraction": float((~missing).float().mean()),
        "train_rows": datamodule.teacher_label_counts,
        "metrics": score(preds, gold, "classification", num_labels),
    }
    return preds, row


def teacher_model_name(source: str) -> str:
    """The model named in the generation run's manifest, or "unknown model" without one."""
    path = Path(source)
    manifest = (path if path.is_dir() else path.parent) / "manifest.json"
    try:
        return str(json.loads(manifest.read_text(encoding="utf-8")).get("model") or "unknown model")
    except (OSError, ValueError):
        return "unknown model"
