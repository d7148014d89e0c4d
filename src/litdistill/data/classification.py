"""Text-classification data: a hub dataset by name or local CSV/TSV/JSONL/Parquet files."""

from __future__ import annotations

import copy
import logging
from typing import Any

import lightning as L
from datasets import Dataset, DatasetDict
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from litdistill.core.outputs import TeacherOutputsInBatch
from litdistill.data.augment import Augmenter, augmented_texts
from litdistill.data.files import load_splits
from litdistill.data.resumable import ResumableTrainOrder
from litdistill.data.teacher_labels import (
    LABEL_TYPES,
    TEACHER_LOGITS,
    read_teacher_labels,
    relabel,
    teacher_predictions,
)
from litdistill.data.token_counts import labelled_rows, step_counted
from litdistill.data.transfer import (
    UNLABELLED,
    TransferCounts,
    check_label_fraction,
    hide_labels,
    load_unlabeled,
    unlabeled_sources,
    with_unlabelled_rows,
)
from litdistill.models.loading import load_tokenizer

SPLITS = ("train", "validation", "test")
log = logging.getLogger(__name__)


def rename_splits(raw: DatasetDict, split_names: dict[str, str] | None) -> DatasetDict:
    """The source's splits under litdistill's names: ``{"validation": "dev"}`` reads its ``dev`` split
    as validation. Without the mapping a hub set whose held-out split is ``dev`` would be ignored."""
    if not split_names:
        return raw
    names = dict(split_names)
    bad = [ours for ours in names if ours not in SPLITS]
    missing = [theirs for theirs in names.values() if theirs not in raw]
    if bad or missing:
        raise ValueError(
            f"data.split_names={names}: keys must be among {list(SPLITS)} (got {bad or 'ok'}), "
            f"values among the source's splits {sorted(raw)} (missing {missing or 'none'})"
        )
    renamed = {ours: raw[theirs] for ours, theirs in names.items()}
    kept = {
        split: ds
        for split, ds in raw.items()
        if split in SPLITS and split not in renamed and split not in names.values()
    }
    return DatasetDict({**kept, **renamed})


DUPLICATE_LABELS = ("first", "max")


def dedupe_and_split(
    ds: Dataset,
    text_column: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    label_column: str = "label",
    duplicate_label: str = "first",
) -> DatasetDict:
    """One split into train/validation/test with no sentence in two splits.

    A sentence listed more than once keeps its first row; ``duplicate_label="max"`` gives that row
    the largest label of all its copies (ADE: a sentence annotated with an adverse event anywhere
    is positive, as the raw-corpus reader :mod:`litdistill.data.ade` decides).
    """
    if duplicate_label not in DUPLICATE_LABELS:
        raise ValueError(f"data.duplicate_label={duplicate_label!r}; valid: {list(DUPLICATE_LABELS)}")
    first: dict[str, int] = {}  # text -> kept row
    labels = list(ds[label_column]) if duplicate_label == "max" else []  # SFT sources have no label column
    for i, text in enumerate(ds[text_column]):
        kept = first.setdefault(text, i)
        if labels and kept != i:
            labels[kept] = max(labels[kept], labels[i])
    keep = sorted(first.values())
    ds = ds.select(keep)
    if duplicate_label == "max":
        ds = ds.remove_columns(label_column).add_column(label_column, [labels[i] for i in keep])
    held_out = ds.train_test_split(test_size=val_fraction + test_fraction, seed=seed)
    val_test = held_out["test"].train_test_split(test_size=test_fraction / (val_fraction + test_fraction), seed=seed)
    return DatasetDict(train=held_out["train"], validation=val_test["train"], test=val_test["test"])


