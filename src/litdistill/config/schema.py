"""Typed schemas of the config nodes that hold plain values (``report``, ``export``, ``teacher_finetune``,
``cache``; ``generation`` and ``input`` of ``litdistill generate``), registered in Hydra's ConfigStore.

``conf/train.yaml`` puts each schema under its node (``schema/report@report`` in its defaults), so
Hydra merges the YAML and the command line over a dataclass: a wrong type (``report.threads=two``)
or an unknown key (``report.thread=2``) is refused when the config is composed, naming the full key.
Choices (kept as plain strings, so cache keys and ``config.yaml`` stay readable), ranges and
cross-field rules, which OmegaConf cannot express, are small named functions in
:mod:`litdistill.config.checks`, run before any data or model is loaded. Nodes whose keys are a
class's arguments (``trainer``, ``data``, ``teacher``, ``student``, ``loss``) are typed by those
classes through ``_target_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class ReportConfig:
    """What the report measures and draws."""

    metric: str = "f1"  # the task metric the report leads with (f1, accuracy, token_acc, perplexity, ...)
    threads: int = 2  # CPU threads for the speed columns, equal for every model
    speed: bool = True  # time every model side by side (latency at batch 1, throughput)
    repeats: int = 10  # timed repetitions at least, interleaved across models
    timing_budget_s: float = 20.0  # more rounds, up to this long, while a model's spread is above 10%
    plots: bool = True  # loss_curves.png and comparison.png beside report.md
    disk_size: bool = True  # each model's save_pretrained safetensors measured (false for huge teachers)
    seeds: int = 1  # N > 1: student and baseline trained under N seeds; their difference with a paired-bootstrap 95% CI


EXPORT_CHECKPOINTS = ("last", "best")


@dataclass
class ExportConfig:
    """Deployment formats of the student, each reloaded, checked against it and timed."""

    onnx: bool = False
    int8: bool = False
    opset: int = 17
    check_batches: int = 4
    baseline: bool = False  # also keep the labels-only baseline as baseline/ (a Hugging Face folder)
    checkpoint: str = "last"  # which student is scored and exported: last (end of training) | best (validation)


@dataclass
class TeacherFinetuneConfig:
    """Fit the teacher on the labels before distilling (cached by config)."""

    max_steps: int = 120
    max_epochs: int | None = None  # set: this many epochs over the labelled rows instead of max_steps
    lr: float = 1.0e-4
    warmup_ratio: float = 0.1


@dataclass
class CacheConfig:
    """The offline teacher cache (docs/caching.md); ``cache=build|use|auto`` set ``mode``."""

    mode: str = "none"  # none | build | use | auto
    root: str = "${paths.cache_dir}/teacher_outputs"
    dir: str | None = None
    splits: list[str] = field(default_factory=lambda: ["train", "validation"])
    outputs: str = "auto"  # auto | logits | topk
    k: int = 64
    dtype: str = "float16"  # float16 | bfloat16 | float32
    codec: str = "raw"  # raw | packed
    hidden_states: Any = "auto"  # auto | all | false | [layers]: checked by the cache (one value, several forms)
    shard_size: int = 256
    batch_size: int = 32
    verify: bool = True
    max_shards_in_memory: int = 256
    progress: bool = True


@dataclass
class GenerationConfig:
    """``litdistill generate``: the chat-completions settings (part of every result's key)."""

    temperature: float = 0.0
    max_tokens: int = 512
    top_p: float | None = None
    seed: int | None = None
    stop: Any = None  # a string or a list of them


@dataclass
class PromptInputConfig:
    """``litdistill generate``: where the prompts come from."""

    path: Any = None  # a file, or a list of files
    field: str = "prompt"
    id_field: str = "id"
    prompts: Any = None  # the prompts themselves: strings or {prompt:, id:} mappings
    limit: int | None = None


# node -> schema, for train.yaml's nodes and for generate.yaml's
SCHEMAS = {
    "report": ReportConfig,
    "export": ExportConfig,
    "teacher_finetune": TeacherFinetuneConfig,
    "cache": CacheConfig,
}
GENERATE_SCHEMAS = {"generation": GenerationConfig, "input": PromptInputConfig}


def register_schemas() -> None:
    """Store each schema as ``schema/<node>`` for the defaults lists (idempotent)."""
    store = ConfigStore.instance()
    for name, node in {**SCHEMAS, **GENERATE_SCHEMAS}.items():
        store.store(group="schema", name=name, node=node)


register_schemas()
