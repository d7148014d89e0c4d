"""Stage 8, evaluate: every model on the test split, agreement with the teacher, CPU speed side by side
(the exported formats timed in the same rounds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from tqdm.auto import tqdm

from litdistill.config.schema import ReportConfig
from litdistill.core.io import atomic_write_csv
from litdistill.models.export_formats import ExportedFormats
from litdistill.models.loading import count_parameters, memory_footprint
from litdistill.models.saving import weights_on_disk_mb
from litdistill.reporting.evaluation import (
    agreement_rate,
    cpu_speeds,
    majority_class_rate,
    num_classes,
    predict,
    score,
)
from litdistill.reporting.intervals import paired_bootstrap
from litdistill.reporting.report import multi_teacher_memory, summarize


def evaluate_models(
    models: dict[str, nn.Module],
    datamodule: L.LightningDataModule,
    task: str,
    settings: ReportConfig,
    scratch_dir: str | Path,
    train_steps: dict[str, int] | None = None,
    predictions: Path | None = None,
    seed_preds: dict[str, list[Any]] | None = None,
    formats: ExportedFormats | None = None,
) -> dict[str, Any]:
    """Test-split metrics, agreement with the teacher, and CPU speed at equal threads and inputs.

    ``scratch_dir``: where each model's safetensors are written for the size-on-disk column;
    ``train_steps``: the optimizer steps each trained model took (student and baseline), shown per row;
    ``predictions``: a CSV written with every model's test predictions beside the labels (one row per
    example, or per counted token of a causal LM), so models can be re-scored and compared pairwise later;
    ``seed_preds``: the student's and baseline's test predictions under the extra seeds
    (``report.seeds``): the student-minus-baseline difference then gets its paired-bootstrap interval;
    ``formats``: the exported student formats (ONNX, int8), timed in the same interleaved rounds as the
    models (one timing method for every row the report shows), and reported as its ``exports`` section.
    """
    threads = settings.threads
    loader = datamodule.test_dataloader()
    example = next(iter(loader))
    rows, preds = {}, {}
    labels = None
    for name, model in tqdm(models.items(), desc="evaluating on the test split", unit="model"):
        preds[name], labels, mean_nll = predict(model, loader, task)
        num_labels = num_classes(model, task)
        row = {
            "params_m": count_parameters(model) / 1e6,
            "size_mb": memory_footprint(model) / 2**20,
            "metrics": score(preds[name], labels, task, num_labels, mean_nll),
        }
        if settings.disk_size:
            row["disk_mb"] = weights_on_disk_mb(model, scratch_dir)
        if train_steps and name in train_steps:
            row["train_steps"] = int(train_steps[name])
        rows[name] = row
    if settings.speed:
        timed = {name: model.cpu() for name, model in models.items() if not getattr(model, "is_quantized", False)}
        runners = {f"student ({fmt})": run for fmt, run in (formats.runners if formats else {}).items()}
        speeds = cpu_speeds(
            {**timed, **runners}, example, threads, repeats=settings.repeats, budget_s=settings.timing_budget_s
        )
        for name in timed:
            rows[name].update(speeds[name])
        if formats is not None:  # the pytorch format is the student; the others were timed beside it
            for fmt, row in formats.rows.items():
                row.update(speeds["student" if fmt == "pytorch" else f"student ({fmt})"])
    llm_labels = getattr(datamodule, "teacher_test_labels", None)
    if llm_labels is not None:  # the LLM teacher's own labels of the test sentences, scored like a model
        preds["teacher"], teacher_row = llm_label_row(
            llm_labels, labels, models["student"].config.num_labels, datamodule
        )
        rows = {"teacher": teacher_row, **rows}
    agreement = agreement_rate(preds["student"], preds["teacher"], labels, task) if "teacher" in preds else None
    if "teacher" in preds and "baseline" in preds:
        rows["baseline"]["agreement"] = agreement_rate(preds["baseline"], preds["teacher"], labels, task)
    if seed_preds:  # predictions.csv: the extra seeds' columns too, e.g. student_seed43
        for name in ("student", "baseline"):
            preds.update({f"{name}_seed{s}": p for s, p in zip(seed_preds["seeds"], seed_preds[name])})
    if predictions is not None:
        write_predictions(predictions, labels, preds)
    majority = majority_class_rate(labels) if task == "classification" else None
    transfer = getattr(datamodule, "transfer_counts", None)  # the train rows by target source
    report = summarize(
        rows,
        settings.metric,
        agreement,
        threads,
        {
            "majority_class_rate": majority,
            "task": task,
            **({"train_rows": transfer.as_dict()} if transfer is not None else {}),
            **multi_teacher_memory(models.get("teacher")),
        },
    )
    if formats is not None:
        report["exports"] = formats.section()
    if seed_preds:
        report["student_minus_baseline"] = seeds_difference(preds, seed_preds, labels, settings.metric, num_labels)
    return report


def seeds_difference(
    preds: dict[str, torch.Tensor],
    seed_preds: dict[str, list[Any]],
    labels: torch.Tensor,
    metric: str,
    num_labels: int,
) -> dict[str, Any]:
    """Student minus baseline over the run's seed and the extra ones, with the paired-bootstrap interval."""
    a = torch.stack([preds["student"], *seed_preds["student"]])  # [S, N]
    b = torch.stack([preds["baseline"], *seed_preds["baseline"]])  # [S, N]
    return paired_bootstrap(a, b, labels, metric, num_labels).as_dict()


def write_predictions(path: Path, labels: torch.Tensor, preds: dict[str, torch.Tensor]) -> Path:
    """``index,label,<model>...``: the counted positions only (labels -100 are left out)."""
    counted = (labels != -100).nonzero().flatten().tolist()
    names = list(preds)
    rows = [[i, int(labels[i]), *(int(preds[n][i]) for n in names)] for i in counted]
    return atomic_write_csv(path, ["index", "label", *names], rows)


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
