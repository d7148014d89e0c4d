"""Generation stage of sequence-level and black-box distillation.

A teacher (an OpenAI-compatible HTTP API, or a local Hugging Face model) answers, explains or labels a
set of prompts; the results are a resumable JSONL store plus a manifest that the training stage reads
(``litdistill generate ...``, see docs/generation.md).
"""

from __future__ import annotations

from typing import Any

from litdistill.generation.client import ChatClient, ChatResult, ConfigError, Usage
from litdistill.generation.store import (
    ResultStore,
    load_generated,
    record_key,
    to_classification_records,
    to_sft_records,
)
from litdistill.generation.templates import (
    ParseError,
    PromptTemplate,
    TemplateError,
    load_template,
)

__all__ = [
    "ChatClient",
    "ChatResult",
    "ConfigError",
    "LocalHFTeacher",
    "ParseError",
    "PromptTemplate",
    "ResultStore",
    "TemplateError",
    "Usage",
    "load_generated",
    "load_template",
    "record_key",
    "to_classification_records",
    "to_sft_records",
]


def __getattr__(name: str) -> Any:  # heavy imports (torch, transformers, hydra) only when used
    if name == "LocalHFTeacher":
        from litdistill.generation.local import LocalHFTeacher

        return LocalHFTeacher
    raise AttributeError(name)
