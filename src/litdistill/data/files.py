"""Reading local data files: one split's CSV/TSV/JSONL/Parquet file, checked so every problem names
its split and its file, and a hub dataset or a split -> file mapping as a DatasetDict."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_splits(
    dataset: str | None, data_files: dict[str, str] | None, subset: str | None = None, revision: str | None = None
) -> DatasetDict:
    """Load from the hub (``dataset``) or from local files (``data_files``: split -> path)."""
    if (dataset is None) == (data_files is None):
        raise ValueError("set exactly one of data.dataset (a hub name) or data.data_files (split -> local file)")
    if dataset is not None:
        return load_dataset(dataset, subset, revision=revision)
    files = {split: str(path) for split, path in dict(data_files).items()}
    suffixes = {Path(p).suffix.lower() for p in files.values()}
    unknown = suffixes - set(FILE_BUILDERS)
    if unknown or len(suffixes) != 1:
        raise ValueError(f"data files must share one format among {sorted(FILE_BUILDERS)}, got {sorted(suffixes)}")
    return DatasetDict({split: load_split_file(split, path) for split, path in files.items()})


@contextmanager
def no_progress_bars() -> Iterator[None]:
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def load_split_file(split: str, path: str, key: str | None = None) -> Dataset:
    """One split's file, read on its own so that every problem names its split and its file: a missing
    or empty file, one with a header and no rows, bytes that are not UTF-8, or a file the reader cannot
    parse. (Read together, a column missing from one file would come back filled with nulls, and a
    parse error would name no file.)"""
    where = f"{key or f'data.data_files.{split}'}={path}"
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    if file.stat().st_size == 0:
        raise ValueError(f"{where}: the file is empty")
    suffix = file.suffix.lower()
    if suffix != ".parquet":
        _check_utf8(file, where)
    try:
        with no_progress_bars():  # a local file reads in a moment: no "Generating train split" bar
            ds = load_dataset(
                FILE_BUILDERS[suffix],
                data_files={split: str(file)},
                split=split,
                **({"delimiter": "\t"} if suffix == ".tsv" else {}),
            )
    except Exception as error:  # noqa: BLE001  (pyarrow and datasets raise many types for a bad file)
        if suffix in (".csv", ".tsv") and _content_lines(file) <= 1:  # datasets: "corresponds to no data"
            raise ValueError(f"{where}: the file has no rows (a header only?)") from error
        cause = error.__cause__ or error
        raise ValueError(f"{where}: not readable as {suffix[1:]} ({type(cause).__name__}: {cause})") from error
    if len(ds) == 0:
        raise ValueError(f"{where}: the file has no rows (a header only?)")
    return ds


def _content_lines(file: Path) -> int:
    with open(file, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _check_utf8(file: Path, where: str, chunk: int = 1 << 20) -> None:
    """Refuse a text file that is not UTF-8, naming the byte offset (streamed: a large file is fine)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(file, "rb") as f:
        while True:
            block = f.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                bad = error.object[error.start : error.start + 1]
                raise ValueError(
                    f"{where}: not UTF-8 text (byte {offset + error.start}: {bad!r}); re-save the file as UTF-8"
                ) from error
            if not block:
                return
            offset += len(block)
