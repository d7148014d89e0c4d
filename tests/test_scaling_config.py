"""Scale-out configs compose and validate: strategies, precision, SLURM launcher, Hydra child command, resume."""

from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict
from tests.conftest import tiny_bert

from litdistill.cli import _launch_args
from litdistill.config.checks import check_scaling
from litdistill.core.conf import config_dir
from litdistill.pipeline.builders import resume_from
from litdistill.training.ddp_launch import pin_hydra_run_dir
from litdistill.training.strategies import (
    PRECISIONS,
    configure_strategy,
    enable_gradient_checkpointing,
    strategy_kind,
)

FSDP_OK = ["teacher_finetune=null", "baseline=false"]


@pytest.mark.parametrize(
    ("option", "kind", "target"),
    [
        ("ddp", "ddp", "DDPStrategy"),
        ("ddp_cpu", "ddp", "DDPStrategy"),
        ("multinode", "ddp", "DDPStrategy"),
        ("fsdp", "fsdp", "FSDPStrategy"),
        ("deepspeed", "deepspeed", "DeepSpeedStrategy"),
    ],
)
def test_trainer_options_compose_validate_and_instantiate(option, kind, target, compose_train):
    cfg = compose_train([f"trainer={option}", *(FSDP_OK if option == "fsdp" else [])])
    assert strategy_kind(cfg.trainer.strategy)[0] == kind
    check_scaling(cfg)
    if kind == "deepspeed":
        assert strategy_kind(cfg.trainer.strategy) == ("deepspeed", 2)
        pytest.importorskip("deepspeed")
    strategy = instantiate(cfg.trainer.strategy)  # GPU strategies construct on CPU; only fit needs GPUs
    assert type(strategy).__name__ == target
    if option == "fsdp":
        assert strategy.kwargs["use_orig_params"] is True
    if option == "multinode":
        assert cfg.trainer.num_nodes == 2


def test_ddp_cpu_builds_a_two_process_gloo_trainer(compose_train):
    from litdistill.pipeline.builders import build_trainer

    cfg = compose_train(["trainer=ddp_cpu", "experiment=tiny"])
    trainer = build_trainer(cfg)
    assert trainer.world_size == 2 and trainer.num_devices == 2
    assert trainer.strategy.process_group_backend == "gloo"
    assert all(getattr(lg, "_litdistill_guarded", False) for lg in trainer.loggers)  # loggers wrapped


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.precision=16"], "valid values: 32, bf16-mixed, 16-mixed, bf16-true"),
        (["trainer.precision=fp8"], "trainer.precision='fp8' is not supported"),
        (["trainer=cpu", "trainer.precision=16-mixed"], "use trainer.precision=bf16-mixed on CPU"),
        (["trainer=deepspeed", "trainer.strategy.stage=3"], "with a teacher (two models in one engine)"),
        (["+trainer.strategy=deepspeed_stage_3_offload", "trainer.accelerator=gpu"], "DeepSpeed ZeRO-3 is refused"),
        (
            ["trainer=deepspeed", "trainer.strategy.stage=3", "~teacher", "tokenizer=x", "student=tiny_bert"],
            "Use trainer=deepspeed (ZeRO-2)",
        ),
        (["trainer=fsdp", "trainer.accelerator=cpu", *FSDP_OK], "the fsdp strategy needs GPUs"),
        (["trainer=fsdp", "baseline=false"], "teacher_finetune under FSDP"),
        (["trainer=fsdp", "teacher_finetune=null"], "baseline=true under FSDP"),
        (["teacher_placement=everywhere"], "valid: ['shard', 'replicate']"),
        (["trainer.accumulate_grad_batches=0"], "accumulate_grad_batches must be >= 1"),
        # a DeepSpeed config as a JSON file wins over `stage`, given in the config or by PL_DEEPSPEED_CONFIG_PATH
        (["trainer=deepspeed", "+trainer.strategy.config={zero3}"], "DeepSpeed ZeRO-3 is refused"),
        (["trainer=deepspeed", "$PL_DEEPSPEED_CONFIG_PATH={zero3}"], "DeepSpeed ZeRO-3 is refused"),
        (
            ["+trainer.strategy=deepspeed_stage_2", "trainer.accelerator=gpu", "$PL_DEEPSPEED_CONFIG_PATH={zero3}"],
            "DeepSpeed ZeRO-3 is refused",
        ),
        (["trainer=deepspeed", "+trainer.strategy.config={zero3}.missing"], "must be a readable DeepSpeed JSON config"),
    ],
)
def test_unsupported_combinations_are_refused_with_the_fix(overrides, message, compose_train, tmp_path, monkeypatch):
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8}))
    monkeypatch.delenv("PL_DEEPSPEED_CONFIG_PATH", raising=False)
    overrides = [o.format(zero3=zero3) for o in overrides]
    for variable in (o[1:] for o in overrides if o.startswith("$")):  # "$NAME=value": an environment variable
        monkeypatch.setenv(*variable.split("=", 1))
    with pytest.raises(ValueError) as error:
        check_scaling(compose_train([o for o in overrides if not o.startswith("$")]))
    assert message in str(error.value)


def test_every_listed_precision_passes(compose_train):
    for precision in (*PRECISIONS, "32-true"):
        check_scaling(compose_train([f"trainer.precision={precision}", "trainer.accelerator=gpu"]))


