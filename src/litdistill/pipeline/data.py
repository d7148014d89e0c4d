"""Stage 1, data: the data module, read and checked before any model is loaded."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch import nn

from litdistill.models.compatibility import check_student_tokenizer


def load_data(make_datamodule: Callable[[], L.LightningDataModule]) -> L.LightningDataModule:
    """Build the data module and read its fit splits now: a missing column or file fails here."""
    datamodule = make_datamodule()
    datamodule.setup("fit")
    return datamodule


def check_student_source(student_source: str | None, data_tokenizer_source: str | None, datamodule) -> None:
    """A pretrained student reads the data's ids: its tokenizer must be the data's, checked before any load."""
    if student_source and str(student_source) != str(data_tokenizer_source):
        check_student_tokenizer(str(student_source), datamodule.tokenizer)


def llm_labels_teacher(datamodule: L.LightningDataModule, teacher_configured: str | None) -> nn.Module | None:
    """With ``data.teacher_labels`` the teacher is the LLM that labelled the data: no teacher model may be
    configured too. Soft labels give a weightless stand-in (the probabilities travel in the batches)."""
    if not getattr(datamodule, "teacher_label_counts", None):
        return None
    if teacher_configured:
        raise ValueError(
            "data.teacher_labels makes the LLM that wrote the labels the teacher, but teacher="
            f"{teacher_configured} is set too; add teacher=null"
        )
    return datamodule.labels_teacher


def labelled_only(datamodule: L.LightningDataModule) -> L.LightningDataModule:
    """The data module restricted to its labelled train rows (a transfer set's other rows have only the
    teacher's targets): what the teacher is fine-tuned on and the labels-only baseline trains on."""
    view = getattr(datamodule, "labelled_only", None)
    return view() if view is not None else datamodule
