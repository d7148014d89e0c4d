"""Stage 6, export: the student as a plain Hugging Face folder, and the deployment formats asked for."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from litdistill.config.schema import ExportConfig, ReportConfig
from litdistill.models.export_formats import export_formats
from litdistill.models.saving import export_student


def export(
    student: nn.Module,
    datamodule: L.LightningDataModule,
    out_dir: Path,
    task: str,
    formats: ExportConfig,
    timing: ReportConfig,
    baseline: nn.Module | None = None,
) -> dict[str, Any] | None:
    """``student/`` (weights, config, tokenizer), and ``baseline/`` too with ``export.baseline=true``;
    then ONNX / int8 when ``formats`` asks, each reloaded, compared with the student on
    ``formats.check_batches`` test batches and timed like the report's rows. Returns the formats'
    rows, or None when neither format is on."""
    export_student(student, datamodule.tokenizer, out_dir / "student")
    if formats.baseline and baseline is not None:
        export_student(baseline, datamodule.tokenizer, out_dir / "baseline")
    if not (formats.onnx or formats.int8):
        return None
    batches = list(islice(datamodule.test_dataloader(), formats.check_batches))
    return export_formats(
        student,
        batches,
        out_dir,
        task=task,
        onnx=formats.onnx,
        int8=formats.int8,
        threads=timing.threads,
        repeats=timing.repeats,
        speed=timing.speed,
        opset=formats.opset,
        hf_dir=out_dir / "student",
    )
