"""Bad data files are refused before any model loads, naming the split, the file and what is wrong."""

from __future__ import annotations

import pytest

from litdistill.data import TextClassificationDataModule


def _module(tmp_path, tokenizer_dir, **files):
    good = "text,label\nAspirin caused a rash.,1\nAspirin treated the fever.,0\n"
    paths = {}
    for split in ("train", "validation", "test"):
        path = tmp_path / f"{split}.csv"
        content = files.get(split, good)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        paths[split] = str(path)
    return TextClassificationDataModule(tokenizer=tokenizer_dir, data_files=paths, max_length=16, batch_size=2), paths


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"validation": "text\nAspirin caused a rash.\n"}, "column(s) ['label'] not in the data ('validation' split)"),
        ({"test": ""}, "data.data_files.test={test}: the file is empty"),
        ({"train": "text,label\n"}, "data.data_files.train={train}: the file has no rows (a header only?)"),
        (
            {"validation": b"text,label\ncaf\xe9 au lait,1\n"},
            "data.data_files.validation={validation}: not UTF-8 text (byte 14: b'\\xe9')",
        ),
    ],
    ids=["column-missing-in-one-split", "empty", "header-only", "latin-1"],
)
def test_a_bad_split_file_is_named(tmp_path, tokenizer_dir, files, message):
    module, paths = _module(tmp_path, tokenizer_dir, **files)
    with pytest.raises(ValueError) as error:
        module.setup("fit")
    assert message.format(**paths) in str(error.value)


def test_a_missing_file_names_the_key(tmp_path, tokenizer_dir):
    module, paths = _module(tmp_path, tokenizer_dir)
    (tmp_path / "train.csv").unlink()
    with pytest.raises(FileNotFoundError, match=f"data.data_files.train={paths['train']}: no such file"):
        module.setup("fit")
