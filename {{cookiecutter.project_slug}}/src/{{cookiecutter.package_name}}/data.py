"""This project's data: load your examples here; litdistill does the rest.

``prepare_splits`` is what the data config calls (``conf/data/{{ cookiecutter.package_name }}.yaml``): it asks
``load_examples(source)`` for rows, de-duplicates them, shuffles, splits train/validation/test (no
text in two splits) and writes CSV files that
{%- if cookiecutter.task_type == "causal_lm" %} ``CausalLMDataModule`` (below) tokenizes for next-token training.
{%- else %} litdistill's ``TextClassificationDataModule`` tokenizes.
{%- endif %}

To use your own data, edit ``load_examples``: return a list of
{%- if cookiecutter.task_type == "causal_lm" %} ``{"text": str}`` dicts.
{%- else %} ``{"text": str, "label": int}`` dicts
(labels 0..num_labels-1; set ``data.num_labels`` / ``data.label_names`` in the data config).
{%- endif %}
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

{%- if cookiecutter.task_type == "causal_lm" %}

import lightning as L
import torch
from torch.utils.data import DataLoader

from litdistill.models.loading import load_tokenizer
{%- endif %}

TASK = "{{ cookiecutter.task_type }}"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def load_examples(source: str, task: str = TASK) -> list[dict[str, Any]]:
    """The examples of ``source``: ``synthetic`` (a small built-in sample), a local ``.csv``/``.tsv``/
    ``.jsonl``/``.txt`` file, or a Hugging Face dataset name (its ``train`` split).

    ADD YOUR LOADING CODE HERE (a database, an API, several files...).
    """
    if source == "synthetic":
        return synthetic_examples(task=task)
    path = _local_path(source)
    if path is not None:
        return [_row(r, task, str(path)) for r in _read_file(path)]
    from datasets import load_dataset  # a hub dataset (needs the network or a hub cache)

    return [_row(r, task, source) for r in load_dataset(source, split="train")]


def prepare_splits(source: str, out_dir: str, task: str = TASK, max_examples: int | None = None,
                   val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> dict[str, str]:
    """Write ``train``/``validation``/``test`` CSV files of ``source`` into ``out_dir``; returns split -> path."""
    seen: set[str] = set()
    rows = [r for r in load_examples(source, task) if not (r["text"] in seen or seen.add(r["text"]))]
    random.Random(seed).shuffle(rows)
    if max_examples:
        rows = rows[:max_examples]
    n_val, n_test = max(1, int(len(rows) * val_fraction)), max(1, int(len(rows) * test_fraction))
    if len(rows) < n_val + n_test + 1:
        raise ValueError(f"{source}: {len(rows)} unique examples are too few to split into train/validation/test")
    parts = {"test": rows[:n_test], "validation": rows[n_test:n_test + n_val], "train": rows[n_test + n_val:]}
    columns = ["text"] if task == "causal_lm" else ["text", "label"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, part in parts.items():
        path = out / f"{split}.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(part)
        tmp.replace(path)  # readers never see half a file
        paths[split] = str(path)
    return paths


# ---- the built-in sample -------------------------------------------------------------------------
PRODUCTS = ["phone", "laptop", "kettle", "backpack", "headset", "camera", "blender", "monitor", "chair", "printer",
            "watch", "speaker", "tent", "bicycle", "keyboard", "lamp"]
GOOD = ["works perfectly", "exceeded my expectations", "is worth every penny", "arrived early and works great",
        "is sturdy and well made", "has an excellent battery", "is easy to set up", "is quiet and fast"]
BAD = ["stopped working after a week", "arrived broken", "is a waste of money", "feels cheap and flimsy",
       "overheats constantly", "has a terrible battery", "was impossible to set up", "is loud and slow"]
OPENERS = ["The {p} {v}.", "My new {p} {v}.", "Honestly, this {p} {v}.", "After {n} days, the {p} {v}.",
           "I bought the {p} for my {who} and it {v}.", "Overall the {p} {v}, {tail}."]
WHO = ["son", "office", "mother", "team", "trip", "kitchen"]
TAILS = ["as the reviews said", "which surprised me", "to be fair", "so I kept the receipt"]


def synthetic_examples(n: int = 1200, task: str = TASK, seed: int = 0, label_noise: float = 0.03) -> list[dict[str, Any]]:
    """Product-review sentences, label 1 = positive: a stand-in until ``load_examples`` reads your data."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = int(rng.random() < 0.5)
        text = rng.choice(OPENERS).format(p=rng.choice(PRODUCTS), v=rng.choice(GOOD if label else BAD),
                                          n=rng.randint(2, 90), who=rng.choice(WHO), tail=rng.choice(TAILS))
        if task == "causal_lm":
            rows.append({"text": text})
        else:
            rows.append({"text": text, "label": 1 - label if rng.random() < label_noise else label})
    return rows


# ---- reading files -------------------------------------------------------------------------------
def _local_path(source: str) -> Path | None:
    """``source`` as an existing file: as given (relative to the working directory), else relative to the project."""
    for candidate in (Path(source).expanduser(), PROJECT_ROOT / source):
        if candidate.is_file():
            return candidate
    if Path(source).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".txt"):
        raise FileNotFoundError(f"data file {source!r} not found (looked in the working directory and {PROJECT_ROOT})")
    return None


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    with open(path, newline="", encoding="utf-8") as f:
        if suffix in (".csv", ".tsv"):
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix in (".jsonl", ".json"):
            return [json.loads(line) for line in f if line.strip()]
        if suffix == ".txt":
            return [{"text": line.strip()} for line in f if line.strip()]
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .txt (or edit load_examples)")


def _row(raw: dict[str, Any], task: str, where: str) -> dict[str, Any]:
    if "text" not in raw:
        raise ValueError(f"{where}: rows need a 'text' column; columns present: {sorted(raw)} (map them in load_examples)")
    if task == "causal_lm":
        return {"text": str(raw["text"])}
    if "label" not in raw:
        raise ValueError(f"{where}: classification rows need a 'label' column; columns present: {sorted(raw)}")
    return {"text": str(raw["text"]), "label": int(raw["label"])}
{%- if cookiecutter.task_type == "causal_lm" %}


# ---- next-token data ------------------------------------------------------------------------------
class CausalLMDataModule(L.LightningDataModule):
    """Each row's text, tokenized; labels are the input ids with padding set to -100 (ignored).

    litdistill shifts labels and logits itself, so position t is scored on token t+1.
    """

    def __init__(self, tokenizer: str, data_files: dict[str, str], text_column: str = "text", max_length: int = 128,
                 batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.tokenizer = load_tokenizer(tokenizer)
        self.splits: dict[str, list[dict[str, list[int]]]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        h = self.hparams
        self.splits = {}
        for split, path in dict(h.data_files).items():
            with open(path, newline="", encoding="utf-8") as f:
                texts = [row[h.text_column] for row in csv.DictReader(f)]
            encoded = self.tokenizer(texts, truncation=True, max_length=h.max_length, return_token_type_ids=False)
            self.splits[split] = [{"input_ids": ids, "attention_mask": mask}
                                  for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]

    def collate(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
            attention_mask[i, :len(row["input_ids"])] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(self.splits[split], batch_size=h.batch_size if shuffle else (h.eval_batch_size or h.batch_size),
                          shuffle=shuffle, collate_fn=self.collate, num_workers=h.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
{%- endif %}
