"""Progressive layer dropping of the student (litdistill.training.layer_drop)."""

from __future__ import annotations

import math
from collections import Counter

import lightning as L
import pytest
import torch
from tests.conftest import tiny_bert

from litdistill import DistillationModule
from litdistill.losses import AttentionLoss, HardCE, SoftTargetKL
from litdistill.training.layer_drop import ProgressiveLayerDrop


def test_keep_probability_by_hand():
    drop = ProgressiveLayerDrop(theta_bar=0.5, gamma=0.01)
    assert drop.keep_probability(0, 3, 4) == pytest.approx(1.0)  # theta(0) = 1: nothing dropped at the start
    theta = 0.5 * math.exp(-0.01 * 100) + 0.5
    assert drop.keep_probability(100, 0, 4) == pytest.approx(1 - 0.25 * (1 - theta))
    assert drop.keep_probability(100, 3, 4) == pytest.approx(theta)  # the last block: theta itself
    assert drop.keep_probability(10**6, 3, 4) == pytest.approx(0.5)  # tends to theta_bar


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"theta_bar": 0.0}, r"theta_bar must be in \(0, 1\], got 0.0"),
        ({"gamma": -1.0}, r"gamma must be >= 0, got -1.0"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProgressiveLayerDrop(**kwargs)


def _count_block_runs(student) -> Counter:
    """How many times each block's attention actually ran (a dropped block never reaches it)."""
    runs: Counter = Counter()
    for index, block in enumerate(student.bert.encoder.layer):
        block.attention.register_forward_hook(lambda *_, index=index: runs.update([index]))
    return runs


def test_deep_blocks_are_dropped_more_training_only_and_the_student_is_whole_afterwards(tiny_data):
    torch.manual_seed(0)
    student = tiny_bert(layers=4, seed=1)
    keys = set(student.state_dict())
    module = DistillationModule(student, tiny_bert(), {"kd": SoftTargetKL(), "ce": HardCE()})
    runs = _count_block_runs(student)
    drop = ProgressiveLayerDrop(theta_bar=0.2, gamma=1.0)  # theta is ~0.2 after a few steps: the last block runs ~20%
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[drop],
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=tiny_data)
    steps = trainer.global_step
    assert runs[0] > runs[3] and runs[3] < 0.6 * steps  # deeper blocks dropped more often
    assert runs[0] <= steps and all(runs[i] >= runs[i + 1] - 0.2 * steps for i in range(3))
    assert "forward" not in vars(student.bert.encoder.layer[3])  # the blocks' own forward is back
    assert set(student.state_dict()) == keys  # nothing renamed: checkpoints and export see the same student
    runs.clear()
    student.eval()
    with torch.no_grad():
        student(**{k: v for k, v in next(iter(tiny_data.val_dataloader())).items() if k != "labels"})
    assert runs == Counter({0: 1, 1: 1, 2: 1, 3: 1})  # inference runs every block


def test_an_attention_loss_is_refused(tiny_data):
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert(), {"att": AttentionLoss(), "ce": HardCE()})
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, callbacks=[ProgressiveLayerDrop()])
    with pytest.raises(ValueError, match="cannot run with an attention loss"):
        trainer.fit(module, datamodule=tiny_data)


def test_cli_callbacks_layer_drop_trains_and_exports_the_whole_student(tmp_path):
    import json

    from tests.test_cli import only_run_dir, run_cli
    from transformers import AutoModelForSequenceClassification

    run_cli(
        [
            "experiment=tiny",
            "debug=fast",
            "baseline=false",
            "callbacks=layer_drop",
            "callbacks.layer_drop.theta_bar=0.3",
            "report.plots=false",
            "report.speed=false",
        ],
        tmp_path,
    )
    run = only_run_dir(tmp_path)
    assert "ProgressiveLayerDrop" in (run / "config.yaml").read_text()
    assert json.loads((run / "report.json").read_text())["models"]["student"]["metrics"]
    student = AutoModelForSequenceClassification.from_pretrained(run / "student")
    assert student.config.num_hidden_layers == 2  # exported whole: dropping happens in training only
