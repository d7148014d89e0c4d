"""Instruction / chat SFT data for causal students: prompt tokens masked, the response kept.

Each record is a prompt and a response (or a ``messages`` list whose last turn is the assistant's).
The tokenizer's chat template is used where it has one. Labels are -100 on prompt and padding
tokens, so token-level losses and the hard CE see only response tokens.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from datasets import DatasetDict
from torch import Tensor
from torch.utils.data import DataLoader

from litdistill.data.classification import _head, dedupe_and_split
from litdistill.data.files import load_splits
from litdistill.data.resumable import ResumableTrainOrder
from litdistill.data.token_counts import real_tokens, step_counted
from litdistill.models.loading import load_tokenizer

SPLITS = ("train", "validation", "test")


def encode_example(
    tokenizer: Any, prompt: str | list[dict[str, str]], response: str, max_length: int, system_prompt: str | None = None
) -> dict[str, list[int]]:
    """Token ids and labels of one prompt-response pair.

    Truncation keeps the response: the prompt is cut from the left first; only a response longer
    than ``max_length`` on its own is cut (from the right).
    """
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if getattr(tokenizer, "chat_template", None):
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
            prompt_ids = prompt_ids["input_ids"]
    else:
        text = "\n".join(m["content"] for m in messages) + "\n"
        prompt_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    response_ids = response_ids[:max_length]
    prompt_ids = list(prompt_ids)[-(max_length - len(response_ids)) :] if len(response_ids) < max_length else []
    return {"input_ids": prompt_ids + response_ids, "labels": [-100] * len(prompt_ids) + response_ids}


def pack(examples: list[dict[str, list[int]]], block: int) -> list[dict[str, list[int]]]:
    """Concatenate examples into blocks of ``block`` tokens (labels kept, prompt masks kept)."""
    ids, labels, blocks = [], [], []
    for ex in examples:
        ids += ex["input_ids"]
        labels += ex["labels"]
        while len(ids) >= block:
            blocks.append({"input_ids": ids[:block], "labels": labels[:block]})
            ids, labels = ids[block:], labels[block:]
    if ids:
        blocks.append({"input_ids": ids, "labels": labels})
    return blocks


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad to the longest row; padding gets attention 0 and label -100."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.as_tensor(r["input_ids"])
        labels[i, :n] = torch.as_tensor(r["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class SFTDataModule(ResumableTrainOrder, L.LightningDataModule):
    """Prompt-response records (JSONL/CSV/Parquet files or a hub dataset) for causal students.

    The training order is resumable mid-epoch (data/resumable.py), also under the token-count wrapper.
    """

    def __init__(
        self,
        tokenizer: str,
        dataset: str | None = None,
        subset: str | None = None,
        data_files: dict[str, str] | None = None,
        prompt_column: str = "prompt",
        response_column: str = "response",
        system_prompt: str | None = None,
        max_length: int = 512,
        batch_size: int = 8,
        packing: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.tokenizer = load_tokenizer(tokenizer)
        self.splits: dict[str, list[dict[str, list[int]]]] | None = None

    def raw_splits(self) -> DatasetDict:
        h = self.hparams
        raw = load_splits(h.dataset, h.data_files, h.subset)
        columns = next(iter(raw.values())).column_names
        missing = [c for c in (h.prompt_column, h.response_column) if c not in columns]
        if missing:
            raise ValueError(f"column(s) {missing} not in the data; columns present: {columns}")
        if "validation" not in raw:
            raw = dedupe_and_split(raw["train"], h.prompt_column, h.val_fraction, h.test_fraction, h.seed)
        return DatasetDict(
            {
                s: _head(raw[s], h.max_train_examples if s == "train" else h.max_eval_examples)
                for s in SPLITS
                if s in raw
            }
        )

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        h = self.hparams
        self.splits = {}
        for split, ds in self.raw_splits().items():
            encoded = [
                encode_example(self.tokenizer, p, r, h.max_length, h.system_prompt)
                for p, r in zip(ds[h.prompt_column], ds[h.response_column])
            ]
            self.splits[split] = pack(encoded, h.max_length) if h.packing and split == "train" else encoded

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        h = self.hparams
        # training order: a function of (seed, epoch) that a mid-epoch resume reproduces (data/resumable.py)
        return DataLoader(
            self.splits[split],
            batch_size=h.batch_size,
            sampler=self.train_sampler(self.splits[split], h.batch_size) if shuffle else None,
            generator=self.loader_generator(),
            collate_fn=lambda rows: collate(rows, self.tokenizer.pad_token_id),
            num_workers=h.num_workers,
        )

    def train_dataloader(self) -> Any:
        return step_counted(self._loader("train", shuffle=True), self.trainer, real_tokens)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
