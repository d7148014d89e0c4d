"""{{ cookiecutter.project_name }}: the configs compose, the data splits, the default experiment runs.

The end-to-end test runs the default experiment with tiny random models (``debug=smoke``), offline.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from litdistill.core.conf import config_dir
{%- if cookiecutter.teacher_model == "packaged-minilm" %}
from litdistill.models.loading import packaged_minilm
{%- endif %}
from {{ cookiecutter.package_name }}.cli import DEFAULT_EXPERIMENT, conf_dir, project_overrides
from {{ cookiecutter.package_name }}.data import load_examples, prepare_splits

TASK = "{{ cookiecutter.task_type }}"


def compose_project(overrides: list[str]):
    """The config ``{{ cookiecutter.project_slug }} <overrides>`` runs, through the Hydra compose API."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="train", overrides=project_overrides(overrides))
    finally:
        GlobalHydra.instance().clear()


def test_default_experiment_composes():
    cfg = compose_project([])
    assert cfg.task == TASK and cfg.task_name == DEFAULT_EXPERIMENT
{%- if cookiecutter.teacher_model == "packaged-minilm" %}
    assert cfg.teacher.name_or_path == packaged_minilm()  # installed with litdistill: the default runs offline
{%- else %}
    assert cfg.teacher.name_or_path == {{ cookiecutter.teacher_model | tojson }}
{%- endif %}
    assert cfg.data.data_files.source == {{ cookiecutter.dataset | tojson }}
    assert set(cfg.loss) == {"kd", "ce"}
    logger = "{{ cookiecutter.logger }}"
    assert set(cfg.logger) >= ({"csv", "tensorboard"} if logger == "many" else {logger})


def test_any_key_can_be_overridden():
    cfg = compose_project(["loss.kd.temperature=4", "trainer.max_epochs=1"])
    assert cfg.loss.kd.temperature == 4 and cfg.trainer.max_epochs == 1


def test_smoke_settings_swap_in_tiny_models():
    cfg = compose_project(["debug=smoke"])
    assert cfg.teacher._target_ == "litdistill.models.loading.from_config"
    assert cfg.student._target_ == "litdistill.models.layer_subset.student_from_teacher"
    assert OmegaConf.select(cfg, "tokenizer")  # resolves to litdistill's packaged tokenizer


def test_configs_are_found_through_the_project():
    assert (conf_dir() / "experiment" / f"{DEFAULT_EXPERIMENT}.yaml").is_file()


def test_data_splits_do_not_share_text(tmp_path):
    files = prepare_splits("synthetic", str(tmp_path), task=TASK, max_examples=200)
    texts = {}
    for split, path in files.items():
        with open(path, newline="", encoding="utf-8") as f:
            texts[split] = {row["text"] for row in csv.DictReader(f)}
        assert texts[split], split
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["validation"])
    assert load_examples("synthetic")[0]["text"]


def test_default_experiment_runs_with_tiny_models(tmp_path):
    env = {**os.environ, "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"), "LITDISTILL_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "{{ cookiecutter.package_name }}", "debug=smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = sorted((tmp_path / "outputs" / DEFAULT_EXPERIMENT / "runs").glob("*/report.json"))
    assert len(runs) == 1
    report = json.loads(runs[0].read_text())
    assert {"teacher", "student"} <= set(report["models"])
    assert (runs[0].parent / "student" / "config.json").is_file()
