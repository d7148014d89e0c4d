"""Loading teachers and students through transformers' Auto classes.

Every builder returns a plain Hugging Face model. Student builders also receive the teacher
(``teacher=``) so they can copy its layers, label names or vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from litdistill.core.packaged import packaged_minilm

log = logging.getLogger(__name__)

AUTO_CLASSES = {"classification": AutoModelForSequenceClassification, "causal_lm": AutoModelForCausalLM}
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
QUANTIZATIONS = ("8bit", "nf4", "fp4")

__all__ = ["packaged_minilm", "load_pretrained", "from_config", "load_tokenizer"]


def auto_class(task: str) -> Any:
    if task not in AUTO_CLASSES:
        raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(AUTO_CLASSES)}")
    return AUTO_CLASSES[task]


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {sorted(DTYPES)}")
    return DTYPES[name]


def quantization_config(quantization: str | None, compute_dtype: torch.dtype) -> Any:
    """A bitsandbytes config for 8-bit or 4-bit (nf4/fp4) loading of a frozen teacher."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; valid: {list(QUANTIZATIONS)} or null")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )


def label_kwargs(num_labels: int | None, label_names: list[str] | None) -> dict[str, Any]:
    if label_names:
        return {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
        }
    return {"num_labels": num_labels} if num_labels else {}


def load_pretrained(
    name_or_path: str,
    task: str = "classification",
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    dtype: str = "float32",
    quantization: str | None = None,
    revision: str | None = None,
    attn_implementation: str | None = None,
    teacher: nn.Module | None = None,
) -> PreTrainedModel:
    """``from_pretrained`` with a task head, dtype and optional bitsandbytes quantization."""
    cls = auto_class(task)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "revision": revision}
    if task == "classification":
        kwargs.update(label_kwargs(num_labels, label_names))
    if quantization:
        kwargs["quantization_config"] = quantization_config(quantization, torch_dtype(dtype))
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with transformers_quiet():  # its LOAD REPORT flags a new task head as MISSING: said once below instead
        model, info = cls.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    report_loading(model, name_or_path, info)
    model.litdistill_source = {
        "name_or_path": name_or_path,
        "revision": revision,
        "dtype": dtype,
        "quantization": quantization,
    }
    return model


@contextmanager
def transformers_quiet() -> Iterator[None]:
    """transformers' own warnings and weight-loading bar off for the duration (its logger prints to the
    console directly, outside the run's log)."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def report_loading(model: PreTrainedModel, source: str, info: dict[str, list[Any]]) -> None:
    """What transformers' load report says, in the project's words: a new task head is expected (the
    fine-tune trains it) and said once; weights missing from the body, or unexpected, are warned about."""
    prefix = f"{model.base_model_prefix}."
    missing = list(info.get("missing_keys") or [])
    head = [k for k in missing if not k.startswith(prefix)]
    body = [k for k in missing if k.startswith(prefix)]
    name = str(source)
    if head:
        labels = getattr(model.config, "num_labels", None)
        log.info("%s: a new %s-label task head (%s), trained by the fine-tune", name, labels, ", ".join(sorted(head)))
    if body:
        log.warning(
            "%s: %d weights of the model's body are not in the checkpoint (newly initialised): %s",
            name,
            len(body),
            ", ".join(sorted(body)[:8]) + (" ..." if len(body) > 8 else ""),
        )
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        log.warning(
            "%s: %d weights have another shape than the checkpoint's (newly initialised): %s",
            name,
            len(mismatched),
            ", ".join(str(m[0] if isinstance(m, tuple) else m) for m in mismatched[:8]),
        )


def from_config(
    config: dict[str, Any] | None = None,
    base: str | None = None,
    task: str = "classification",
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    dtype: str = "float32",
    seed: int | None = None,
    teacher: nn.Module | None = None,
) -> PreTrainedModel:
    """A randomly initialised model: ``config`` keys override ``base``'s config (smaller sizes);
    without ``base``, the teacher's config (a teacher built from a config has no path to name);
    without either, ``config`` describes the whole model (``model_type`` plus sizes)."""
    overrides = dict(config or {})
    if task == "classification":
        overrides.update(label_kwargs(num_labels, label_names))
    hf_config = model_config(overrides, base, teacher)
    if seed is not None:
        torch.manual_seed(seed)
    model = auto_class(task).from_config(hf_config, dtype=torch_dtype(dtype))
    model.litdistill_source = {"config": hf_config.to_dict(), "seed": seed}
    return model


def model_config(
    config: dict[str, Any] | None = None, base: str | None = None, teacher: nn.Module | None = None
) -> PretrainedConfig:
    """The Hugging Face config :func:`from_config` builds its model from; reading it creates no weights
    (a teacher cache resolves layer maps from it without loading any model)."""
    overrides = dict(config or {})
    if base is not None:
        return AutoConfig.from_pretrained(base, **overrides)
    if "model_type" not in overrides and getattr(teacher, "config", None) is not None:
        return AutoConfig.for_model(**{**teacher.config.to_dict(), **overrides})
    if "model_type" not in overrides:
        raise ValueError("from_config needs config.model_type (e.g. bert, llama) or a base model to shrink")
    return AutoConfig.for_model(overrides.pop("model_type"), **overrides)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # Llama-family tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def memory_footprint(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (quantized weights count at their packed size)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
