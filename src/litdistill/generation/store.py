"""The resumable result store of a generation run, and readers for the training stage.

``results.jsonl`` holds one JSON object per line. Each record is appended with a single ``os.write``
of one whole line on an ``O_APPEND`` descriptor, then ``fsync``: a crash (SIGKILL, power loss) can
at worst leave a truncated last line, which loading drops (and repairs on disk before the next
append). Records are keyed by :func:`record_key` (sha256 of the prompt messages, the generation
settings and the model), so a rerun skips every key already done; a failed key is retried and its
new record supersedes the old one (the latest line of a key wins). :meth:`ResultStore.compact`
rewrites the file with exactly one line per key (temp file + ``os.replace``).

Record fields: ``id``, ``key``, ``prompt`` (the user message), ``messages`` (the full chat sent),
``text`` (the input text), ``response``, ``label`` / ``soft_label`` / ``label_name`` (label
templates), ``status`` ("ok" | "failed"), ``error`` (failed), ``attempts``, ``usage``,
``finish_reason``, ``model``, ``time``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from litdistill.core.io import atomic_write_text, canonical_json, sha256_text

log = logging.getLogger("litdistill.generation")

RESULTS = "results.jsonl"
DATASET = "dataset.jsonl"
MANIFEST = "manifest.json"


class StoreLockedError(RuntimeError):
    """Another process is writing to the same output directory."""


def record_key(messages: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], model: str) -> str:
    """sha256 of the prompt messages + generation settings + model: the identity of one result."""
    payload = canonical_json({"messages": [dict(m) for m in messages], "settings": dict(settings), "model": model})
    return sha256_text(payload)


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """The records of a JSONL file and the byte length of its newline-terminated lines. A truncated
    last line (not JSON) is dropped; a bad line in the middle is skipped with a warning."""
    data = Path(path).read_bytes()
    records: list[dict[str, Any]] = []
    good = 0
    pos = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        end = pos + len(line) + (0 if last else 1)
        if last:  # no newline after it: an interrupted write (or the empty tail after the final newline)
            if line.strip():
                try:
                    obj = json.loads(line)  # complete but unterminated: keep it (``good`` still excludes it)
                except ValueError:
                    obj = None
                if isinstance(obj, dict):
                    records.append(obj)
                else:
                    log.warning("%s: dropping a truncated last line (%d bytes)", path, len(line))
            break
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError:
                log.warning("%s: skipping an unreadable line %d", path, i + 1)
                obj = None
            if isinstance(obj, dict):
                records.append(obj)
        good = end
        pos = end
    return records, good


class ResultStore:
    """Append-only, crash-safe JSONL store of results keyed by :func:`record_key`.

    Use as a context manager (or call :meth:`open` / :meth:`close`): opening takes an exclusive lock
    on the directory (a second writer gets :class:`StoreLockedError`), loads the existing records and
    repairs a truncated tail.
    """

    def __init__(self, directory: str | os.PathLike, filename: str = RESULTS, secrets: Iterable[str] = ()) -> None:
        self.directory = Path(directory)
        self.path = self.directory / filename
        self.secrets = [s for s in secrets if s]
        self.records: dict[str, dict[str, Any]] = {}  # key -> latest record (insertion order = first seen)
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._mutex = threading.Lock()
        self.lines = 0  # lines in the file (a key retried after a failure has more than one until compact)

    # -- lifecycle ----------------------------------------------------------------------------------
    def open(self) -> ResultStore:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self.load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                import fcntl

                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ResultStore:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover  (Windows: no advisory lock)
            return
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreLockedError(
                f"another `litdistill generate` is writing to {self.directory}; wait for it to "
                "finish or choose another output_dir"
            ) from None
        self._lock_fd = fd

    # -- reading ------------------------------------------------------------------------------------
    def load(self) -> dict[str, dict[str, Any]]:
        self.records = {}
        self.lines = 0
        if not self.path.exists():
            return self.records
        records, good = read_jsonl(self.path)
        for rec in records:
            key = rec.get("key")
            if isinstance(key, str):
                self.records[key] = rec  # the latest line of a key wins
        self.lines = len(records)
        if good != self.path.stat().st_size:  # a truncated tail: cut it before anything is appended
            self.compact()
        return self.records

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def is_done(self, key: str) -> bool:
        rec = self.records.get(key)
        return rec is not None and rec.get("status") == "ok"

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records.values())

    # -- writing ------------------------------------------------------------------------------------
    def _line(self, record: Mapping[str, Any]) -> bytes:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        if "\n" in text:  # json.dumps escapes newlines inside strings; this cannot happen
            raise ValueError("record serialises to more than one line")
        return (text + "\n").encode("utf-8")

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record durably: one ``os.write`` of the whole line, then ``fsync``."""
        if "key" not in record:
            raise ValueError("a stored record needs its 'key'")
        if self._fd is None:
            raise RuntimeError("ResultStore is not open")
        line = self._line(record)
        with self._mutex:
            # memory first: a Ctrl-C landing between the write and the bookkeeping must not leave a
            # line on disk that a later compact() (which writes from memory) would drop
            self.records[record["key"]] = dict(record)
            self.lines += 1
            written = os.write(self._fd, line)
            while written < len(line):  # regular files write all at once; be safe anyway
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)

    def compact(self, order: Sequence[str] | None = None) -> None:
        """Rewrite the file with one line per key (the latest), keys in ``order`` first, atomically."""
        with self._mutex:
            keys = list(self.records)
            if order is not None:
                rank = {k: i for i, k in enumerate(order)}
                keys.sort(key=lambda k: rank.get(k, len(rank)))
            payload = b"".join(self._line(self.records[k]) for k in keys)
            atomic_write_text(self.path, payload.decode("utf-8"))
            if self._fd is not None:  # the old descriptor points at the replaced inode
                os.close(self._fd)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self.lines = len(keys)


