"""`python -m bench --smoke` in a subprocess: every section runs at tiny sizes, JSON and markdown come out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["default_run", "step_time", "loss_memory", "cache_speed", "ade_quality", "inference"]
TITLES = [
    "The default run",
    "Training step time and peak memory",
    "Loss memory",
    "Teacher cache speed-up",
    "Quality on real data",
    "CPU inference of the exported student",
]


def test_bench_smoke_writes_json_and_regenerates_the_markdown_block(tmp_path):
    results, markdown = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    shutil.copy(REPO / "BENCHMARKS.md", markdown)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results-dir", str(results), "--markdown", str(markdown)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    summary = json.loads((results / "bench_smoke.json").read_text())
    assert summary["mode"] == "smoke" and set(SECTIONS) <= set(summary["sections"])
    for name in SECTIONS:
        section = summary["sections"][name]
        if (REPO / "bench" / f"{name}.py").is_file():
            assert section["status"] == "ok", (name, section.get("error"))
        else:
            assert section["status"] == "not run"
    for name in ("step_time", "ade_quality", "inference"):
        assert (results / f"{name}_smoke.json").is_file()
    machine = summary["machine"]
    assert machine["cpu"] and machine["cores_logical"] and machine["versions"]["torch"]
    targets = {t["target"] for t in summary["targets"]}
    assert any("TRL" in t for t in targets) and any("97%" in t for t in targets) and any("1.05x" in t for t in targets)

    text = markdown.read_text()
    assert text.startswith("# Benchmarks") and "## What is measured, and how" in text  # hand-written part kept
    assert text.count("<!-- bench:begin") == 1 and text.count("<!-- bench:end -->") == 1
    for title in TITLES:
        assert title in text
    for needle in ("### Targets", "python -m bench --smoke", machine["cpu"], "| torch |", "GKDTrainer", "F1"):
        assert needle in text, needle

    # --render rebuilds the same block from the JSON alone, and replaces it rather than appending.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--render",
            "--results-dir",
            str(results),
            "--markdown",
            str(markdown),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert markdown.read_text().count("<!-- bench:begin") == 1

    # --only reruns a section and keeps the others' last results of this mode.
    before = json.loads((results / "bench_smoke.json").read_text())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--only",
            "loss_memory",
            "--results-dir",
            str(results),
            "--markdown",
            str(markdown),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = json.loads((results / "bench_smoke.json").read_text())
    assert after["rerun"] == ["loss_memory"] and after["sections"]["loss_memory"]["status"] == "ok"
    for name in ("step_time", "ade_quality", "inference"):
        assert after["sections"][name] == before["sections"][name]
    assert "were rerun" in markdown.read_text() and "GKDTrainer" in markdown.read_text()
