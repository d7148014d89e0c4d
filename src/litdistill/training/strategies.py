"""Scale-out: what each strategy needs, and the names of the strategies and precisions litdistill runs.

``configure_strategy`` places the frozen teacher under FSDP (sharded like the student, or replicated
on every rank); ``gather_full_student`` brings the FSDP-trained student back whole. The refusals of
what cannot work run before any model loads (``litdistill.config.checks.check_scaling``); the
workarounds for Lightning's DDP launcher are in ``litdistill.training.ddp_launch``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("32", "bf16-mixed", "16-mixed", "bf16-true")
PRECISION_ALIASES = {"32-true": "32"}
TEACHER_PLACEMENTS = ("shard", "replicate")
# DeepSpeedStrategy reads its config from the JSON file this names when none is given.
DEEPSPEED_CONFIG_ENV = "PL_DEEPSPEED_CONFIG_PATH"


def strategy_kind(strategy: Any) -> tuple[str, int | None]:
    """``(kind, zero_stage)`` of a Trainer ``strategy`` given by name or as a ``_target_`` node.

    ``kind`` is one of ``auto``, ``ddp``, ``fsdp``, ``deepspeed`` or the lower-cased name itself;
    ``zero_stage`` is set for DeepSpeed only (DeepSpeedStrategy's default stage is 2; a DeepSpeed
    config, as a mapping, a JSON file's path or ``PL_DEEPSPEED_CONFIG_PATH``, overrides it).
    """
    if strategy is None:
        return "auto", None
    if isinstance(strategy, str):
        name, config = strategy.lower(), None
        stage = re.search(r"stage_(\d)", name)
        default = int(stage.group(1)) if stage else 2
    elif isinstance(strategy, Mapping):
        name = str(strategy.get("_target_", "")).rsplit(".", 1)[-1].lower()
        config, default = strategy.get("config"), int(strategy.get("stage", 2))
    else:  # an instantiated Strategy object: its config is loaded already
        name, config, default = type(strategy).__name__.lower(), getattr(strategy, "config", None) or {}, 2
    for kind in ("deepspeed", "fsdp", "ddp"):
        if kind in name:
            return kind, _zero_stage(config, default) if kind == "deepspeed" else None
    return name or "auto", None


def _zero_stage(config: Any, default: int) -> int:
    """The ZeRO stage DeepSpeedStrategy will run: ``zero_optimization.stage`` of its config, else ``default``.

    Read the way DeepSpeedStrategy reads it, so a ZeRO-3 config cannot slip past the refusal: a mapping,
    a JSON file's path, or, when no config is given, the JSON file ``PL_DEEPSPEED_CONFIG_PATH`` names.
    """
    source = "trainer.strategy.config"
    if config is None and os.environ.get(DEEPSPEED_CONFIG_ENV):
        source, config = DEEPSPEED_CONFIG_ENV, os.environ[DEEPSPEED_CONFIG_ENV]
    if isinstance(config, (str, Path)):
        try:
            config = json.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{source}={str(config)!r} must be a readable DeepSpeed JSON config file (or a mapping): {error}"
            ) from error
    stage = (config.get("zero_optimization") or {}).get("stage") if isinstance(config, Mapping) else None
    return int(stage if stage is not None else default)


def normalize_precision(precision: Any) -> str:
    value = PRECISION_ALIASES.get(str(precision), str(precision))
    if value not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r} is not supported; valid values: {', '.join(PRECISIONS)}")
    return value


def gather_full_student(trainer: L.Trainer) -> dict[str, Any] | None:
    """FSDP only (None otherwise): the student's full weights, gathered by every rank, on rank 0's CPU.

    FSDP shards the models in place; the exported student and the report need whole ones.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    root = trainer.strategy.model
    full = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, full):
        state = root.state_dict()
    return {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}


def leave_process_group() -> None:
    """After the last collective (fit), rank 0 goes on alone: torchmetrics would otherwise try to sync."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def enable_gradient_checkpointing(student: nn.Module) -> None:
    """Recompute the student's activations in backward (Hugging Face models), trading compute for memory."""
    if not getattr(student, "supports_gradient_checkpointing", False):
        raise ValueError(f"student_gradient_checkpointing=true, but {type(student).__name__} does not support it")
    student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def block_classes(*models: nn.Module | None) -> set[type[nn.Module]]:
    """The transformer-block classes of Hugging Face models (their ``_no_split_modules``): FSDP's wrap units."""
    classes = set()
    for model in models:
        if model is None:
            continue
        names = set(getattr(model, "_no_split_modules", None) or ())
        classes |= {type(m) for m in model.modules() if type(m).__name__ in names}
    return classes


def configure_strategy(
    trainer: L.Trainer, student: nn.Module, teacher: nn.Module | None, teacher_placement: str = "shard"
) -> None:
    """FSDP: wrap each transformer block of the student (and of the teacher when it is sharded) in its
    own unit, unless the config names a policy; ``teacher_placement=replicate`` keeps a whole teacher
    on every rank, outside FSDP. Other strategies need nothing: the teacher is frozen before wrapping,
    so DDP leaves it out of gradient sync and DeepSpeed (ZeRO-2) out of the optimizer."""
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = trainer.strategy
    if not isinstance(strategy, FSDPStrategy):
        return
    replicate = teacher is not None and teacher_placement == "replicate"
    if "auto_wrap_policy" not in strategy.kwargs:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        strategy.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(block_classes(student, None if replicate else teacher))
    if replicate:
        strategy.kwargs["ignored_modules"] = [*strategy.kwargs.get("ignored_modules", []), teacher]
        teacher.to(strategy.root_device)  # FSDP moves only what it manages
