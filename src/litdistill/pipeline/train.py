"""The training entry: ``train(cfg)`` lists the stages and wires them.

check -> data -> teacher (load, fine-tune, cache) -> student -> fit -> baseline -> export -> evaluate
-> report. Each stage is a function of its own module in this package and takes objects and plain
values; :func:`litdistill.pipeline.builders.plan_run` turns the config into those (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from litdistill.cache.run import teacher_cache
from litdistill.config.checks import check_config
from litdistill.pipeline.builders import plan_run
from litdistill.pipeline.data import check_student_source, labelled_only, llm_labels_teacher, load_data
from litdistill.pipeline.evaluate import evaluate_models
from litdistill.pipeline.export import export
from litdistill.pipeline.fit import fit, fit_baseline, student_weights, unsharded_models
from litdistill.pipeline.outline import StageClock, log_outline
from litdistill.pipeline.report import write_outputs
from litdistill.pipeline.seeds import extra_seeds, repeat_over_seeds
from litdistill.pipeline.student import build_student, distillation_module, losses_for
from litdistill.pipeline.teacher import finetune_teacher, load_teacher, run_cache
from litdistill.reporting.tracking import log_run
from litdistill.training.ddp_launch import pin_hydra_run_dir
from litdistill.training.strategies import gather_full_student, leave_process_group


def train(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)  # types, ranges, strategy, precision: refused before any data or model is loaded
    pin_hydra_run_dir()  # DDP children re-run this job in this job's directory
    plan = plan_run(cfg)  # losses, factories, typed settings, the checkpoint to resume from; nothing loaded
    L.seed_everything(plan.seed, workers=True)
    clock = StageClock()  # each stage's wall seconds, for the report
    datamodule = load_data(plan.make_datamodule)  # 1. data, read and checked, with its transfer set
    labelled = labelled_only(datamodule)  # its labelled train rows: the teacher's fine-tune, the baseline
    labels_teacher = llm_labels_teacher(datamodule, plan.teacher_target)  # data.teacher_labels: an LLM taught
    cache = teacher_cache(plan.cache, plan.losses, datamodule)  # cache=build|use|auto (docs/caching.md)
    check_student_source(plan.student_source, plan.data_tokenizer_source, datamodule)
    has_teacher = plan.load_teacher is not None or labels_teacher is not None  # what each stage will do, first:
    log_outline(datamodule, plan.resolved["trainer"], plan.finetune, has_teacher, plan.baseline, plan.report.seeds)
    clock.lap("data")
    teacher, teacher_score = None, None
    if plan.load_teacher and (cache is None or cache.needs_teacher):  # 2. teacher: load, fine-tune
        teacher = load_teacher(plan.load_teacher, plan.teacher_source, datamodule.tokenizer, plan.student_cut)
        if plan.finetune is not None:
            teacher, teacher_score = finetune_teacher(  # and its validation score, printed at once
                teacher, plan.finetune, labelled, plan.make_trainer, plan.losses, plan.make_student, plan.task
            )
    if cache is not None:  # 3. teacher cache: build the store, then read it in place of the teacher
        datamodule, teacher = run_cache(cache, teacher, plan.make_trainer), None
        if datamodule is None:  # cache=build: the store is written; nothing is trained
            return {"teacher_cache": cache.summary()}
    clock.lap("teacher")
    L.seed_everything(plan.seed, workers=True)  # the student starts alike, whatever the teacher stage drew
    teaches = teacher if teacher is not None else cache.teacher if cache is not None else labels_teacher
    student = build_student(plan.make_student, teacher, cache, plan.task, plan.gradient_checkpointing)  # 4.
    module = distillation_module(
        student, teaches, losses_for(plan.losses, teaches is not None), plan.optimizers, plan.task
    )
    trainer = plan.make_trainer()
    fit(trainer, module, datamodule, plan.ckpt_path, teacher, plan.teacher_placement)  # 5. fit
    weights = student_weights(trainer, module, plan.export.checkpoint)  # export.checkpoint=last|best
    clock.lap("student")
    baseline, steps = None, {"student": trainer.global_step}
    if plan.baseline and teaches is not None:  # 6. the same student on the labels alone, as many steps
        baseline, steps["baseline"] = fit_baseline(plan.recipe, teacher, labelled, plan.seed, trainer.global_step)
    seed_preds = None
    if plan.report.seeds > 1 and baseline is not None:  # 6b. more seeds: the difference gets an interval
        seeds = extra_seeds(plan.seed, plan.report.seeds)
        seed_preds = repeat_over_seeds(plan.recipe, seeds, teacher, teaches, cache, datamodule, labelled)
    clock.lap("baseline")  # and the seeds
    full_student = gather_full_student(trainer)  # FSDP: every rank takes part; None for other strategies
    if not trainer.is_global_zero:
        return {}
    leave_process_group()  # rank 0 evaluates alone: no metric may wait for the other ranks
    if full_student is not None:  # FSDP sharded the models in place: plain ones for export and report
        teacher, student = unsharded_models(plan.load_teacher, plan.make_student, full_student)
    models = {k: m for k, m in {"teacher": teacher, "student": student, "baseline": baseline}.items() if m is not None}
    formats = export(student, datamodule, plan.out_dir, plan.task, plan.export, plan.report.threads, baseline)  # 7.
    report = evaluate_models(
        models, datamodule, plan.task, plan.report, plan.out_dir, steps, plan.predictions, seed_preds, formats
    )  # 8. evaluate: the models and the exported formats, timed side by side
    clock.lap("evaluate")  # and export
    report.update(student_weights=weights, stage_seconds=clock.seconds, teacher_validation=teacher_score)
    write_outputs(report, plan.out_dir, trainer, OmegaConf.to_yaml(plan.resolved), plan.report.plots)  # 9. report
    log_run(trainer, report, plan.out_dir, plan.resolved, plan.log_model)  # W&B: config, report, figures, student
    return report
