"""`litdistill rank`: a leaderboard across runs, its order, its Pareto fronts, its limits, its intervals.

The end-to-end test runs a real 4-job multirun (temperature x student depth, tiny models), which ends by
printing its leaderboard, then ranks it again with a latency limit; each claim is checked against the
runs' own report.json numbers, computed here without the leaderboard's code.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from litdistill.cli.rank import parse_options
from litdistill.reporting.leaderboard import pareto_front, rank, seed_interval

REPO = Path(__file__).resolve().parents[1]


# ---- the pieces -------------------------------------------------------------------------------------------
def test_pareto_front_keeps_exactly_the_non_dominated_points():
    points = {  # (quality up, cost down)
        0: (0.90, 10.0),  # the best quality
        1: (0.85, 5.0),  # cheaper, a little worse: on the front
        2: (0.85, 6.0),  # dominated by 1 (same quality, dearer)
        3: (0.80, 5.0),  # dominated by 1 (same cost, worse)
        4: (0.70, 1.0),  # the cheapest
        5: (0.70, 1.0),  # a tie with 4: neither dominates the other
        6: (0.60, 20.0),  # dominated by everything
    }
    assert pareto_front(points) == {0, 1, 4, 5}


def test_metric_over_seeds_is_the_mean_with_an_interval_around_it(tmp_path):
    labels = [1, 0, 1, 1, 0, 0, 1, 0] * 5  # 40 test rows
    seed42 = [1, 0, 1, 0, 0, 0, 1, 0] * 5  # 7 of 8 right: acc 0.875
    seed43 = [1, 1, 1, 1, 0, 1, 1, 0] * 5  # 6 of 8 right: acc 0.75
    with open(tmp_path / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "teacher", "student", "baseline", "student_seed43", "baseline_seed43"])
        for i, (y, a, b) in enumerate(zip(labels, seed42, seed43)):
            writer.writerow([i, y, y, a, 0, b, 0])
    mean, (low, high), seeds = seed_interval(tmp_path, "acc", 2)
    assert seeds == 2 and mean == pytest.approx((0.875 + 0.75) / 2)
    assert low < mean < high and high - low < 0.3
    (tmp_path / "one").mkdir()  # one seed: no interval
    with open(tmp_path / "one" / "predictions.csv", "w") as f:
        f.write("index,label,student\n0,1,1\n")
    assert seed_interval(tmp_path / "one", "acc", 2) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["rank.bogus=1"], "unknown option rank.bogus; valid: rank.by, rank.max_latency_ms"),
        (["rank.max_latency_ms=fast"], "rank.max_latency_ms='fast' must be a number"),
        (["by=f1"], "'by=f1': expected rank.by=<column> or rank.<limit>=<number>"),
    ],
)
def test_bad_rank_options_name_the_option_and_what_is_valid(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_options(options)


def test_a_bad_ranking_column_is_refused_before_any_run_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"rank.by='speed' is not a leaderboard column; valid: \['acc', 'f1'"):
        rank([tmp_path / "not-there"], by="speed")
    with pytest.raises(FileNotFoundError, match="no report.json under"):
        rank([tmp_path])


# ---- a real multirun, then `litdistill rank` ---------------------------------------------------------------
def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"),
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "TOKENIZERS_PARALLELISM": "false",
    }


def _reports(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/report.json")}


def _front(reports: dict[str, dict], cost: str) -> set[str]:
    """The non-dominated runs on (student f1 up, cost down), from the reports, by brute force."""
    point = {n: (r["models"]["student"]["metrics"]["f1"], r["models"]["student"][cost]) for n, r in reports.items()}
    return {
        n
        for n, (q, c) in point.items()
        if not any(q2 >= q and c2 <= c and (q2 > q or c2 < c) for m, (q2, c2) in point.items() if m != n)
    }


def test_multirun_ends_with_a_leaderboard_and_rank_orders_limits_and_fronts_it(tmp_path):
    args = [
        "-m",
        "experiment=tiny",
        "loss.kd.temperature=1,4",
        "student.every=2,4",  # the tiny teacher's 4 layers: 2-layer and 1-layer students
        "baseline=false",
        "report.plots=false",
        "report.repeats=3",
        "report.timing_budget_s=0.5",
        "teacher_finetune.max_steps=3",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "litdistill", *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [sweep] = (tmp_path / "outputs").glob("*/multiruns/*")
    reports = _reports(sweep)
    assert len(reports) == 4
    output = proc.stdout + proc.stderr
    assert f"leaderboard of {sweep}" in output and "| loss.kd.temperature | student.every |" in output

    with open(sweep / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"] and (sweep / "leaderboard.png").stat().st_size > 0
    assert {(r["loss.kd.temperature"], r["student.every"]) for r in rows} == {
        ("1", "2"),
        ("1", "4"),
        ("4", "2"),
        ("4", "4"),
    }  # only the swept settings differ; where each run writes is not a column
    for row in rows:  # every number is its run's report's
        student = reports[row["run"]]["models"]["student"]
        assert float(row["f1"]) == student["metrics"]["f1"] and float(row["latency_ms"]) == student["latency_ms"]
        assert float(row["params_m"]) == pytest.approx(student["params_m"])
    order = [(-float(r["f1"]), float(r["latency_ms"])) for r in rows]
    assert order == sorted(order)  # best f1 first, ties by the faster
    for cost, name in (("latency_ms", "latency"), ("disk_mb", "size")):
        assert {r["run"] for r in rows if name in r["pareto"].split("+")} == _front(reports, cost), name

    # again by hand, fastest first, with a latency limit that sets the slower half apart
    latencies = sorted(r["models"]["student"]["latency_ms"] for r in reports.values())
    bound = (latencies[1] + latencies[2]) / 2
    ranked = subprocess.run(
        ["litdistill", "rank", str(sweep), "rank.by=latency_ms", f"rank.max_latency_ms={bound}", "-o", "board"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ranked.returncode == 0, ranked.stderr
    assert "Ranked by latency_ms, lowest first" in ranked.stdout
    with open(tmp_path / "board" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [float(r["latency_ms"]) for r in rows if r["rank"] != "-"]
    assert kept == latencies[:2]  # the two under the limit, fastest first
    assert all(r["excluded"].startswith("latency_ms ") and float(r["latency_ms"]) > bound for r in rows[2:])
