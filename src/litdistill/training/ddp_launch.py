"""Workarounds for three behaviours of Lightning's DDP launcher (``_SubprocessScriptLauncher``), kept
in this one module so they can go when Lightning changes; ``tests/test_ddp_launch.py`` runs Lightning's
own launcher code and fails when a behaviour below changes.

1. **It re-runs ``sys.argv`` in every child, plus ``hydra.run.dir=<run dir>``** (Lightning's
   ``_hydra_subprocess_cmd``). From ``litdistill -m ...`` that would start a new sweep in each child.
   :func:`pin_hydra_run_dir` rewrites ``sys.argv`` to this job's own overrides and points the run dir
   at this job's output directory before any rank starts.
2. **It writes MASTER_ADDR, MASTER_PORT, NODE_RANK, LOCAL_RANK and WORLD_SIZE into ``os.environ`` for
   good.** The next job of a multirun, in the same process, would take itself for a rank started from
   outside and wait for ranks that never come. :func:`ddp_launch_scope` puts them back after each job.
3. **It starts the ranks only inside ``trainer.fit``.** A teacher-cache build runs before the fit and
   is split across ranks, so :func:`start_ranks` calls the launcher early (its private API: the one
   place litdistill touches it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
from omegaconf import OmegaConf, read_write

# What Lightning's _SubprocessScriptLauncher writes into the launching process's os.environ for good.
_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
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
