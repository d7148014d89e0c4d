"""Text-classification data from local files, the ADE corpus reader, and column errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from litdistill.data import TextClassificationDataModule
from litdistill.data.ade import prepare_ade_splits, read_ade_corpus

SHARED_ADE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ade_corpus_v2"
ROWS = [
    {"sentence": f"Patient {i} developed rash after drug {i}." if i % 2 else f"Drug {i} treated asthma.", "y": i % 2}
    for i in range(40)
]


def _write(tmp_path: Path, fmt: str) -> dict[str, str]:
    files = {}
    for split, rows in (("train", ROWS[:24]), ("validation", ROWS[24:32]), ("test", ROWS[32:])):
        path = tmp_path / f"{split}.{fmt}"
        df = pd.DataFrame(rows)
        if fmt == "csv":
            df.to_csv(path, index=False)
        elif fmt == "tsv":
            df.to_csv(path, index=False, sep="\t")
        elif fmt == "jsonl":
            path.write_text("\n".join(json.dumps(r) for r in rows))
        else:
            df.to_parquet(path)
        files[split] = str(path)
    return files


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_local_files_load_tokenize_and_batch(fmt, tmp_path, tokenizer_dir):
    dm = TextClassificationDataModule(
        tokenizer_dir,
        data_files=_write(tmp_path, fmt),
        text_column="sentence",
        label_column="y",
        batch_size=4,
        max_length=16,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 16
    assert set(batch["labels"].tolist()) <= {0, 1}
    assert len(dm.splits["test"]) == 8


def test_a_source_split_named_dev_is_read_as_validation_when_mapped(tmp_path, tokenizer_dir):
    files = _write(tmp_path, "csv")
    files = {"train": files["train"], "dev": files["validation"], "test": files["test"]}
    n_dev = len(pd.read_csv(files["dev"]))
    unmapped = TextClassificationDataModule(tokenizer_dir, data_files=files, text_column="sentence", label_column="y")
    unmapped.setup("fit")  # no "validation" in the source: train is re-split, the dev file is never read
    mapped = TextClassificationDataModule(
        tokenizer_dir, data_files=files, text_column="sentence", label_column="y", split_names={"validation": "dev"}
    )
    mapped.setup("fit")
    assert len(mapped.splits["validation"]) == n_dev and len(mapped.splits["train"]) == len(pd.read_csv(files["train"]))
    assert len(unmapped.splits["train"]) < len(mapped.splits["train"])
    bad = TextClassificationDataModule(
        tokenizer_dir, data_files=files, text_column="sentence", label_column="y", split_names={"validation": "valid"}
    )
    with pytest.raises(
        ValueError,
        match=r"split_names=\{'validation': 'valid'\}.*source's splits \['dev', 'test', 'train'\] \(missing "
        r"\['valid'\]\)",
    ):
        bad.setup("fit")


@pytest.mark.parametrize(
    ("columns", "missing"),
    [
        ({"text_column": "text", "label_column": "y"}, "text"),
        ({"text_column": "sentence", "label_column": "label"}, "label"),
    ],
)
def test_missing_column_names_the_columns_present(columns, missing, tmp_path, tokenizer_dir):
    dm = TextClassificationDataModule(tokenizer_dir, data_files=_write(tmp_path, "csv"), **columns)
    with pytest.raises(
        ValueError,
        match=rf"column\(s\) \['{missing}'\] not in the data \('train' split\); "
        r"columns present: \['sentence', 'y'\]",
    ):
        dm.setup("fit")


def test_a_column_missing_from_one_local_file_names_that_split(tmp_path, tokenizer_dir):
    """Files of one format are loaded with shared columns: the column a split's file lacks comes back all null."""
    files = _write(tmp_path, "csv")
    pd.DataFrame(ROWS[24:32]).drop(columns="y").to_csv(files["validation"], index=False)
    dm = TextClassificationDataModule(tokenizer_dir, data_files=files, text_column="sentence", label_column="y")
    with pytest.raises(
        ValueError, match=r"\['y'\] not in the data \('validation' split\); columns present: \['sentence'\]"
    ):
        dm.setup("fit")


def test_a_column_missing_from_one_hub_split_names_that_split(monkeypatch, tokenizer_dir):
    """Hub datasets may give each split its own columns (e.g. a test split without labels)."""
    from datasets import Dataset, DatasetDict

    splits = DatasetDict(
        train=Dataset.from_list(ROWS[:24]),
        validation=Dataset.from_list(ROWS[24:32]),
        test=Dataset.from_list([{"sentence": r["sentence"]} for r in ROWS[32:]]),
    )
    monkeypatch.setattr("litdistill.data.classification.load_splits", lambda *args: splits)
    dm = TextClassificationDataModule(
        tokenizer_dir, dataset="some/hub-dataset", text_column="sentence", label_column="y"
    )
    with pytest.raises(ValueError, match=r"\['y'\] not in the data \('test' split\); columns present: \['sentence'\]"):
        dm.setup("fit")


