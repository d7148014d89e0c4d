"""Augmentation: new sentences made from the labelled text, for the teacher to label (a transfer set).

TinyBERT's recipe: replace words of a sentence by ones a language model finds plausible there, N
variants per sentence; the teacher's soft targets are the new rows' only target (they carry no label).
Two word-replacement methods, both on whole words that are one entry of the model's vocabulary:

* :class:`MaskedLMReplacement`: the chosen words masked, replacements sampled from a Hugging Face
  masked LM's top-k predictions there (any ``AutoModelForMaskedLM``: ``bert-base-uncased``,
  PubMedBERT...). All chosen words of a variant are masked in one pass (TinyBERT masks one word at a
  time: N passes per variant for little difference at rates <= 0.3).
* :class:`EmbeddingNeighbours`: replacements drawn from the k nearest vocabulary words by the cosine
  of a model's input embeddings (TinyBERT's fallback uses GloVe neighbours). It needs only the
  embedding table, so it runs offline on the packaged MiniLM: the default run's augmentation.

LLM paraphrases come through ``litdistill generate prompt=paraphrase`` and ``data.unlabeled=<its
output dir>`` instead. :func:`augmented_texts` makes the variants deterministic per seed and caches them.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoModelForMaskedLM

from litdistill.core.io import atomic_write_text, canonical_json, sha256_text
from litdistill.models.loading import load_tokenizer

log = logging.getLogger(__name__)
WORD = re.compile(r"[A-Za-z]+")


class Augmenter(Protocol):
    """Makes ``n`` variants of each text; ``settings`` (with the seed and the texts) keys the cache."""

    n: int

    def settings(self) -> dict[str, Any]: ...

    def check_tokenizer(self, data_tokenizer: Any) -> None: ...

    def variants(self, text: str, rng: random.Random) -> list[str]: ...


class WordReplacement:
    """Shared by both methods: which words may change, the rate, the number of variants."""

    def __init__(self, source: str, n: int = 4, rate: float = 0.3, top_k: int = 10) -> None:
        for key, value, valid in (("n", n, n >= 1), ("rate", rate, 0 < rate <= 1), ("top_k", top_k, top_k >= 1)):
            if isinstance(value, bool) or not valid:
                raise ValueError(f"augment.{key}={value!r}: valid: n >= 1 variants, rate in (0, 1], top_k >= 1")
        self.source, self.n, self.rate, self.top_k = str(source), int(n), float(rate), int(top_k)
        self._tokenizer = None
        self._pieces: dict[str, int | None] = {}  # word -> its one vocabulary id (None: several pieces)

    def settings(self) -> dict[str, Any]:
        return {"method": type(self).__name__, "source": self.source, "n": self.n, "rate": self.rate, "k": self.top_k}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.source)
        return self._tokenizer

    def check_tokenizer(self, data_tokenizer: Any) -> None:
        """The augmenting model must read the data's vocabulary: its words are the ones replaced."""
        if self.tokenizer.get_vocab() != data_tokenizer.get_vocab():
            raise ValueError(
                f"augment.source={self.source}: its tokenizer ({len(self.tokenizer)} entries) differs from the "
                f"data's ({len(data_tokenizer)} entries, {getattr(data_tokenizer, 'name_or_path', '?')}); "
                "use a model with the data tokenizer's vocabulary (for a BERT-uncased vocabulary: "
                "bert-base-uncased)"
            )

    def _single_piece(self, word: str) -> int | None:
        """The word's vocabulary id when it is one entry, else None (memoised: corpora repeat words)."""
        if word not in self._pieces:
            ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            self._pieces[word] = ids[0] if len(ids) == 1 else None
        return self._pieces[word]

    def _chosen(self, text: str, rng: random.Random) -> list[re.Match[str]]:
        """Replaceable words (one vocabulary entry each), each picked with probability ``rate`` (>= 1)."""
        words = [m for m in WORD.finditer(text) if self._single_piece(m.group()) is not None]
        chosen = [m for m in words if rng.random() < self.rate]
        return chosen or ([rng.choice(words)] if words else [])


def _spliced(text: str, matches: list[re.Match[str]], words: list[str]) -> str:
    """``text`` with each matched word replaced, its capitalisation kept."""
    out, last = [], 0
    for m, word in zip(matches, words):
        original = m.group()
        out += [text[last : m.start()], word.capitalize() if original[0].isupper() else word]
        last = m.end()
    return "".join(out) + text[last:]


