"""The transfer set: text the teacher labels beyond the labelled rows.

Distillation pays off when the teacher scores far more text than the labels cover (DistilBERT's corpus,
TinyBERT's augmented set, an LLM labelling unlabelled PubMed sentences). The train split becomes

    labelled rows (label in 0..C-1)  +  rows whose label is hidden (``label_fraction`` < 1)
                                     +  unlabelled text (``data.unlabeled``)
                                     +  augmented copies of the labelled text (``augment=...``)

where every row without a label carries :data:`UNLABELLED` (-100): the soft-target losses use every
row, hard CE only the labelled ones (``HardCE``; exact across accumulation and ranks through
``num_labelled_in_step``, see :mod:`litdistill.data.token_counts`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_dataset

from litdistill.data.files import load_split_file

UNLABELLED = -100
FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt")
GENERATED = "dataset.jsonl"  # a `litdistill generate` output directory's dataset
GENERATED_TEXT = "response"  # ... and the column its generated text is in


@dataclass(frozen=True)
class TransferCounts:
    """Rows of the train split by where their target comes from (the report shows them)."""

    labelled: int
    hidden_labels: int  # labelled in the source, label hidden by data.label_fraction
    unlabeled: int  # from data.unlabeled
    augmented: int  # from augment=...

    @property
    def total(self) -> int:
        return self.labelled + self.hidden_labels + self.unlabeled + self.augmented

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def check_label_fraction(fraction: float) -> float:
    """``data.label_fraction`` must be in (0, 1]: the share of the train split that keeps its label."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(
            f"data.label_fraction={fraction!r}: must be a number in (0, 1], the share of the train split "
            "that keeps its label (1.0: all of it; 0.1: one row in ten, the rest becomes unlabelled text)"
        )
    return float(fraction)


def hide_labels(ds: Dataset, label_column: str, fraction: float, seed: int) -> Dataset:
    """``ds`` with all but ``round(fraction * len(ds))`` labels set to :data:`UNLABELLED`.

    The kept rows are a seeded sample (``seed``: the data's own seed, so every run seed and the
    labels-only baseline see the same labelled rows); the text of the others stays as transfer text.
    """
    check_label_fraction(fraction)
    if fraction == 1:
        return ds
    keep = max(1, round(fraction * len(ds)))
    kept = set(random.Random(seed).sample(range(len(ds)), keep))
    labels = [label if i in kept else UNLABELLED for i, label in enumerate(ds[label_column])]
    return ds.remove_columns(label_column).add_column(label_column, labels)


def unlabeled_sources(value: Any) -> list[str]:
    """``data.unlabeled`` as a list: one source or several (files, generate output dirs, hub names)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        sources = [str(v) for v in value]
    except TypeError:
        sources = []
    if not sources:
        raise ValueError(
            f"data.unlabeled={value!r}: give a file, a `litdistill generate` output directory, a hub dataset "
            "name, or a list of them"
        )
    return sources


def load_unlabeled(source: str, text_column: str | None, columns: dict[str, str], split: str = "train") -> Dataset:
    """One unlabelled source, its columns renamed to the data's (``columns``: the data's name -> the
    source's, the text column first; the source's text column defaults to the data's own).

    * a file (``.csv .tsv .json .jsonl .parquet``, or ``.txt``: one text a line);
    * a ``litdistill generate`` output directory (its ``dataset.jsonl``, text in ``response``): LLM
      paraphrases, or any generated text;
    * otherwise a hub dataset name, ``split`` of it.

    ``text_column``: ``data.unlabeled_text_column``, the source's text column where it differs from the
    data's. An empty source, or one without a wanted column, is refused naming the source and the
    columns it has. Empty texts are dropped.
    """
    where = f"data.unlabeled={source}"
    path = Path(source).expanduser()
    wanted = dict(columns)
    ours_text = next(iter(wanted))
    if path.is_dir():
        path = path / GENERATED
        wanted[ours_text] = text_column or GENERATED_TEXT
        if not path.is_file():
            raise FileNotFoundError(f"{where}: a directory without {GENERATED} (not a `litdistill generate` output)")
    elif text_column:
        wanted[ours_text] = text_column
    ds = _read(path, source, split, where)
    missing = [theirs for theirs in wanted.values() if theirs not in ds.column_names]
    if missing:
        raise ValueError(
            f"{where}: no column {missing} (columns: {ds.column_names}); set data.unlabeled_text_column "
            "to the column holding the text"
        )
    ds = ds.select_columns(list(wanted.values())).rename_columns(
        {theirs: ours for ours, theirs in wanted.items() if theirs != ours}
    )
    ds = ds.filter(lambda row: isinstance(row[ours_text], str) and bool(row[ours_text].strip()))
    if len(ds) == 0:
        raise ValueError(f"{where}: column {wanted[ours_text]!r} holds no text (no non-empty row)")
    return ds


def _read(path: Path, source: str, split: str, where: str) -> Dataset:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no such file")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{where}: the file is empty")
        return Dataset.from_dict({"text": lines})
    if suffix in FILE_SUFFIXES:
        return load_split_file("unlabeled", str(path), key="data.unlabeled")
    if path.exists():
        raise ValueError(f"{where}: unknown file type {suffix!r}; valid: {list(FILE_SUFFIXES)}")
    return load_dataset(source, split=split)  # a hub dataset name


def with_unlabelled_rows(train: Dataset, rows: Dataset, label_column: str) -> Dataset:
    """``train`` followed by ``rows`` (the same columns but the label), labelled :data:`UNLABELLED`."""
    if len(rows) == 0:
        return train
    missing = [c for c in train.column_names if c != label_column and c not in rows.column_names]
    if missing:
        raise ValueError(f"unlabelled rows lack the train split's column(s) {missing}")
    rows = rows.select_columns([c for c in train.column_names if c != label_column])
    rows = rows.add_column(label_column, [UNLABELLED] * len(rows)).cast(train.features)
    return concatenate_datasets([train, rows])
