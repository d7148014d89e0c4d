"""The content key of a teacher-output store: everything that changes what the teacher outputs.

A store is reused only when every key field matches; a mismatch is refused naming the field. The
fields, in the order a mismatch is reported:

* ``format``, ``task``;
* ``teacher.*``: where its weights come from (a hub name and revision; for a local directory its
  basename and a sha256 of its weight and config files; for a randomly initialised model the
  config, the seed and the torch/transformers versions that ran the init), ``dtype``,
  ``quantization``, the other loader options, and ``finetune`` (the fine-tuning key of
  ``teacher_finetune``, see :func:`litdistill.training.finetune.finetune_key`);
* ``tokenizer.name``, ``tokenizer.vocab_sha256``;
* ``dataset`` (hub name/subset/revision, or a sha256 of each data file), ``data_options`` (the data
  module's other settings, batch sizes and workers excepted), ``max_length``;
* ``splits.<split>``: a sha256 of the split's tokenised model inputs (and, for causal LMs, of which
  positions are real tokens), so any change of text, tokenisation, truncation, prompt format or
  split membership changes it;
* ``outputs`` (logits | topk), ``k``, ``dtype`` (stored values), ``codec``;
* ``hidden_layers``, ``hidden_size``: the teacher layers whose hidden states are stored and their
  width (only in the key of a store that has hidden states, so other stores keep their keys).

The key is computed without loading the teacher (``cache=use`` never loads it). The sha256 of the
loaded teacher's actual weights is recorded beside the key when a build runs, and checked whenever
a later build or ``cache=auto`` loads the teacher again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from litdistill.core.conf import to_plain
from litdistill.core.forward import MODEL_INPUTS
from litdistill.core.io import canonical_json, sha256_file, sha256_text

FORMAT = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
CONFIG_FILES = ("config.json", "generation_config.json")
# data-module settings that do not change the teacher's inputs
DATA_IGNORED = {
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "tokenizer",
    "data_files",
    "dataset",
    "subset",
    "revision",
    "max_length",
    "_target_",
    "augment_cache_dir",  # where augmented sentences are cached; the sentences are in the split fingerprint
}


def directory_weights_sha256(path: str | os.PathLike) -> str:
    """sha256 over a model directory's weight and config files (names and contents, sorted)."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_FILES)
    )
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a loaded model's state dict (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _name(name_or_path: str) -> tuple[str, str | None]:
    """(name as keyed, content hash): local directories by basename plus their files' sha256."""
    if os.path.isdir(name_or_path):
        return f"local:{Path(name_or_path).name}", directory_weights_sha256(name_or_path)
    return name_or_path, None


def teacher_identity(teacher: Mapping[str, Any], finetune: str | None = None) -> dict[str, Any]:
    """Key fields of the configured teacher, from its config node alone (nothing is loaded);
    ``finetune``: the key of its fine-tuning (``teacher_finetune``), None without one."""
    spec = dict(to_plain(teacher) or {})
    ident: dict[str, Any] = {}
    if "name_or_path" in spec and "config" not in spec:
        name, weights = _name(str(spec.pop("name_or_path")))
        ident["name"] = name
        ident["revision"] = spec.pop("revision", None) or ("local files" if weights else "unpinned")
        ident["weights"] = weights
    else:  # randomly initialised from a config (litdistill.models.loading.from_config)
        import transformers

        base = spec.pop("base", None)
        ident["name"] = "random-init" + (f" of {_name(str(base))[0]}" if base else "")
        ident["config"] = sha256_text(canonical_json(spec.pop("config", None)))[:16]
        ident["seed"] = spec.pop("seed", None)
        ident["init_versions"] = f"torch {torch.__version__.split('+')[0]}, transformers {transformers.__version__}"
    ident["dtype"] = spec.pop("dtype", "float32")
    ident["quantization"] = spec.pop("quantization", None)
    spec.pop("_partial_", None)
    ident["options"] = sha256_text(canonical_json(spec))[:16] if spec else None  # _target_, task, labels, ...
    ident["finetune"] = finetune
    return ident


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = {k: str(v) for k, v in sorted((getattr(tokenizer, "special_tokens_map", None) or {}).items())}
    return {
        "name": _name(name)[0] if os.path.isdir(name) else name,
        "vocab_sha256": sha256_text(canonical_json([vocab, special])),
    }


def dataset_identity(hparams: Mapping[str, Any]) -> tuple[dict[str, Any], str | None, Any]:
    """(dataset source, hash of the other data options, max_length) of a data module's settings."""
    h = {k: to_plain(v) for k, v in dict(hparams).items()}
    files = h.get("data_files")
    if files:
        source: dict[str, Any] = {
            "files": {split: sha256_file(path)[:16] for split, path in sorted(dict(files).items())}
        }
    else:
        source = {"hub": h.get("dataset"), "subset": h.get("subset"), "revision": h.get("revision")}
    options = {k: v for k, v in h.items() if k not in DATA_IGNORED}
    return source, (sha256_text(canonical_json(options))[:16] if options else None), h.get("max_length")


def _column(ds: Any, name: str) -> list[Any] | None:
    try:
        from datasets import Dataset
    except ImportError:  # pragma: no cover
        Dataset = ()
    if isinstance(ds, Dataset):
        if name not in ds.column_names:
            return None
        return list(ds.with_format("numpy")[name])
    if len(ds) == 0 or name not in ds[0]:
        return None
    return [ds[i][name] for i in range(len(ds))]


def split_fingerprint(ds: Any, task: str) -> str:
    """sha256 of a split's model inputs in dataset order (and the real-token positions for causal LMs)."""
    h = hashlib.sha256(f"n={len(ds)}".encode())
    columns: list[tuple[str, list[Any]]] = []
    for name in MODEL_INPUTS:
        values = _column(ds, name)
        if values is not None:
            columns.append((name, values))
    if task == "causal_lm":
        labels = _column(ds, "labels")
        if labels is not None:
            columns.append(("real_positions", [np.asarray(v) != -100 for v in labels]))
    for name, values in columns:
        arrays = [np.asarray(v).reshape(-1).astype("<i8") for v in values]
        h.update(name.encode())
        h.update(np.asarray([a.size for a in arrays], dtype="<i8").tobytes())
        if arrays:
            h.update(np.concatenate(arrays).tobytes())
    return h.hexdigest()


def flatten(key: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in key.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping) and value and name not in ("dataset",):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def key_hash(key: Mapping[str, Any]) -> str:
    return sha256_text(canonical_json(key))[:16]


def differing_fields(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, stored value, current value) for every differing key field, in the key's order."""
    a, b = flatten(stored), flatten(current)
    names = list(b) + [n for n in a if n not in b]
    return [
        (n, a.get(n, "<absent>"), b.get(n, "<absent>"))
        for n in names
        if canonical_json(a.get(n, "<absent>")) != canonical_json(b.get(n, "<absent>"))
    ]


def _short(value: Any) -> str:
    text = canonical_json(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def describe_differences(diffs: Iterable[tuple[str, Any, Any]]) -> str:
    diffs = list(diffs)
    if not diffs:
        return "no differing fields"
    first, *rest = diffs
    text = f"field {first[0]!r} differs (store: {_short(first[1])}, this run: {_short(first[2])})"
    if rest:
        text += "; also differ: " + ", ".join(repr(d[0]) for d in rest)
    return text