def test_labels_out_of_range_are_refused(tmp_path, tokenizer_dir):
    dm = TextClassificationDataModule(
        tokenizer_dir, data_files=_write(tmp_path, "csv"), text_column="sentence", label_column="y", num_labels=1
    )
    with pytest.raises(ValueError, match="outside 0..0"):
        dm.setup("fit")


def test_single_split_source_is_deduplicated_and_split_without_leakage(tmp_path, tokenizer_dir):
    """The ADE hub dataset's shape: one train split with repeated sentences (one per drug-effect pair)."""
    rows = [{"text": f"sentence {i % 50}", "label": int(i % 50 < 10)} for i in range(120)]
    path = tmp_path / "ade_like.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = TextClassificationDataModule(
        tokenizer_dir, data_files={"train": str(path)}, val_fraction=0.2, test_fraction=0.2
    )
    raw = dm.raw_splits()
    sets = {s: set(raw[s]["text"]) for s in raw}
    assert sum(len(v) for v in sets.values()) == 50
    assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"] or sets["validation"] & sets["test"])


@pytest.mark.parametrize("rule", ["first", "max"])
def test_duplicated_sentence_with_conflicting_labels_keeps_the_configured_label(tmp_path, tokenizer_dir, rule):
    """The hub ADE set lists a few sentences as both ADE and not; data=ade lets the positive win (max)."""
    rows = [{"text": f"sentence {i}", "label": i % 2} for i in range(40)] + [{"text": "sentence 0", "label": 1}]
    path = tmp_path / "conflict.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = TextClassificationDataModule(tokenizer_dir, data_files={"train": str(path)}, duplicate_label=rule)
    raw = dm.raw_splits()
    found = [(t, y) for s in raw for t, y in zip(raw[s]["text"], raw[s]["label"]) if t == "sentence 0"]
    assert found == [("sentence 0", 0 if rule == "first" else 1)]
    assert sum(len(raw[s]) for s in raw) == 40


def test_unknown_duplicate_label_rule_is_refused(tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match=r"data.duplicate_label='last'; valid: \['first', 'max'\]"):
        TextClassificationDataModule(tokenizer_dir, data_files={"train": "x.jsonl"}, duplicate_label="last")


def test_ade_config_reads_a_file_of_the_hub_schema(tmp_path, compose_train):
    """data=ade keeps the real hub name; offline it is pointed at a local file of the same schema."""
    cfg = compose_train(["data=ade"])
    assert (
        cfg.data.dataset == "ade-benchmark-corpus/ade_corpus_v2" and cfg.data.subset == "Ade_corpus_v2_classification"
    )
    assert cfg.data.duplicate_label == "max"  # as the raw-corpus reader: a sentence annotated ADE anywhere is ADE
    path = tmp_path / "ade.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"text": f"Drug {i} caused rash." if i % 3 else f"Drug {i} helped.", "label": int(i % 3 > 0)})
            for i in range(60)
        )
    )
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, dataset=None, subset=None, data_files={"train": str(path)})
    dm.setup("fit")
    assert len(dm.splits["train"]) + len(dm.splits["validation"]) + len(dm.splits["test"]) == 60


def _write_ade_corpus(root: Path) -> None:
    root.mkdir()
    (root / "DRUG-AE.rel").write_text(
        "1|Aspirin caused bleeding.|bleeding|0|1|Aspirin|0|1\n1|Aspirin caused bleeding.|bleeding|0|1|aspirin|0|1\n"
        "2|Lithium induced tremor.|tremor|0|1|Lithium|0|1\n"
    )
    (root / "ADE-NEG.txt").write_text(
        "3 NEG Metformin treats diabetes.\n4 NEG Metformin treats diabetes.\n5 NEG Lithium induced tremor.\n6 NEG "
        "Heparin was given.\n"
    )


def test_ade_reader_dedupes_and_positive_wins(tmp_path):
    _write_ade_corpus(tmp_path / "corpus")
    rows = dict(read_ade_corpus(str(tmp_path / "corpus")))
    assert rows == {
        "Aspirin caused bleeding.": 1,
        "Lithium induced tremor.": 1,
        "Metformin treats diabetes.": 0,
        "Heparin was given.": 0,
    }


def test_ade_reader_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="DRUG-AE.rel"):
        read_ade_corpus(str(tmp_path))


@pytest.mark.skipif(not SHARED_ADE.is_dir(), reason="real ADE corpus not beside the checkout")
def test_real_ade_corpus_splits_have_no_shared_sentence(tmp_path):
    files = prepare_ade_splits(str(SHARED_ADE), str(tmp_path / "splits"))
    texts = {s: set(pd.read_csv(p, keep_default_na=False)["text"]) for s, p in files.items()}
    assert sum(len(t) for t in texts.values()) == 20896
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["validation"])
    labels = pd.read_csv(files["train"])["label"]
    assert 0.15 < labels.mean() < 0.25  # about 4,271 of 20,896 sentences are adverse events