def test_refusal_happens_before_any_data_or_model_is_loaded(compose_train, tmp_path, monkeypatch):
    from litdistill.pipeline import builders
    from litdistill.pipeline import train as train_module

    loaded = []
    monkeypatch.setattr(builders, "instantiate", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    cfg = compose_train(["experiment=tiny", "trainer=deepspeed", "trainer.strategy.stage=3"])
    with pytest.raises(ValueError, match="ZeRO-3"):
        train_module.train(cfg)
    assert not loaded


def _compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_config_composes_from_the_trainer_sizes():
    try:
        cfg = _compose_with_hydra(["hydra/launcher=slurm", "trainer=multinode", "trainer.devices=4"])
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
        assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
        assert launcher.max_num_timeout >= 1
        assert type(instantiate(launcher)).__name__ == "SlurmLauncher"
        single = _compose_with_hydra(["hydra/launcher=slurm", "trainer=ddp"]).hydra.launcher
        assert (single.nodes, single.tasks_per_node) == (1, 2)
    finally:
        GlobalHydra.instance().clear()


def test_ddp_children_rerun_this_job_in_this_jobs_directory(tmp_path, monkeypatch):
    """From a multirun job, Lightning's child command must be this job's overrides, once, in its dir."""
    from lightning.fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd

    try:
        cfg = _compose_with_hydra(
            ["experiment=tiny", "loss.kd.temperature=2", "hydra.mode=MULTIRUN", f"hydra.searchpath=[file://{tmp_path}]"]
        )
        job_dir = str(tmp_path / "multiruns" / "0")
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = job_dir
            cfg.hydra.runtime.cwd = str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        monkeypatch.setattr(sys, "argv", ["litdistill train", "-m", "experiment=tiny", "loss.kd.temperature=1,2"])
        pin_hydra_run_dir()
        command, cwd = _hydra_subprocess_cmd(local_rank=1)
        args = command[3:] if command[1] == "-m" else command[2:]  # after `python -m module` / `python script`
        assert "-m" not in args and "loss.kd.temperature=1,2" not in args
        assert "loss.kd.temperature=2" in command and "experiment=tiny" in command
        assert f"hydra.searchpath=[file://{tmp_path}]" in command  # user config dirs still reach the child
        assert "hydra.mode=MULTIRUN" not in command
        assert command[-3:-1] == [f'hydra.run.dir="{job_dir}"', "hydra.job.name=train_ddp_process_1"]
        assert cwd == str(tmp_path)
    finally:
        GlobalHydra.instance().clear()


def test_run_dir_alias_and_torchrun_ranks_need_a_shared_run_dir(monkeypatch):
    assert _launch_args(["run_dir=/x/y", "resume=true"]) == ["hydra.run.dir=/x/y", "resume=true"]
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SystemExit, match="run_dir=<shared path>"):
        _launch_args(["trainer=ddp"])
    assert _launch_args(["trainer=ddp", "run_dir=/shared"])[-1] == "hydra.run.dir=/shared"


def test_resume_finds_the_newest_checkpoint_of_the_run_dir(compose_train, tmp_path):
    assert resume_from(compose_train(["ckpt_path=/some/file.ckpt", "resume=true"])) == "/some/file.ckpt"
    assert resume_from(compose_train([])) is None
    with pytest.raises(FileNotFoundError, match="pass run_dir=<the interrupted run's directory>"):
        resume_from(compose_train(["resume=true"]))
    assert resume_from(compose_train(["resume=auto"])) is None
    with pytest.raises(ValueError, match="valid: false, true"):
        resume_from(compose_train(["resume=maybe"]))
    ckpts = tmp_path / "out" / "checkpoints"
    ckpts.mkdir(parents=True)
    for i, name in enumerate(["epoch_000.ckpt", "last.ckpt", ".last.ckpt.x1.tmp"]):
        (ckpts / name).write_bytes(b"x")
        os.utime(ckpts / name, (time.time() + i, time.time() + i))
    assert resume_from(compose_train(["resume=true"])) == str(ckpts / "last.ckpt")
    assert not (ckpts / ".last.ckpt.x1.tmp").exists()  # the cut write's leftover is cleared, never chosen
    hpc = tmp_path / "out" / "hpc_ckpt_1.ckpt"  # Lightning's SLURM requeue checkpoint, newer
    hpc.write_bytes(b"x")
    os.utime(hpc, (time.time() + 10, time.time() + 10))
    assert resume_from(compose_train(["resume=auto"])).endswith("hpc_ckpt_1.ckpt")


def test_student_gradient_checkpointing_flag_gives_the_same_gradients():
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, 1000, (4, 16)),
        "attention_mask": torch.ones(4, 16, dtype=torch.long),
        "labels": torch.tensor([0, 1, 1, 0]),
    }
    grads = []
    for checkpointing in (False, True):
        student = tiny_bert(layers=2, seed=1, dropout=0.0)
        if checkpointing:
            enable_gradient_checkpointing(student)
            assert student.is_gradient_checkpointing
        student.train()
        student(**batch).loss.backward()
        grads.append([p.grad.clone() for p in student.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    with pytest.raises(ValueError, match="does not support it"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("placement", ["shard", "replicate"])
def test_fsdp_teacher_placement_sets_wrap_policy_and_ignored_modules(placement):
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = FSDPStrategy()
    strategy.parallel_devices = [torch.device("cpu")]
    teacher, student = tiny_bert(), tiny_bert(layers=2, seed=1)
    configure_strategy(SimpleNamespace(strategy=strategy), student, teacher, placement)
    wrapped = {c.__name__ for c in strategy.kwargs["auto_wrap_policy"]._module_classes}
    assert wrapped == set(student._no_split_modules) and "BertLayer" in wrapped  # one FSDP unit per block
    assert strategy.kwargs.get("ignored_modules", []) == ([teacher] if placement == "replicate" else [])
