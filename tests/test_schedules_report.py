"""Temperature / weight schedules and the report's derived numbers."""

from __future__ import annotations

import math

import lightning as L
import pytest

from litdistill import DistillationModule
from litdistill.report import summarize, to_markdown, write_report
from litdistill.schedules import LossParamSchedule
from tests.conftest import tiny_bert


def test_schedule_shapes_by_hand():
    lin = LossParamSchedule("kd", "temperature", 4.0, 1.0, shape="linear")
    assert [lin.value_at(s, 4) for s in range(4)] == [4.0, 3.0, 2.0, 1.0]
    cos = LossParamSchedule("kd", "temperature", 4.0, 1.0, shape="cosine", warmup_steps=2)
    assert cos.value_at(0, 12) == cos.value_at(1, 12) == 4.0
    assert cos.value_at(6, 12) == pytest.approx(4.0 - 3.0 * 0.5 * (1 - math.cos(math.pi * 4 / 9)))
    assert cos.value_at(11, 12) == pytest.approx(1.0)
    assert LossParamSchedule("kd", "weight", 0.3, 0.9, shape="constant").value_at(50, 100) == 0.3


def test_schedule_refuses_bad_values_and_unknown_losses(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0.0"):
        LossParamSchedule("kd", "temperature", 4.0, 0.0)
    with pytest.raises(ValueError, match="unknown schedule shape 'step'"):
        LossParamSchedule("kd", "temperature", 4.0, 1.0, shape="step")
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert())
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, callbacks=[LossParamSchedule("nope", "weight", 1, 0)])
    with pytest.raises(ValueError, match=r"configured losses: \['kd', 'ce'\]"):
        trainer.fit(module, datamodule=tiny_data)


def test_schedule_moves_the_loss_attribute_during_training(tmp_path, tiny_data):
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert())
    schedule = LossParamSchedule("kd", "temperature", 4.0, 1.0, shape="linear")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, limit_val_batches=0, callbacks=[schedule],
                        enable_checkpointing=False)
    trainer.fit(module, datamodule=tiny_data)
    steps = len(tiny_data.train_dataloader())
    assert module.losses["kd"].temperature == pytest.approx(schedule.value_at(steps - 1, steps))
    assert module.losses["kd"].temperature == pytest.approx(1.0)


def test_report_retained_speedup_and_files(tmp_path):
    rows = {"teacher": {"params_m": 22.0, "size_mb": 88.0, "latency_ms": 10.0, "throughput_per_s": 100.0, "metrics": {"f1": 0.8}},
            "student": {"params_m": 11.0, "size_mb": 44.0, "disk_mb": 42.0, "latency_ms": 4.0, "throughput_per_s": 300.0, "metrics": {"f1": 0.78}}}
    report = summarize(rows, "f1", agreement=0.93, threads=2)
    assert report["retained_pct"] == pytest.approx(97.5) and report["speedup"] == pytest.approx(2.5)
    assert report["throughput_ratio"] == pytest.approx(3.0) and report["compression"] == pytest.approx(2.0)
    write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| student | 11.0 | 44.0 | 42.0 | 4.0000 | 300.0 | 0.7800 |" in md and "retained % of teacher f1: 97.5" in md
    assert to_markdown(report) in md
    assert "| teacher | 22.0 | 88.0 | - |" in md  # a size not measured shows as "-"


def test_speed_is_timed_on_the_median_length_row_without_padding():
    import torch

    from litdistill.evaluation import cpu_speeds, median_row

    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])  # lengths 5, 2, 3 (left-padded), 1
    ids = torch.arange(20).reshape(4, 5) + 100
    row = median_row({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": torch.zeros(4)})
    assert set(row) == {"input_ids", "attention_mask", "token_type_ids"}  # labels are not a model input
    assert row["input_ids"].tolist() == [[105, 106]]  # the lower median of lengths 1, 2, 3, 5
    odd = median_row({"input_ids": ids[[0, 2, 3]], "attention_mask": mask[[0, 2, 3]]})  # lengths 5, 3, 1
    assert odd["input_ids"].tolist() == [[112, 113, 114]]  # left padding is stripped too
    assert row["attention_mask"].all() and row["input_ids"].shape == row["attention_mask"].shape

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            seen.append(tuple(input_ids.shape))
            assert not torch.is_grad_enabled() and torch.is_inference_mode_enabled()

    speeds = cpu_speeds({"m": Recorder()}, {"input_ids": ids, "attention_mask": mask}, threads=1, batch_size=4, repeats=3)
    assert speeds["m"]["latency_ms"] > 0 and {s[1] for s in seen} == {row["input_ids"].shape[1]}
    assert (1, row["input_ids"].shape[1]) in seen and (4, row["input_ids"].shape[1]) in seen
