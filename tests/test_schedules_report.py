"""Temperature / weight schedules and the report's derived numbers."""

from __future__ import annotations

import math

import lightning as L
import pytest
from tests.conftest import tiny_bert

from litdistill import DistillationModule
from litdistill.reporting.report import summarize, to_markdown, write_report
from litdistill.training.schedules import LossParamSchedule


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
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, callbacks=[LossParamSchedule("nope", "weight", 1, 0)]
    )
    with pytest.raises(ValueError, match=r"configured losses: \['kd', 'ce'\]"):
        trainer.fit(module, datamodule=tiny_data)


def test_schedule_moves_the_loss_attribute_during_training(tmp_path, tiny_data):
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert())
    schedule = LossParamSchedule("kd", "temperature", 4.0, 1.0, shape="linear")
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[schedule],
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=tiny_data)
    steps = len(tiny_data.train_dataloader())
    assert module.losses["kd"].temperature == pytest.approx(schedule.value_at(steps - 1, steps))
    assert module.losses["kd"].temperature == pytest.approx(1.0)


class StepRecorder(L.Callback):
    """Per training step: the scheduled value the loss held, and (total, kd term, ce term) as used."""

    def __init__(self, param: str) -> None:
        self.param, self.values, self.losses = param, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self.values.append(getattr(pl_module.losses["kd"], self.param))
        self.losses.append(
            (outputs["loss"].item(), metrics["train/loss/kd_step"].item(), metrics["train/loss/ce_step"].item())
        )


def _fit_recording(module: DistillationModule, schedule: LossParamSchedule, datamodule) -> StepRecorder:
    recorder = StepRecorder(schedule.param)
    L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_checkpointing=False,
        callbacks=[schedule, recorder],
    ).fit(module, datamodule=datamodule)
    return recorder


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # 8 steps; steps 0-1 hold 0 (warm-up), then 0 -> 0.5 linearly over steps 2..5 (total_steps=6), then hold
        (
            LossParamSchedule("kd", "weight", 0.0, 0.5, shape="linear", warmup_steps=2, total_steps=6),
            [0.0, 0.0, 0.0, 0.5 / 3, 1.0 / 3, 0.5, 0.5, 0.5],
        ),
        # no total_steps: the whole run (8 steps); half cosine 0 -> 0.5 over steps 0..7
        (
            LossParamSchedule("kd", "weight", 0.0, 0.5, shape="cosine"),
            [0.25 * (1 - math.cos(math.pi * s / 7)) for s in range(8)],
        ),
    ],
    ids=["linear_warmup", "cosine"],
)
def test_weight_schedule_sets_the_weight_the_total_loss_uses(schedule, expected, tiny_data):
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert())
    recorder = _fit_recording(module, schedule, tiny_data)
    assert recorder.values == pytest.approx(expected, abs=1e-12)
    ce_weight = module.losses["ce"].weight
    for weight, (total, kd, ce) in zip(recorder.values, recorder.losses):
        assert total == pytest.approx(weight * kd + ce_weight * ce, rel=1e-5)


@pytest.mark.parametrize(
    ("option", "entry", "param", "start", "end"),
    [
        ("kd_weight_warmup", "kd_weight_schedule", "weight", 0.0, 0.5),
        ("temperature_anneal", "temperature_schedule", "temperature", 4.0, 1.0),
    ],
)
def test_shipped_schedule_callback_configs_run_in_a_fit(option, entry, param, start, end, compose_train, tiny_data):
    from hydra.utils import instantiate

    cfg = compose_train([f"callbacks={option}"])
    assert {"model_checkpoint", "fault_tolerance", entry} <= set(cfg.callbacks)  # the defaults are kept
    schedule = instantiate(cfg.callbacks[entry])
    losses = {name: instantiate(term) for name, term in cfg.loss.items()}
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert(), losses)
    recorder = _fit_recording(module, schedule, tiny_data)
    assert recorder.values[0] == start and recorder.values[-1] == pytest.approx(end)  # the ramp spans the whole run
    steps = list(zip(recorder.values, recorder.values[1:]))
    assert all(a < b for a, b in steps) if end > start else all(a > b for a, b in steps)


def test_readme_schedule_overrides_set_warmup_and_total_steps(compose_train):
    from hydra.utils import instantiate

    cfg = compose_train(
        [
            "callbacks=kd_weight_warmup",
            "callbacks.kd_weight_schedule.warmup_steps=50",
            "callbacks.kd_weight_schedule.total_steps=500",
        ]
    )
    schedule = instantiate(cfg.callbacks.kd_weight_schedule)
    assert (schedule.warmup_steps, schedule.total_steps) == (50, 500)
    # 0 until step 50, then linear over steps 50..499 (449 intervals), then held at 0.5
    values = [schedule.value_at(s, schedule.total_steps) for s in (49, 50, 150, 499, 5_000)]
    assert values == pytest.approx([0.0, 0.0, 0.5 * 100 / 449, 0.5, 0.5])


def test_report_retained_speedup_and_files(tmp_path):
    rows = {
        "teacher": {
            "params_m": 22.0,
            "size_mb": 88.0,
            "latency_ms": 10.0,
            "throughput_per_s": 100.0,
            "metrics": {"f1": 0.8},
        },
        "student": {
            "params_m": 11.0,
            "size_mb": 44.0,
            "disk_mb": 42.0,
            "latency_ms": 4.0,
            "throughput_per_s": 300.0,
            "metrics": {"f1": 0.78},
        },
        "baseline": {
            "params_m": 11.0,
            "latency_ms": 5.0,
            "throughput_per_s": 250.0,
            "metrics": {"f1": 0.72},
            "agreement": 0.88,
        },
    }
    report = summarize(rows, "f1", agreement=0.93, threads=2)
    assert report["retained_pct"] == pytest.approx(97.5) and report["speedup"] == pytest.approx(2.5)
    assert report["throughput_ratio"] == pytest.approx(3.0) and report["compression"] == pytest.approx(2.0)
    write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| student | 11.0 | 44.0 | 42.0 | 4.0000 | 300.0 | 0.7800 | 0.9300 | 97.5 | 2.5000 |" in md
    assert (
        "| baseline | 11.0 | - | - | 5.0000 | 250.0 | 0.7200 | 0.8800 | 90.0 | 2.0000 |" in md
    )  # compared with the teacher too
    assert "agreement w/ teacher | % of teacher f1 | speed-up (b=1) |" in md and "retained % of teacher f1: 97.5" in md
    assert to_markdown(report) in md
    assert "| teacher | 22.0 | 88.0 | - |" in md  # a size not measured shows as "-"


def test_speed_is_timed_on_the_median_length_row_without_padding():
    import torch

    from litdistill.core.timing import median_row
    from litdistill.reporting.evaluation import cpu_speeds

    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]]
    )  # lengths 5, 2, 3 (left-padded), 1
    ids = torch.arange(20).reshape(4, 5) + 100
    row = median_row(
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": torch.zeros(4)}
    )
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

    speeds = cpu_speeds(
        {"m": Recorder()}, {"input_ids": ids, "attention_mask": mask}, threads=1, batch_size=4, repeats=3, budget_s=0.2
    )
    assert speeds["m"]["latency_ms"] > 0 and {s[1] for s in seen} == {row["input_ids"].shape[1]}
    assert (1, row["input_ids"].shape[1]) in seen and (4, row["input_ids"].shape[1]) in seen
