"""Kill the real CLI at several points, resume it each time, and land on the uninterrupted run's student."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# 2 epochs of 5 steps, validation (2 batches) after each; last.ckpt also every 2 steps; dropout on. The
# default recipe's shape: the teacher is fine-tuned, cached and loaded back with from_pretrained (which
# returns models in eval mode), and the student is cut from it. The reference run fine-tunes (a cold
# cache); every later run loads the cached teacher (warm): the students must still agree bit for bit.
COMMON = [
    "experiment=tiny",
    "baseline=false",
    "teacher_finetune.max_steps=2",
    "report.speed=false",
    "report.plots=false",
    "+trainer.enable_progress_bar=false",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=5",
    "+trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "callbacks.step_checkpoint.every_n_train_steps=2",
]
KILLER = "+callbacks.killer._target_=tests.killer.KillAt"
ALLOW = "resume_allow=[callbacks.killer]"  # each stage kills at another point: that callback may change


def litdistill(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"),
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }  # same threads in every run
    return subprocess.run(
        [sys.executable, "-m", "litdistill", *COMMON, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def last_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


def test_killed_three_times_and_resumed_reaches_the_same_student_bit_for_bit(tmp_path):
    reference = litdistill(tmp_path, [f"run_dir={tmp_path / 'reference'}"])
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "run"

    # SIGTERM mid-epoch: the step finishes, last.ckpt is written, the process exits 143
    proc = litdistill(tmp_path, [f"run_dir={run}", KILLER, "+callbacks.killer.step=3"])
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert last_step(run) == 3 and "resume=true run_dir=" in proc.stdout + proc.stderr

    # SIGTERM in the middle of validation (end of epoch 0)
    proc = litdistill(tmp_path, [f"run_dir={run}", "resume=true", ALLOW, KILLER, "+callbacks.killer.val_batch=0"])
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert last_step(run) == 5

    # SIGKILL half-way through writing last.ckpt at step 8: the step-6 checkpoint stays whole
    proc = litdistill(tmp_path, [f"run_dir={run}", "resume=true", ALLOW, KILLER, "+callbacks.killer.write_at_step=8"])
    assert proc.returncode == -9, proc.stderr[-3000:]
    leftovers = list((run / "checkpoints").glob(".last.ckpt.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size < (run / "checkpoints" / "last.ckpt").stat().st_size
    assert last_step(run) == 6
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        torch.load(ckpt, weights_only=False)  # every checkpoint in place is whole

    proc = litdistill(tmp_path, [f"run_dir={run}", "resume=true", ALLOW])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list((run / "checkpoints").glob(".*.tmp")) and (run / "report.json").is_file()
    assert not (tmp_path / "outputs").exists()  # everything went to the one run dir

    expected = load_file(tmp_path / "reference" / "student" / "model.safetensors")
    resumed = load_file(run / "student" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name


def test_a_resume_with_other_settings_or_into_a_missing_dir_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    proc = litdistill(tmp_path, [f"run_dir={run}", "trainer.max_epochs=1", KILLER, "+callbacks.killer.step=2"])
    assert proc.returncode == 143, proc.stderr[-3000:]
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    proc = litdistill(
        tmp_path,
        [f"run_dir={run}", "resume=true", "trainer.max_epochs=1", "optimizer.lr=1e-3", "data.batch_size=4", ALLOW],
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "data.batch_size: 16 -> 4; optimizer.lr: " in proc.stderr
        and "resume_allow=[data.batch_size,optimizer.lr]" in proc.stderr
    )
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # the record is untouched
    missing = tmp_path / "runn"
    proc = litdistill(tmp_path, [f"run_dir={missing}", "resume=true"])
    assert proc.returncode == 2 and f"run_dir={missing} does not exist" in proc.stderr and not missing.exists()
    proc = litdistill(
        tmp_path,
        [f"run_dir={run}", "resume=true", "trainer.max_epochs=2", "resume_allow=[callbacks.killer,trainer.max_epochs]"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # an allowed change: one more epoch
