"""The training entry: ``train(cfg)`` lists the stages and wires them; it is the one place that reads ``cfg``.

data -> teacher (load, fine-tune, cache) -> student -> fit -> baseline -> evaluate -> export -> report.
Each stage is a function of its own module in this package and takes objects and plain values; the
builders (:mod:`litdistill.pipeline.builders`) turn config nodes into those objects.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from litdistill.cache.run import teacher_cache
from litdistill.config.checks import check_config
from litdistill.config.schema import ExportConfig, ReportConfig
from litdistill.pipeline.builders import (
    build_losses,
    cuts_teacher_layers,
    optimizer_factories,
    student_factory,
    trainer_factory,
)
from litdistill.pipeline.data import check_student_source, llm_labels_teacher, load_data
from litdistill.pipeline.evaluate import evaluate_models
from litdistill.pipeline.export import export
from litdistill.pipeline.fit import fit, fit_baseline
from litdistill.pipeline.report import write_outputs
from litdistill.pipeline.student import build_student, distillation_module, losses_for
from litdistill.pipeline.teacher import finetune_teacher, load_teacher, run_cache
from litdistill.reporting.tracking import log_run
from litdistill.training.fault_tolerance import resume_checkpoint
from litdistill.training.finetune import check_layer_maps, finetune_members, finetuned_teacher
from litdistill.training.strategies import gather_full_student, leave_process_group, pin_hydra_run_dir


def train(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)  # types, ranges, strategy, precision: refused before any data or model is loaded
    pin_hydra_run_dir()  # DDP children re-run this job in this job's directory
    ckpt_path = resume_checkpoint(cfg)  # ckpt_path=, or resume=true: the run dir's last checkpoint
    L.seed_everything(cfg.seed, workers=True)
    out_dir, task = Path(cfg.paths.output_dir), cfg.task
    losses, optimizers = build_losses(cfg.loss), optimizer_factories(cfg)
    make_trainer, make_student = trainer_factory(cfg), student_factory(cfg)
    report_cfg, export_cfg = _typed(cfg.get("report"), ReportConfig), _typed(cfg.get("export"), ExportConfig)

    datamodule = load_data(partial(instantiate, cfg.data))  # 1. data, read and checked
    labels_teacher = llm_labels_teacher(datamodule, (cfg.get("teacher") or {}).get("_target_"))
    cache = teacher_cache(cfg, losses, datamodule)  # cache=build|use|auto, None for none (docs/caching.md)
    check_student_source(OmegaConf.select(cfg, "student.name_or_path", default=None), cfg.get("tokenizer"), datamodule)
    teacher = None
    if cfg.get("teacher") and (cache is None or cache.needs_teacher):  # 2. teacher: load, fine-tune
        source = cfg.teacher.get("name_or_path")
        teacher = load_teacher(
            partial(instantiate, cfg.teacher),
            source,
            datamodule.tokenizer,
            cuts_layers=cuts_teacher_layers(cfg.get("student")),
        )
        if cfg.get("teacher_finetune"):
            tune = finetune_members if hasattr(teacher, "teachers") else finetuned_teacher
            teacher = finetune_teacher(
                teacher, lambda t: tune(cfg, t, datamodule, make_trainer), lambda t: check_layer_maps(cfg, losses, t)
            )
    if cache is not None:  # 3. teacher cache: build the store, or read it in place of the teacher
        datamodule, teacher = run_cache(cache, teacher, make_trainer), None
        if datamodule is None:  # cache=build: the store is written; nothing is trained
            return {"teacher_cache": cache.summary()}
    batch_teacher = cache.teacher if cache is not None else labels_teacher  # its outputs arrive in the batches
    teaches = teacher if teacher is not None else batch_teacher
    student = build_student(make_student, teacher, cache, task, bool(cfg.get("student_gradient_checkpointing")))
    module = distillation_module(student, teaches, losses_for(losses, teaches is not None), optimizers, task)
    trainer = make_trainer()
    fit(trainer, module, datamodule, ckpt_path, teacher, cfg.get("teacher_placement", "shard"))  # 4. fit
    baseline = None
    if cfg.get("baseline") and teaches is not None:  # 5. the same student on the labels alone
        baseline = fit_baseline(make_student, teacher, datamodule, make_trainer, optimizers, task, cfg.seed)

    full_student = gather_full_student(trainer)  # FSDP: every rank takes part; None for other strategies
    if not trainer.is_global_zero:
        return {}
    leave_process_group()  # rank 0 evaluates alone: no metric may wait for the other ranks
    if full_student is not None:  # FSDP sharded the models in place: plain ones for export and report
        teacher = instantiate(cfg.teacher) if cfg.get("teacher") else None
        student = make_student(teacher)
        student.load_state_dict(full_student)
    models = {k: m for k, m in {"teacher": teacher, "student": student, "baseline": baseline}.items() if m is not None}
    report = evaluate_models(models, datamodule, task, report_cfg, out_dir)  # 6. evaluate
    exports = export(student, datamodule, out_dir, task, export_cfg, report_cfg)  # 7. export
    report.update({"exports": exports} if exports else {})
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    write_outputs(report, out_dir, trainer, OmegaConf.to_yaml(resolved), report_cfg.plots)  # 8. report
    log_run(trainer, cfg, report, out_dir, resolved)  # W&B: config, report table, figures, student artifact
    return report


def _typed(node: DictConfig | None, schema: type) -> Any:
    """A typed node as its dataclass (the schema's defaults when the node is absent)."""
    return OmegaConf.to_object(node) if node is not None else schema()
