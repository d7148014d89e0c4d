"""Real DDP on CPU: `litdistill trainer=ddp_cpu` (2 gloo processes) through the Hydra CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# Dropout off: each rank draws its own masks, so only the deterministic parts can match across layouts.
COMMON = [
    "experiment=tiny",
    "baseline=false",
    "teacher_finetune=null",
    "report.speed=false",
    "report.plots=false",
    "+trainer.enable_progress_bar=false",
    "+trainer.limit_train_batches=4",
    "+trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "+teacher.config.hidden_dropout_prob=0.0",
    "+teacher.config.attention_probs_dropout_prob=0.0",
]


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Outputs and caches under ``tmp_path``, offline, one thread per rank; never a launcher's child."""
    env = {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"),
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }  # 2 ranks on 2 cores
    for key in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT", "MASTER_ADDR"):
        env.pop(key, None)
    tmp_path.mkdir(parents=True, exist_ok=True)
    return env


def litdistill(tmp_path: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    proc = subprocess.run(
        ["litdistill", *COMMON, *args], cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = sorted((tmp_path / "outputs").glob("*/runs/*"))
    assert len(runs) == 1, runs  # one run dir, whatever the number of processes
    return proc, runs[0]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """The causal recipe, whose responses differ in length, so the ranks see different numbers of real
    tokens: the loss is the token mean over both ranks' tokens (the count is all-reduced), so 2 x 4
    examples per step train the same student as 8 in one process (a mean of per-rank token means was
    4e-4 off); the run leaves one run dir, rank 1's log in it, and one report."""
    args = [
        "experiment=tiny_causal",
        "teacher_finetune=null",
        "baseline=false",
        "report.speed=false",
        "report.plots=false",
        "+trainer.enable_progress_bar=false",
        "+trainer.limit_train_batches=4",
        "+trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "loss=kd_ce",
    ]
    runs, procs = {}, {}
    for name, extra in (("single", ["data.batch_size=8"]), ("ddp", ["trainer=ddp_cpu", "data.batch_size=4"])):
        env = cli_env(tmp_path / name)  # creates the folder
        procs[name] = subprocess.run(
            ["litdistill", *args, *extra], cwd=tmp_path / name, env=env, capture_output=True, text=True, timeout=600
        )
        assert procs[name].returncode == 0, procs[name].stderr[-4000:]
        found = sorted((tmp_path / name / "outputs").glob("*/runs/*"))
        assert len(found) == 1, found  # one run dir, whatever the number of processes
        runs[name] = found[0]

    ddp = runs["ddp"]
    assert (ddp / "train_ddp_process_1.log").is_file()  # rank 1 ran, in this run's dir
    assert (ddp / "report.json").is_file() and (ddp / "student" / "model.safetensors").is_file()
    assert procs["ddp"].stdout.count("| student |") == 1  # only rank 0 reports (a child's stdout is this one's)
    assert sorted(p.name for p in (ddp / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]

    one, two = (load_file(run / "student" / "model.safetensors") for run in (runs["single"], ddp))
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    assert diff < 1e-5, diff  # same data order, global batch and token normalisation


def test_a_ddp_resume_with_dropout_is_bit_exact(tmp_path):
    """Dropout on: each rank's random stream moves on by its own batches. A checkpoint keeps every rank's
    state (not only rank 0's, the writer), so resuming mid-epoch from the step-2 snapshot of a 2-rank run
    lands on that run's student bit for bit."""
    args = [
        "trainer=ddp_cpu",
        "data.batch_size=8",
        "teacher.config.hidden_dropout_prob=0.1",  # COMMON's 0.0 undone
        "teacher.config.attention_probs_dropout_prob=0.1",
    ]
    snapshots = tmp_path / "snapshots"
    _, reference = litdistill(
        tmp_path / "reference",
        [
            *args,
            "+callbacks.snapshot._target_=lightning.pytorch.callbacks.ModelCheckpoint",
            f"+callbacks.snapshot.dirpath={snapshots}",
            "+callbacks.snapshot.every_n_train_steps=2",
            "+callbacks.snapshot.save_top_k=-1",
        ],
    )
    step2 = next(snapshots.glob("*step=2.ckpt"))  # ModelCheckpoint's epoch=0-step=2.ckpt
    states = torch.load(step2, weights_only=False)["callbacks"]  # it holds the DataModule's OmegaConf hparams
    assert [len(v["rng_per_rank"]) for k, v in states.items() if k.startswith("FaultTolerance")] == [2]
    _, resumed = litdistill(tmp_path / "resumed", [*args, f"ckpt_path='{step2}'"])  # quoted: the name holds '='
    expected, got = (load_file(run / "student" / "model.safetensors") for run in (reference, resumed))
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name


def test_a_ddp_multirun_starts_fresh_ranks_for_every_job(tmp_path):
    """Lightning leaves LOCAL_RANK, WORLD_SIZE, MASTER_PORT... set in the process that launched job 1's ranks;
    job 2 in that process must still start its own ranks (it used to wait for them forever)."""
    args = [
        "-m",
        "trainer=ddp_cpu",
        "experiment=tiny",
        "debug=fast",
        "baseline=false",
        "report.plots=false",
        "teacher_finetune=null",
        "+trainer.enable_progress_bar=false",
        "loss.kd.temperature=1,2",
    ]
    try:
        proc = subprocess.run(
            ["litdistill", *args], cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=420
        )
    except subprocess.TimeoutExpired as hung:
        tail = (hung.stderr or b"")[-3000:].decode(errors="replace")
        pytest.fail(f"the multirun hung (job 2 waiting for ranks it never started):\n{tail}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = sorted((tmp_path / "outputs").glob("*/multiruns/*/*/"))
    assert [job.name for job in jobs] == ["0", "1"], jobs
    for job in jobs:
        assert (job / "report.json").is_file(), sorted(p.name for p in job.iterdir())
        assert (job / "train_ddp_process_1.log").is_file()  # each job ran its own rank 1, in its own dir
    assert proc.stdout.count("| student |") == 2  # rank 0 reported once per job
