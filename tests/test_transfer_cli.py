"""The transfer set and report.seeds through the real CLI: counts, the teacher cache scoring every row once,
the baseline on the labelled rows for as many steps, and the paired interval from predictions on disk."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from tests.test_cli import only_run_dir, run_cli

from litdistill.reporting.evaluation import score


@pytest.mark.slow
def test_label_scarce_run_with_unlabelled_text_augmentation_cache_and_three_seeds(tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(f"Patient {i} was started on lithium for bipolar disorder." for i in range(20)) + "\n")
    run_cli(
        [
            "experiment=tiny",
            "data.label_fraction=0.25",
            f"data.unlabeled={pool}",
            "augment=neighbours",
            "augment.n=1",
            "cache=auto",
            "student=tiny_bert",  # the cache never loads the teacher: a student not cut from it
            "report.seeds=3",
            "report.speed=false",
        ],
        tmp_path,
    )
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    rows = report["train_rows"]
    assert rows["labelled"] == 32 and rows["hidden_labels"] == 96 and rows["unlabeled"] == 20
    assert 1 <= rows["augmented"] <= 32 and rows["total"] == 148 + rows["augmented"]

    [manifest] = (tmp_path / "cache").glob("**/manifest.json")  # the teacher scored the whole transfer set once
    assert json.loads(manifest.read_text())["splits"]["train"]["examples"] == rows["total"]

    steps = {name: row["train_steps"] for name, row in report["models"].items() if "train_steps" in row}
    assert steps["baseline"] == steps["student"] > 0  # as many steps, over the 32 labelled rows only

    margin = report["student_minus_baseline"]
    assert margin["seeds"] == 3 and len(margin["per_seed"]) == 3 and margin["metric"] == "f1"
    low, high = margin["ci95"]
    assert low <= margin["difference"] <= high
    with open(run / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert {"student_seed43", "baseline_seed43", "student_seed44", "baseline_seed44"} <= set(table[0])
    labels = torch.tensor([int(r["label"]) for r in table])

    def f1(column: str) -> float:
        return score(torch.tensor([int(r[column]) for r in table]), labels, "classification", 2)["f1"]

    assert margin["per_seed"][0] == pytest.approx(f1("student") - f1("baseline"), abs=1e-6)
    assert margin["per_seed"][2] == pytest.approx(f1("student_seed44") - f1("baseline_seed44"), abs=1e-6)
    md = (run / "report.md").read_text()
    assert "mean of 3 seeds, paired-bootstrap 95% interval" in md and "32 labelled" in md


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.label_fraction=0"], r"data.label_fraction=0: must be a number in \(0, 1\]"),
        (["data.label_fraction=0.5", "loss=ce"], r"loss=\['ce'\] has only hard-label terms"),
        (["data.unlabeled=/nowhere/pool.csv"], "data.unlabeled=/nowhere/pool.csv: no such file"),
        (["report.seeds=3", "baseline=false"], "report.seeds=3 compares the student with the labels-only baseline"),
    ],
)
def test_bad_transfer_settings_fail_before_any_model_loads(overrides, message, tmp_path):
    proc = run_cli(["experiment=tiny", *overrides], tmp_path, check=False)
    assert proc.returncode == 1
    assert __import__("re").search(message, proc.stderr), proc.stderr[-2000:]
    assert "fine-tun" not in proc.stdout + proc.stderr.split("error:")[0]  # nothing was trained
    assert not list((tmp_path / "cache").glob("teachers/*"))  # no teacher was fine-tuned or stored


@pytest.mark.slow
def test_two_teachers_teach_the_unlabelled_rows_and_are_fine_tuned_on_the_labelled_ones(tmp_path):
    run_cli(
        [
            "experiment=tiny",
            "debug=fast",
            "teacher=multi",
            "teacher@teacher.teachers.minilm=tiny_bert",
            "teacher.teachers.minilm.seed=3",
            "data.label_fraction=0.5",
            "teacher_finetune.max_steps=2",
            "report.plots=false",
            "report.speed=false",
        ],
        tmp_path,
    )
    report = json.loads((only_run_dir(tmp_path) / "report.json").read_text())
    assert report["train_rows"]["labelled"] == 64 and report["train_rows"]["hidden_labels"] == 64
    assert set(report["teachers_memory"]["teachers"]) == {"minilm", "tiny"}
    assert len(list((tmp_path / "cache" / "teachers").iterdir())) == 2  # each member fine-tuned (on 64 rows)