# -- readers for the training stage ------------------------------------------------------------------
def _results_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in (RESULTS, DATASET):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {RESULTS} or {DATASET} in {path}")
    return path


def load_generated(path: str | os.PathLike, only_ok: bool = True) -> list[dict[str, Any]]:
    """Records of a generation run (its output directory, ``results.jsonl`` or ``dataset.jsonl``): the
    latest record per prompt, failed ones left out unless ``only_ok=False``."""
    file = _results_file(path)
    records, _ = read_jsonl(file)
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = rec.get("key") or rec.get("id") or canonical_json(rec)
        latest.pop(key, None)
        latest[key] = rec
    out = list(latest.values())
    return [r for r in out if r.get("status", "ok") == "ok"] if only_ok else out


def _records(source: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(source, (str, os.PathLike)):
        return load_generated(source, only_ok=True)
    return [r for r in source if r.get("status", "ok") == "ok"]


def to_sft_records(
    source: str | os.PathLike | Iterable[Mapping[str, Any]], with_system: bool = False
) -> list[dict[str, Any]]:
    """``{"prompt", "response"}`` pairs (successful results only) for :class:`litdistill.data.sft.SFTDataModule`.
    ``with_system=True`` gives the prompt as the full message list (system prompt included)."""
    out = []
    for r in _records(source):
        if r.get("response") is None:
            continue
        prompt = r.get("messages") if with_system and r.get("messages") else r.get("prompt")
        out.append({"id": r.get("id"), "prompt": prompt, "response": r["response"]})
    return out


def to_classification_records(source: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``{"text", "label", "soft_label"}`` rows (successful, labelled results only) for classification
    students; ``text`` is the input text (not the instruction around it)."""
    out = []
    for r in _records(source):
        if r.get("label") is None:
            continue
        row = {"id": r.get("id"), "text": r.get("text", r.get("prompt")), "label": int(r["label"])}
        if r.get("soft_label") is not None:
            row["soft_label"] = [float(p) for p in r["soft_label"]]
        out.append(row)
    return out


def dataset_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The training file's rows: successful records with the fields the training stage reads."""
    fields = ("id", "prompt", "response", "text", "label", "label_name", "soft_label", "messages", "duplicate_of")
    return [{k: r[k] for k in fields if r.get(k) is not None} for r in records if r.get("status") == "ok"]