class TextClassificationDataModule(ResumableTrainOrder, L.LightningDataModule):
    """Tokenised text-classification splits with dynamic padding.

    Without a validation split in the source (the ADE hub dataset has only ``train``), the train
    split is de-duplicated and split into train/validation/test so no sentence leaks across.
    """

    def __init__(
        self,
        tokenizer: str,
        dataset: str | None = None,
        subset: str | None = None,
        revision: str | None = None,
        data_files: dict[str, str] | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        num_labels: int = 2,
        label_names: list[str] | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        route_column: str | None = None,
        route_values: list[Any] | None = None,
        route_field: str = "teacher_id",
        teacher_labels: str | None = None,
        teacher_label_type: str = "hard",
        split_names: dict[str, str] | None = None,
        duplicate_label: str = "first",
        unlabeled: str | list[str] | None = None,
        unlabeled_text_column: str | None = None,
        unlabeled_split: str = "train",
        label_fraction: float = 1.0,
        augment: Augmenter | None = None,
        augment_cache_dir: str | None = None,
    ) -> None:
        """``route_column`` (multi-teacher routing, see litdistill.models.multi_teacher): each example's value of
        this column becomes ``batch[route_field]``, the index of the value in ``route_values`` (without
        ``route_values`` the column must already hold int ids).

        ``teacher_labels``: a ``litdistill generate`` output (directory or JSONL) whose labels replace
        the train split's (``teacher_label_type`` hard, or soft: the probabilities too, as
        ``teacher_logits``); see litdistill.data.teacher_labels.

        ``split_names``: the source's name for a split, where it is not train/validation/test
        (``{"validation": "dev"}``).

        ``duplicate_label``: for a source without a validation split, which label a sentence listed
        more than once keeps when de-duplicated: ``first`` or ``max`` (see :func:`dedupe_and_split`).

        The transfer set (:mod:`litdistill.data.transfer`), rows the teacher's soft targets teach and hard
        CE skips: ``label_fraction`` keeps the labels of that share of the train split (a seeded sample,
        ``seed``) and hides the rest; ``unlabeled`` adds text (files, ``litdistill generate`` output
        directories, hub dataset names; ``unlabeled_text_column``: their text column where it is not
        ``text_column``; ``unlabeled_split``: a hub set's split); ``augment`` adds variants of the
        labelled sentences (:mod:`litdistill.data.augment`, cached under ``augment_cache_dir``)."""
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["augment"])
        check_label_fraction(label_fraction)
        self.sources = unlabeled_sources(unlabeled)
        self.augment = augment or None  # an empty `augment=none` node is no augmentation
        if text_pair_column and (self.sources or self.augment):
            raise ValueError(
                f"data.text_pair_column={text_pair_column}: sentence pairs cannot take unlabelled or augmented "
                "rows yet; drop data.unlabeled / augment, or data.label_fraction for label-scarce runs"
            )
        if duplicate_label not in DUPLICATE_LABELS:
            raise ValueError(f"data.duplicate_label={duplicate_label!r}; valid: {list(DUPLICATE_LABELS)}")
        if teacher_label_type not in LABEL_TYPES:
            raise ValueError(f"data.teacher_label_type={teacher_label_type!r}; valid types: {list(LABEL_TYPES)}")
        self.tokenizer = load_tokenizer(tokenizer)
        self.route_ids = route_ids(route_column, route_values)
        self.splits: DatasetDict | None = None
        self.teacher_test_labels: Tensor | None = None  # the LLM's label per test row, -1 where none
        self.teacher_label_counts: dict[str, int] | None = None
        self.transfer_counts: TransferCounts | None = None  # the train rows by target source
        self._raw: DatasetDict | None = None

    @property
    def num_labels(self) -> int:
        return self.hparams.num_labels

    def raw_splits(self) -> DatasetDict:
        """Untokenised train/validation/test, validated, the transfer set added to train; what reports and
        caches fingerprint (built once)."""
        if self._raw is None:
            self._raw = self._read_raw()
        return self._raw

    def _read_raw(self) -> DatasetDict:
        h = self.hparams
        raw = rename_splits(load_splits(h.dataset, h.data_files, h.subset, h.revision), h.split_names)
        check_columns(raw, [c for c in (h.text_column, h.text_pair_column, h.label_column, h.route_column) if c])
        if "validation" not in raw:
            raw = dedupe_and_split(
                raw["train"], h.text_column, h.val_fraction, h.test_fraction, h.seed, h.label_column, h.duplicate_label
            )
        raw = DatasetDict(
            {
                s: _head(raw[s], h.max_train_examples if s == "train" else h.max_eval_examples)
                for s in SPLITS
                if s in raw
            }
        )
        self._check_labels(raw)
        raw = DatasetDict({**raw, "train": self._with_transfer_set(raw["train"])})
        if h.teacher_labels:
            raw = self._use_teacher_labels(raw)
        return raw

    def _with_transfer_set(self, train: Dataset) -> Dataset:
        """The train split with hidden labels, unlabelled text and augmented sentences (counted)."""
        h = self.hparams
        source_rows = len(train)
        train = hide_labels(train, h.label_column, h.label_fraction, h.seed)
        labelled = [i for i, label in enumerate(train[h.label_column]) if label != UNLABELLED]
        augmented = self._augmented(train.select(labelled))
        columns = {h.text_column: h.text_column, **({h.route_column: h.route_column} if h.route_column else {})}
        unlabeled = [load_unlabeled(s, h.unlabeled_text_column, columns, h.unlabeled_split) for s in self.sources]
        for rows in [augmented, *unlabeled]:
            train = with_unlabelled_rows(train, rows, h.label_column)
        self.transfer_counts = TransferCounts(
            labelled=len(labelled),
            hidden_labels=source_rows - len(labelled),
            unlabeled=sum(len(rows) for rows in unlabeled),
            augmented=len(augmented),
        )
        if self.transfer_counts.total > len(labelled):
            log.info("train split: %s", self.transfer_counts.as_dict())
        return train

    def _augmented(self, labelled: Dataset) -> Dataset:
        """Variants of the labelled sentences (other columns copied from their source row), no label."""
        h = self.hparams
        columns = [c for c in labelled.column_names if c != h.label_column]
        if self.augment is None:
            return Dataset.from_dict({c: [] for c in columns})
        self.augment.check_tokenizer(self.tokenizer)
        made = augmented_texts(self.augment, labelled[h.text_column], h.seed, h.augment_cache_dir)
        sources = labelled.select([i for i, _ in made])  # each variant's source row, for its other columns
        columns = {c: list(sources[c]) for c in columns if c != h.text_column}
        return Dataset.from_dict({h.text_column: [text for _, text in made], **columns})

    def labelled_only(self) -> TextClassificationDataModule:
        """This data module with only the labelled train rows: what the teacher is fine-tuned on and the
        labels-only baseline trains on. ``self`` when every train row has a label."""
        counts = self.transfer_counts
        if counts is None or counts.total == counts.labelled:
            return self
        view = copy.copy(self)
        view.__dict__.pop("_resume_slot", None)  # its own training order state
        view._train_sampler = None
        labels = self.raw_splits()["train"][self.hparams.label_column]
        keep = [i for i, label in enumerate(labels) if label != UNLABELLED]
        view.splits = DatasetDict({**self.splits, "train": self.splits["train"].select(keep)})
        return view

    def _use_teacher_labels(self, raw: DatasetDict) -> DatasetDict:
        h = self.hparams
        labels = read_teacher_labels(h.teacher_labels, self.num_labels)
        train, self.teacher_label_counts = relabel(
            raw["train"], labels, h.text_column, h.label_column, h.teacher_label_type, "train"
        )
        if "test" in raw:
            self.teacher_test_labels = teacher_predictions(raw["test"], labels, h.text_column)
        log.info(
            "teacher labels from %s: %d train rows relabelled, %d without a teacher label dropped",
            h.teacher_labels,
            self.teacher_label_counts["kept"],
            self.teacher_label_counts["dropped"],
        )
        return DatasetDict({**raw, "train": train})

    @property
    def labels_teacher(self) -> TeacherOutputsInBatch | None:
        """The teacher's stand-in when soft teacher labels travel in the train batches, else None."""
        h = self.hparams
        if h.teacher_labels and h.teacher_label_type == "soft":
            return TeacherOutputsInBatch(f"the soft labels in {h.teacher_labels}", ["train"])
        return None

    def _check_labels(self, raw: DatasetDict) -> None:
        labels = set(raw["train"][self.hparams.label_column]) - {UNLABELLED}  # -100: a row without a label
        bad = sorted(x for x in labels if not isinstance(x, int) or not 0 <= x < self.num_labels)
        if bad:
            raise ValueError(
                f"labels {bad[:5]} outside 0..{self.num_labels - 1}; set data.num_labels or map the labels"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        h = self.hparams
        raw = self.raw_splits()

        def tokenize(rows: dict[str, list[Any]]) -> dict[str, Any]:
            pair = rows[h.text_pair_column] if h.text_pair_column else None
            encoded = self.tokenizer(rows[h.text_column], pair, truncation=True, max_length=h.max_length)
            encoded["labels"] = rows[h.label_column]
            if TEACHER_LOGITS in rows:  # soft teacher labels (train split only)
                encoded[TEACHER_LOGITS] = rows[TEACHER_LOGITS]
            if h.route_column:
                encoded[h.route_field] = [self.route_ids(value) for value in rows[h.route_column]]
            return encoded

        self.splits = DatasetDict(
            {
                split: ds.map(tokenize, batched=True, remove_columns=ds.column_names, desc="tokenizing")
                for split, ds in raw.items()
            }
        )
        self.splits.set_format("torch")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        h = self.hparams
        # training order: a function of (seed, epoch) that a mid-epoch resume reproduces (data/resumable.py)
        return DataLoader(
            self.splits[split],
            batch_size=h.batch_size if shuffle else (h.eval_batch_size or h.batch_size),
            sampler=self.train_sampler(self.splits[split], h.batch_size) if shuffle else None,
            collate_fn=DataCollatorWithPadding(self.tokenizer),
            num_workers=h.num_workers,
            generator=self.loader_generator(),
        )

    def train_dataloader(self) -> Any:
        # with accumulation or several ranks: the step's example and labelled-row counts (exact means)
        return step_counted(self._loader("train", shuffle=True), self.trainer, labelled_rows)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def check_columns(raw: DatasetDict, wanted: list[str]) -> None:
    """Refuse, naming the split, a split that lacks a configured column, before anything is tokenised.

    Local files of one format are loaded with their columns unified, so a column absent from one
    split's file comes back filled with nulls: a column with only nulls counts as missing too.
    """
    for split, ds in raw.items():
        present = [c for c in ds.column_names if len(ds) == 0 or ds.data.column(c).null_count < len(ds)]
        missing = [c for c in wanted if c not in present]
        if missing:
            raise ValueError(f"column(s) {missing} not in the data ({split!r} split); columns present: {present}")


def route_ids(column: str | None, values: list[Any] | None) -> Any:
    """value -> route id: its index in ``values``, or the value itself (an int) without ``values``."""
    index = {v: i for i, v in enumerate(values)} if values is not None else None
    if values is not None and len(index) != len(values):
        raise ValueError(f"route_values must not repeat, got {list(values)}")

    def to_id(value: Any) -> int:
        if index is None:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
            raise ValueError(
                f"route column {column!r} holds {value!r}; give route_values (the values in route-id order) "
                "or int ids >= 0"
            )
        if value not in index:
            raise ValueError(f"route column {column!r} holds {value!r}, not in route_values {list(values)}")
        return index[value]

    return to_id


def _head(ds: Dataset, n: int | None) -> Dataset:
    return ds if n is None or n >= len(ds) else ds.select(range(n))
