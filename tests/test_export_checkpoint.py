"""export.checkpoint: which student the report scores and student/ holds, said in the report."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from tests.test_cli import only_run_dir, run_cli


@pytest.mark.slow
def test_best_exports_the_best_validation_checkpoints_student(tmp_path):
    run_cli(["experiment=tiny", "trainer.max_epochs=3", "export.checkpoint=best", "report.speed=false"], tmp_path)
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert report["student_weights"].startswith(f"best: {run / 'checkpoints'}")
    path = report["student_weights"].split()[1]
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    exported = load_file(run / "student" / "model.safetensors")
    for key, value in exported.items():
        assert torch.equal(value, state[f"student.{key}"]), key  # student/ is the best checkpoint's student
    assert "student scored and exported (student/): best:" in (run / "report.md").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["export.checkpoint=worst"], r"export.checkpoint='worst' is not valid; valid values: \['last', 'best'\]"),
        (["export.checkpoint=best", "callbacks=null"], "export.checkpoint=best needs callbacks.model_checkpoint"),
    ],
)
def test_bad_export_checkpoint_is_refused_before_any_model_loads(overrides, message, tmp_path):
    proc = run_cli(["experiment=tiny", *overrides], tmp_path, check=False)
    assert proc.returncode == 1 and re.search(message, proc.stderr), proc.stderr[-1500:]
    assert not (tmp_path / "cache" / "teachers").exists()
