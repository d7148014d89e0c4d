"""The Lightning behaviours that litdistill.training.ddp_launch works around, run on Lightning's own code:
when one of these tests fails, Lightning changed, and the workaround may go (or must change).
(The child command, behaviour 1, is checked in test_scaling_config.py with Lightning's _hydra_subprocess_cmd.)"""

from __future__ import annotations

import os

import lightning as L
import torch.distributed as dist
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from litdistill.training.ddp_launch import _LAUNCH_VARIABLES, ddp_launch_scope


def test_the_launcher_leaves_its_variables_behind_and_the_scope_removes_them(monkeypatch):
    for key in _LAUNCH_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=1, num_nodes=1)
    with ddp_launch_scope():
        launcher._call_children_scripts()  # one process: no child is started, the variables are still set
        assert {key for key in _LAUNCH_VARIABLES if key in os.environ} == set(_LAUNCH_VARIABLES)
    assert not [key for key in _LAUNCH_VARIABLES if key in os.environ]


def test_a_rank_started_from_outside_keeps_its_environment(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with ddp_launch_scope():
        os.environ["MASTER_PORT"] = "12345"
    assert os.environ["LOCAL_RANK"] == "1" and os.environ["MASTER_PORT"] == "12345"
    monkeypatch.delenv("MASTER_PORT")


def test_ranks_start_only_inside_fit_through_the_private_launcher(monkeypatch):
    """A DDP Trainer on CPU has built its launcher but started nothing: start_ranks must call it early."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
    assert "LOCAL_RANK" not in os.environ and not (dist.is_available() and dist.is_initialized())
