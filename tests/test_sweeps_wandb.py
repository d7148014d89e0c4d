"""W&B sweep files (conf/sweep/*.yaml) and W&B logging, offline.

One real CLI run (module fixture) is a sweep suggestion run the way the W&B agent would start it,
with ``logger=wandb`` under ``WANDB_MODE=offline``, the ONNX/int8 exports and the report plots on;
several tests read its outputs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from litdistill.cli import sweeping
from litdistill.cli.sweeping import COMMAND, load_sweep, render_overrides, suggest, sweep_command, validate_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "conf" / "sweep").glob("*.yaml"))


def test_sweep_files_live_in_conf_sweep_and_no_primary_config_selects_them():
    from litdistill.core.conf import config_dir

    assert len(SWEEPS) >= 3 and sweeping.sweeps_dir() == config_dir() / "sweep" == REPO / "conf" / "sweep"
    assert not any("sweep" in p.read_text() for p in config_dir().glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_a_valid_wandb_sweep(path):
    sweep = load_sweep(path)
    assert validate_sweep(sweep) == []
    assert sweep["method"] in ("grid", "random", "bayes") and sweep["metric"]["goal"] == "maximize"
    assert sweep["metric"]["name"] == "val/student/f1"  # logged by the module every validation
    assert sweep["command"] == COMMAND
    assert sweep["parameters"]["logger"] == {"value": "wandb"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_suggestions_render_as_overrides_that_hydra_composes(path, compose_train):
    sweep = load_sweep(path)
    suggestions = suggest(sweep, n=3, seed=1)
    assert len(suggestions) == 3
    default = compose_train([])
    for params in suggestions:
        assert set(params) == set(sweep["parameters"])
        overrides = render_overrides(params)
        assert all("=" in o and not o.startswith("-") for o in overrides)
        cfg = compose_train(overrides)
        for key, value in params.items():
            if key == "logger":
                assert "wandb" in cfg.logger
                continue
            absent = object()  # a null default (student.every) counts as present; a misspelt key does not
            assert OmegaConf.select(default, key, default=absent) is not absent, f"{key} is not a key of the config"
            assert OmegaConf.select(cfg, key) == pytest.approx(value), key
            spec = sweep["parameters"][key]
            if "values" in spec:
                assert value in spec["values"]
            else:
                assert spec["min"] <= value <= spec["max"]


def test_grid_is_complete_and_ordered():
    sweep = load_sweep(REPO / "conf" / "sweep" / "kd_temperature.yaml")
    expected = [{"logger": "wandb", "loss.kd.temperature": t} for t in (1.0, 2.0, 4.0, 8.0)]
    assert suggest(sweep, n=10) == expected


def test_suggestions_are_w_and_bs_own_and_seeded():
    sweep = load_sweep(REPO / "conf" / "sweep" / "kd_weights.yaml")
    assert suggest(sweep, n=4, seed=3) == suggest(sweep, n=4, seed=3)
    assert suggest(sweep, n=4, seed=3) != suggest(sweep, n=4, seed=4)


def test_a_misspelt_swept_key_is_refused_with_the_near_key(tmp_path):
    """The validator composes the training config: `loss.kd.temprature` is not a key, and it says which is."""
    sweep = load_sweep(REPO / "conf" / "sweep" / "kd_temperature.yaml")
    sweep["parameters"]["loss.kd.temprature"] = sweep["parameters"].pop("loss.kd.temperature")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(sweep))
    proc = subprocess.run([sys.executable, "-m", "litdistill.cli.sweeping", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "parameter loss.kd.temprature: not a key of the training config; did you mean loss.kd.temperature?" in (
        proc.stdout
    )
    good = subprocess.run(
        [sys.executable, "-m", "litdistill.cli.sweeping", *map(str, SWEEPS), "-n", "1"], capture_output=True, text=True
    )
    assert good.returncode == 0 and "INVALID" not in good.stdout, good.stdout + good.stderr[-2000:]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"method": "hyperopt"}, "method must be one of"),
        ({"metric": {"goal": "maximize"}}, "metric needs a name"),
        ({"parameters": {}}, "parameters must map"),
        (
            {"method": "grid", "parameters": {"optimizer.lr": {"distribution": "uniform", "min": 0.1, "max": 0.2}}},
            "grid sweep needs value/values",
        ),
        ({"parameters": {"optimizer.lr": {"distribution": "uniform", "min": 0.2, "max": 0.1}}}, "must be below max"),
        ({"command": ["python", "train.py"]}, "command must be"),
    ],
)
def test_invalid_sweeps_are_refused_with_the_reason(change, problem):
    sweep = {**load_sweep(REPO / "conf" / "sweep" / "kd_weights.yaml"), **change}
    problems = validate_sweep(sweep)
    assert any(problem in p for p in problems), problems


# ---- one offline run: a sweep suggestion, W&B logger, exports, plots ------------------------------
@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep_run")
    sweep = load_sweep(REPO / "conf" / "sweep" / "kd_weights.yaml")
    params = suggest(sweep, n=2, seed=5)[1]
    extra = [
        "experiment=tiny",
        "debug=fast",
        "baseline=true",
        "report.speed=true",
        "report.repeats=2",
        "export.onnx=true",
        "export.int8=true",
        "logger.wandb.log_model=true",
    ]
    cmd = sweep_command(sweep, params) + extra
    env = {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(tmp / "outputs"),
        "LITDISTILL_CACHE": str(tmp / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp / "wb"),
        "WANDB_SILENT": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = sorted((tmp / "outputs").glob("*/runs/*"))
    assert len(runs) == 1, runs
    return {"params": params, "run": runs[0], "wandb": tmp / "wb" / "wandb", "stdout": proc.stdout, "cmd": cmd}


def test_agent_command_is_python_dash_m_litdistill_with_flat_overrides(offline_run):
    cmd = offline_run["cmd"]
    assert cmd[0] == "/usr/bin/env" and cmd[2:4] == ["-m", "litdistill"]
    assert f"loss.kd.weight={offline_run['params']['loss.kd.weight']}" in cmd


def test_sweep_suggestion_reaches_the_run_config(offline_run):
    cfg = yaml.safe_load((offline_run["run"] / "config.yaml").read_text())
    params = offline_run["params"]
    assert cfg["loss"]["kd"]["weight"] == pytest.approx(params["loss.kd.weight"])
    assert cfg["loss"]["ce"]["weight"] == pytest.approx(params["loss.ce.weight"])
    assert cfg["optimizer"]["lr"] == pytest.approx(params["optimizer.lr"])
    assert set(cfg["logger"]) == {"csv", "wandb"}


def test_wandb_offline_run_holds_metrics_config_report_and_student(offline_run):
    run_dirs = list(offline_run["wandb"].glob("offline-run-*"))
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    records = next(run_dir.glob("run-*.wandb")).read_bytes()
    for name in (
        b"train/loss/kd",
        b"train/loss/ce",
        b"val/student/f1",
        b"val/agreement",
        b"report/table",
        b"report/student/f1",
        b"report/export/onnx/latency_ms",
        b"temperature",
    ):
        assert name in records, name
    assert b"student-" in records  # the model artifact (logger.wandb.log_model=true)
    config = yaml.safe_load((run_dir / "files" / "litdistill_config.yaml").read_text())
    assert config["loss"]["kd"]["weight"] == pytest.approx(offline_run["params"]["loss.kd.weight"])
    assert config["paths"]["output_dir"] == str(offline_run["run"])  # resolved
    table = json.loads(next((run_dir / "files" / "media" / "table").rglob("*.table.json")).read_text())
    assert table["columns"][0] == "model" and "f1" in table["columns"]
    assert [row[0] for row in table["data"]][:3] == ["teacher", "student", "baseline"]
    assert {"student (onnx)", "student (int8)"} <= {row[0] for row in table["data"]}
    report = json.loads((offline_run["run"] / "report.json").read_text())
    agreement = {row[0]: row[table["columns"].index("agreement")] for row in table["data"]}
    assert agreement["student"] == pytest.approx(report["agreement"])
    assert agreement["baseline"] == pytest.approx(report["models"]["baseline"]["agreement"])
    assert len(list((run_dir / "files" / "media" / "images").rglob("*.png"))) == 3  # losses, curves, comparison
    # the W&B run folder is rankable on its own: report.json and the config are among its files
    assert json.loads((run_dir / "files" / "report.json").read_text()) == report
    ranked = subprocess.run(
        ["litdistill", "rank", str(offline_run["wandb"]), "-o", str(run_dir.parent / "board")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ranked.returncode == 0, ranked.stderr
    [row] = list(csv.DictReader((run_dir.parent / "board" / "leaderboard.csv").open()))
    assert float(row["f1"]) == pytest.approx(report["models"]["student"]["metrics"]["f1"])
    assert float(row["latency_ms"]) == pytest.approx(report["models"]["student"]["latency_ms"])


def test_report_has_exports_timed_and_checked(offline_run):
    run = offline_run["run"]
    report = json.loads((run / "report.json").read_text())
    formats = report["exports"]["formats"]
    assert list(formats) == ["pytorch", "onnx", "int8"] and report["exports"]["threads"] == 2
    # one timing method for every row: the formats were timed in the same interleaved rounds as the models,
    # and the pytorch format is the student's own measurement (a second, separate clock gave 9x the student's)
    student = report["models"]["student"]
    assert formats["pytorch"]["latency_ms"] == student["latency_ms"]
    for name, row in formats.items():
        assert row["latency_ms"] > 0 and row["timing_rounds"] == student["timing_rounds"], name
    assert formats["onnx"]["agreement"] == 1.0 and formats["onnx"]["max_abs_diff"] < 1e-4
    assert formats["int8"]["agreement"] >= 0.9 and formats["int8"]["max_abs_diff"] < 0.1
    assert (run / "student.onnx").is_file() and (run / "student_int8.pt").is_file()
    markdown = (run / "report.md").read_text()
    assert "## Exported student" in markdown and "| onnx | student.onnx |" in markdown


def test_report_pictures_are_pngs_linked_from_the_report(offline_run):
    run = offline_run["run"]
    markdown = (run / "report.md").read_text()
    for png in ("loss_curves.png", "comparison.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in markdown
