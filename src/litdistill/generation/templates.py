"""Prompt templates (how an input record becomes chat messages) and answer parsers.

A template is plain data, usually one file of the ``conf/prompt/`` config group::

    name: ade_label
    system: "You are a pharmacovigilance expert ..."     # or null
    user: "Does this sentence describe an adverse drug event? ... Sentence: {input}"
    parser: label                                         # text | label
    labels:                                               # label parser only: class index = position
      - {name: not_ade, words: ["no", "false"]}
      - {name: ade, words: ["yes", "true"]}
    soft_labels: true                                     # ask for logprobs of the answer token
    top_logprobs: 5

``{input}`` in ``system`` / ``user`` is the input record's prompt field; any other ``{name}`` is that
field of the input record (checked before any request is made). Literal braces are written ``{{``/``}}``.

The ``text`` parser keeps the response as is. The ``label`` parser maps the first word of the response
onto a class through ``words`` (case- and punctuation-insensitive); with ``soft_labels`` it also turns
the ``top_logprobs`` of the answer token into a probability per class (``soft_label``). When the words
cannot be parsed but a soft label exists, the label is its argmax (``label_source: logprobs``).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from litdistill.core.conf import config_dir, to_plain

PARSERS = ("text", "label")
_WORD = re.compile(r"[\w'-]+", re.UNICODE)


class TemplateError(ValueError):
    """A template that cannot be used (unknown name or parser, a field no input record has)."""


class ParseError(ValueError):
    """A response the template's parser cannot read (recorded as a failed result, never raised out of a run)."""


def _norm(word: str) -> str:
    return word.strip().strip(string.punctuation + " \t\n\"'`").lower()


