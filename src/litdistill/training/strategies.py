"""Scale-out: strategy and precision checks made before any model is loaded, and what each strategy needs.

(``litdistill.config.checks.check_scaling`` refuses what cannot work, before any model loads.)
``pin_hydra_run_dir`` makes Lightning's DDP launcher start
its child processes in this job's output directory; ``ddp_launch_scope`` undoes what that launcher
leaves in the environment, so the next job of a multirun starts its own ranks. ``configure_strategy``
places the frozen teacher under FSDP (sharded like the student, or replicated on every rank).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, read_write
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("32", "bf16-mixed", "16-mixed", "bf16-true")
PRECISION_ALIASES = {"32-true": "32"}
TEACHER_PLACEMENTS = ("shard", "replicate")
# What Lightning's _SubprocessScriptLauncher writes into the launching process's os.environ for good.
_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# DeepSpeedStrategy reads its config from the JSON file this names when none is given.
DEEPSPEED_CONFIG_ENV = "PL_DEEPSPEED_CONFIG_PATH"
# Hydra overrides a DDP child must not repeat: it runs once, in this job's directory (Lightning adds those).
_PARENT_ONLY = (
    "hydra.mode",
    "hydra.run.dir",
    "hydra.sweep",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.job.name",
    "hydra.output_subdir",
)


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


@contextmanager
def ddp_launch_scope() -> Iterator[None]:
    """Run one job; afterwards put back the launch variables as they were before it, if this process is no
    launcher's child.

    Lightning's DDP launcher sets LOCAL_RANK=0, WORLD_SIZE, MASTER_PORT... in the process that starts the
    ranks and never removes them. The next job of a Hydra multirun, in the same process, would then take
    itself for a rank started from outside, start no ranks and wait for them forever. A process that
    found LOCAL_RANK already set (a DDP child, a torchrun rank) keeps its environment untouched; under
    SLURM, whose environment sets only MASTER_ADDR/MASTER_PORT, the next job derives them again.
    """
    before = {key: os.environ.get(key) for key in _LAUNCH_VARIABLES}
    try:
        yield
    finally:
        if before["LOCAL_RANK"] is None:
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def normalize_precision(precision: Any) -> str:
    value = PRECISION_ALIASES.get(str(precision), str(precision))
    if value not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r} is not supported; valid values: {', '.join(PRECISIONS)}")
    return value


def pin_hydra_run_dir() -> None:
    """Make Lightning's DDP launcher re-run *this job* in *this job's* directory.

    Lightning starts ranks 1..N-1 by re-executing ``sys.argv`` plus ``hydra.run.dir=<HydraConfig run.dir>``.
    From ``litdistill -m ...`` that would start a new sweep in each child, in a fresh directory. So the
    launching process rewrites ``sys.argv`` to this job's own overrides (no ``-m``) and points ``run.dir``
    at the job's output directory. A no-op outside Hydra and in processes a launcher already started.
    """
    from hydra.core.hydra_config import HydraConfig

    if "LOCAL_RANK" in os.environ or not HydraConfig.initialized():
        return
    import __main__

    hydra_cfg = HydraConfig.get()
    output_dir = OmegaConf.select(hydra_cfg, "runtime.output_dir", throw_on_missing=False)
    if not output_dir:  # composed, not run by Hydra (tests, notebooks): nothing would re-run it
        return
    keep = [o for o in hydra_cfg.overrides.hydra if not o.lstrip("+~").startswith(_PARENT_ONLY)]
    script = sys.argv[0] if getattr(__main__, "__spec__", None) else getattr(__main__, "__file__", sys.argv[0])
    sys.argv = [script, *hydra_cfg.overrides.task, *keep]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = output_dir


def start_ranks(trainer: L.Trainer) -> None:
    """Start the strategy's ranks now and join their process group, as ``trainer.fit`` would.

    Building the teacher cache (``cache=build``, or ``cache=auto`` without a store) runs before any fit.
    Lightning's DDP launcher starts ranks 1..N-1 only at a fit, so without this the launching process
    would build every shard alone. Each rank started here re-runs the job up to this point and builds
    its own ``shards[rank::world]``; ranks started from outside (torchrun, SLURM) just join the group.
    A no-op for one process, when a group is already running (teacher fine-tuning under DDP started the
    ranks), and for launchers that run a function in fresh processes (``ddp_spawn``, ``ddp_notebook``):
    those build in one process.
    """
    import torch.distributed as dist
    from lightning.pytorch.strategies.launchers.subprocess_script import (
        _SubprocessScriptLauncher,
    )

    strategy = trainer.strategy
    world = int(getattr(strategy, "num_processes", 1)) * int(getattr(strategy, "num_nodes", 1))  # world_size is 1 yet
    if world < 2 or (dist.is_available() and dist.is_initialized()):
        return
    if isinstance(strategy.launcher, _SubprocessScriptLauncher):
        strategy.launcher.launch(strategy.setup_environment, trainer=trainer)


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


def unsharded_models(cfg: DictConfig, student_state: dict[str, Any]) -> tuple[nn.Module | None, nn.Module]:
    """Rank 0 after FSDP: a fresh teacher from its config and a plain student holding the trained weights."""
    from hydra.utils import instantiate

    teacher = instantiate(cfg.teacher) if cfg.get("teacher") else None
    student = instantiate(cfg.student)(teacher=teacher)
    student.load_state_dict(student_state)
    return teacher, student


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