class EmbeddingNeighbours(WordReplacement):
    """Replace words by one of their ``top_k`` nearest whole-word vocabulary entries (input-embedding cosine)."""

    def __init__(self, source: str, n: int = 4, rate: float = 0.3, top_k: int = 10) -> None:
        super().__init__(source, n, rate, top_k)
        self._table: tuple[torch.Tensor, list[int], dict[int, int]] | None = None
        self._neighbours: dict[int, list[str]] = {}

    def _load(self) -> tuple[torch.Tensor, list[int], dict[int, int]]:
        """Unit embeddings of the whole-word entries [W, H], their token ids, and id -> row."""
        model = AutoModel.from_pretrained(self.source)
        weight = model.get_input_embeddings().weight.detach().float()  # [V, H]
        vocab = self.tokenizer.get_vocab()
        ids = sorted(i for token, i in vocab.items() if token.isalpha() and token.isascii() and len(token) > 1)
        table = torch.nn.functional.normalize(weight[ids], dim=-1)  # [W, H]
        return table, ids, {token_id: row for row, token_id in enumerate(ids)}

    def neighbours(self, token_id: int) -> list[str]:
        """The ``top_k`` nearest whole words to ``token_id`` (itself excluded), nearest first."""
        if token_id not in self._neighbours:
            if self._table is None:
                self._table = self._load()
            table, ids, row = self._table
            if token_id not in row:
                self._neighbours[token_id] = []
                return []
            similarity = table @ table[row[token_id]]  # [W]
            order = similarity.topk(self.top_k + 1).indices.tolist()
            words = [self.tokenizer.convert_ids_to_tokens(ids[i]) for i in order if ids[i] != token_id]
            self._neighbours[token_id] = words[: self.top_k]
        return self._neighbours[token_id]

    def variants(self, text: str, rng: random.Random) -> list[str]:
        out = []
        for _ in range(self.n):
            near = [(m, self.neighbours(self._single_piece(m.group()))) for m in self._chosen(text, rng)]
            near = [(m, words) for m, words in near if words]
            out.append(_spliced(text, [m for m, _ in near], [rng.choice(words) for _, words in near]))
        return out


class MaskedLMReplacement(WordReplacement):
    """Replace words by a sample from a masked LM's ``top_k`` predictions at their position."""

    def __init__(self, source: str, n: int = 4, rate: float = 0.3, top_k: int = 10) -> None:
        super().__init__(source, n, rate, top_k)
        self._model = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = AutoModelForMaskedLM.from_pretrained(self.source).eval()
        return self._model

    @torch.no_grad()
    def variants(self, text: str, rng: random.Random) -> list[str]:
        out = []
        for _ in range(self.n):
            chosen = self._chosen(text, rng)
            if not chosen:
                out.append(text)
                continue
            masked = _spliced(text, chosen, [self.tokenizer.mask_token] * len(chosen))
            encoded = self.tokenizer(masked, return_tensors="pt", truncation=True)
            logits = self.model(**encoded).logits[0]  # [T, V]
            positions = (encoded["input_ids"][0] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
            words = []
            for position in positions:
                top = logits[position].topk(self.top_k).indices.tolist()
                candidates = [t for t in self.tokenizer.convert_ids_to_tokens(top) if t.isalpha()]
                words.append(rng.choice(candidates) if candidates else None)
            kept = [(m, w) for m, w in zip(chosen, words) if w is not None]  # truncated masks keep their word
            out.append(_spliced(text, [m for m, _ in kept], [w for _, w in kept]))
        return out


def augmented_texts(
    augmenter: Augmenter, texts: list[str], seed: int, cache_dir: str | Path | None
) -> list[tuple[int, str]]:
    """``(source index, variant)``: up to ``augmenter.n`` variants per text, each new (not a source text
    nor an earlier variant), in source order.

    Deterministic per ``seed`` (each text has its own generator seeded by ``(seed, index)``), and cached in
    ``cache_dir/<key>.json`` keyed by the augmenter's settings, the seed and the texts: a rerun reads it.
    """
    key = sha256_text(canonical_json({"augment": augmenter.settings(), "seed": seed, "texts": texts}))[:16]
    path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        log.info("augmentation: %s (cached)", path)
        return [(int(i), str(t)) for i, t in json.loads(path.read_text(encoding="utf-8"))]
    sources, made = set(texts), []
    for i, text in enumerate(tqdm(texts, desc=f"augmenting ({augmenter.settings()['method']})", unit="text")):
        for variant in augmenter.variants(text, random.Random(f"{seed}:{i}")):
            if variant not in sources:
                sources.add(variant)
                made.append((i, variant))
    if path is not None:
        atomic_write_text(path, json.dumps(made))
    return made
