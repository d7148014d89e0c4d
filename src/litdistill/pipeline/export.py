"""Stage 7, export: the student as a plain Hugging Face folder, and the deployment formats asked for."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import lightning as L
from torch import nn

from litdistill.config.schema import ExportConfig
from litdistill.models.export_formats import ExportedFormats, export_formats
from litdistill.models.saving import export_student


def export(
    student: nn.Module,
    datamodule: L.LightningDataModule,
    out_dir: Path,
    task: str,
    formats: ExportConfig,
    threads: int,
    baseline: nn.Module | None = None,
) -> ExportedFormats | None:
    """``student/`` (weights, config, tokenizer), and ``baseline/`` too with ``export.baseline=true``;
    then ONNX / int8 when ``formats`` asks, each reloaded and compared with the student on
    ``formats.check_batches`` test batches. Returns the formats, which the evaluate stage times beside
    the models (``threads``: the report's timing threads), or None when neither format is on."""
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
        threads=threads,
        opset=formats.opset,
        hf_dir=out_dir / "student",
    )