@dataclass(frozen=True)
class LabelClass:
    name: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    user: str
    system: str | None = None
    parser: str = "text"
    labels: tuple[LabelClass, ...] = ()
    soft_labels: bool = False
    top_logprobs: int = 5
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.parser not in PARSERS:
            raise TemplateError(f"prompt.parser={self.parser!r} is not a known parser; valid parsers: {list(PARSERS)}")
        if self.parser == "label":
            if len(self.labels) < 2:
                raise TemplateError(
                    f"template {self.name!r}: the label parser needs prompt.labels with at least two "
                    "classes, each {name: ..., words: [...]}"
                )
            seen: dict[str, str] = {}
            for cls in self.labels:
                for w in cls.words:
                    if _norm(w) in seen and seen[_norm(w)] != cls.name:
                        raise TemplateError(
                            f"template {self.name!r}: answer word {w!r} maps to both "
                            f"{seen[_norm(w)]!r} and {cls.name!r}"
                        )
                    seen[_norm(w)] = cls.name
        elif self.soft_labels:
            raise TemplateError(f"template {self.name!r}: soft_labels needs parser: label (got {self.parser!r})")
        if not isinstance(self.user, str) or not self.user:
            raise TemplateError(
                f"template {self.name!r}: prompt.user must be a non-empty string with an {{input}} field"
            )
        if self.soft_labels and not 1 <= int(self.top_logprobs) <= 20:
            raise TemplateError(f"template {self.name!r}: top_logprobs={self.top_logprobs} must be in 1..20")
        for part in ("system", "user"):
            text = getattr(self, part)
            if text is None:
                continue
            try:
                list(string.Formatter().parse(text))
            except ValueError as err:
                raise TemplateError(
                    f"template {self.name!r}: prompt.{part} is not a valid format string ({err}); "
                    "write literal braces as {{ and }}"
                ) from None

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str) -> PromptTemplate:
        """From a ``prompt`` config node (a mapping) or the name of a shipped template (``conf/prompt/NAME.yaml``)."""
        if isinstance(cfg, str):
            return load_template(cfg)
        if not isinstance(cfg, Mapping):
            cfg = to_plain(cfg)
        if not isinstance(cfg, Mapping):
            raise TemplateError(f"prompt must be a mapping or a template name, got {type(cfg).__name__}")
        known = {"name", "user", "system", "parser", "labels", "soft_labels", "top_logprobs", "description"}
        data = dict(cfg)
        if "user" not in data:
            raise TemplateError(
                f"template {data.get('name', '?')!r} has no prompt.user (the user message, with "
                f"an {{input}} field); choose a shipped template: {available_templates()}"
            )
        labels = []
        for i, entry in enumerate(data.get("labels") or []):
            if isinstance(entry, str):
                entry = {"name": entry, "words": [entry]}
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise TemplateError(f"prompt.labels[{i}] must be {{name: ..., words: [...]}}, got {entry!r}")
            words = entry.get("words") or [entry["name"]]
            labels.append(LabelClass(str(entry["name"]), tuple(str(w) for w in words)))
        return cls(
            name=str(data.get("name") or "custom"),
            user=data["user"],
            system=data.get("system"),
            parser=str(data.get("parser") or "text"),
            labels=tuple(labels),
            soft_labels=bool(data.get("soft_labels", False)),
            top_logprobs=int(data.get("top_logprobs") or 5),
            description=str(data.get("description") or ""),
            extra={k: v for k, v in data.items() if k not in known},
        )

    # -- rendering ----------------------------------------------------------------------------------
    def fields(self) -> set[str]:
        """Record fields the template reads (``input`` is the prompt field itself)."""
        names = set()
        for text in (self.system, self.user):
            if text:
                names |= {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(text) if f}
        return names

    def check_fields(self, available: Sequence[str], where: str = "the input records") -> None:
        missing = sorted(self.fields() - {"input"} - set(available))
        if missing:
            raise TemplateError(
                f"template {self.name!r} uses field(s) {missing} that {where} lack; "
                f"available fields: {sorted(set(available) | {'input'})}"
            )

    def render(self, text: str, record: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
        values = {**(record or {}), "input": text}
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system.format_map(values)})
        messages.append({"role": "user", "content": self.user.format_map(values)})
        return messages

    @property
    def label_names(self) -> list[str]:
        return [c.name for c in self.labels]

    def request_params(self) -> dict[str, Any]:
        """Extra chat-completions parameters this template needs (logprobs for soft labels)."""
        return {"logprobs": True, "top_logprobs": int(self.top_logprobs)} if self.soft_labels else {}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "system": self.system, "user": self.user, "parser": self.parser}
        if self.parser == "label":
            out["labels"] = [{"name": c.name, "words": list(c.words)} for c in self.labels]
            out["soft_labels"] = self.soft_labels
            if self.soft_labels:
                out["top_logprobs"] = self.top_logprobs
        return out

    # -- parsing ------------------------------------------------------------------------------------
    def label_of_word(self, word: str) -> int | None:
        w = _norm(word)
        for i, cls in enumerate(self.labels):
            if w in {_norm(x) for x in cls.words} or w == _norm(cls.name):
                return i
        return None

    def parse_label(self, response: str) -> int:
        words = _WORD.findall(response or "")
        if words:
            label = self.label_of_word(words[0])
            if label is not None:
                return label
        # "Answer: yes", "The answer is no."  -> the first word that is a label word, if only one class appears
        hits = {self.label_of_word(w) for w in words} - {None}
        if len(hits) == 1:
            return hits.pop()  # type: ignore[return-value]
        expected = sorted({w for c in self.labels for w in c.words})
        raise ParseError(f"could not parse a label from response {response[:80]!r}; expected one of {expected}")

    def soft_label_from_top_logprobs(self, top: Sequence[tuple[str, float]]) -> list[float] | None:
        """Probability per class from ``(token, logprob)`` alternatives of the answer token, renormalised
        over the classes; None when no alternative names a class."""
        mass = [0.0] * len(self.labels)
        for token, logprob in top:
            label = self.label_of_word(token)
            if label is not None and isinstance(logprob, (int, float)) and math.isfinite(logprob):
                mass[label] += math.exp(min(logprob, 0.0))  # a log-probability is <= 0; a server's 1000 is clamped
        total = sum(mass)
        return [m / total for m in mass] if total > 0 else None

    def parse(
        self, response: str | None, logprobs: Any = None, soft_label: Sequence[float] | None = None
    ) -> dict[str, Any]:
        """The result fields of one response: ``response`` and, for the label parser, ``label`` and
        ``soft_label``. ``logprobs`` is the chat-completions ``choices[0].logprobs`` object; ``soft_label``
        may be given directly (local teachers compute it from logits). Raises ParseError."""
        if response is None or (isinstance(response, str) and not response.strip() and self.parser == "text"):
            raise ParseError("empty response")
        if not isinstance(response, str):
            raise ParseError(f"response is not text: {type(response).__name__}")
        out: dict[str, Any] = {"response": response}
        if self.parser == "text":
            return out
        if soft_label is None and self.soft_labels and logprobs is not None:
            soft_label = self.soft_label_from_top_logprobs(answer_token_alternatives(logprobs))
        if soft_label is not None:
            out["soft_label"] = [float(p) for p in soft_label]
        try:
            out["label"] = self.parse_label(response)
            out["label_source"] = "text"
        except ParseError:
            if soft_label is None:
                raise
            out["label"] = int(max(range(len(soft_label)), key=lambda i: soft_label[i]))
            out["label_source"] = "logprobs"
        out["label_name"] = self.labels[out["label"]].name
        return out


def answer_token_alternatives(logprobs: Any) -> list[tuple[str, float]]:
    """``(token, logprob)`` alternatives at the first non-blank token of a chat-completions ``logprobs``
    object (``{"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}``)."""
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list):
        return []
    for entry in content:
        if not isinstance(entry, Mapping):
            continue
        token = entry.get("token")
        if not isinstance(token, str) or not _norm(token):
            continue
        alternatives = [
            (t.get("token"), t.get("logprob"))
            for t in entry.get("top_logprobs") or []
            if isinstance(t, Mapping) and isinstance(t.get("token"), str) and isinstance(t.get("logprob"), (int, float))
        ]
        if not alternatives and isinstance(entry.get("logprob"), (int, float)):
            alternatives = [(token, entry["logprob"])]
        return [(t, float(lp)) for t, lp in alternatives]
    return []


def templates_dir() -> Path:
    return config_dir() / "prompt"


def available_templates() -> list[str]:
    d = templates_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_template(name: str) -> PromptTemplate:
    """A shipped template by name (``conf/prompt/NAME.yaml``)."""

    path = templates_dir() / f"{name}.yaml"
    if not path.is_file():
        raise TemplateError(
            f"unknown template {name!r}; shipped templates: {available_templates()} "
            "(or give prompt.user / prompt.system in the config)"
        )
    node = OmegaConf.load(path)
    if "prompt" in node and "user" not in node:  # a `# @package _global_` file
        node = node.prompt
    return PromptTemplate.from_config(to_plain(node))
