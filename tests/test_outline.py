"""The run's first screen: the student's length as the trainer will run it, the teacher's source."""

from __future__ import annotations

from pathlib import Path

import pytest

from litdistill.pipeline.outline import StageClock, student_steps, teacher_line
from litdistill.training.finetune import FinetuneJob


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ({"max_steps": 50, "max_epochs": 3}, "50 optimizer steps"),  # max_steps wins, as in Lightning
        ({"max_steps": -1, "max_epochs": 2}, "2 epochs (~14 optimizer steps of 16 rows)"),  # 100 rows: 7 batches
        # 7 batches, 3 per step: 2 full steps and the epoch's last, partial one
        ({"max_steps": -1, "max_epochs": 2, "accumulate_grad_batches": 3}, "2 epochs (~6 optimizer steps of 16 rows)"),
        ({"max_steps": -1, "max_epochs": 1, "limit_train_batches": 4}, "1 epoch (~4 optimizer steps of 16 rows)"),
        ({"max_steps": -1, "max_epochs": 1, "limit_train_batches": 0.5}, "1 epoch (~3 optimizer steps of 16 rows)"),
    ],
)
def test_student_length_is_counted_as_the_trainer_counts_it(trainer, expected):
    assert student_steps(trainer, train_rows=100, batch_size=16) == expected


def test_teacher_line_says_whether_the_fine_tune_is_cached(tmp_path: Path):
    job = FinetuneJob(max_steps=160, lr=1e-4, warmup_ratio=0.1, cache_dir=tmp_path / "t", task="classification", seed=0)
    assert teacher_line(job, 60) == f"fine-tuned for 160 steps on the 60 labelled rows, then cached ({tmp_path / 't'})"
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text("{}")
    assert teacher_line(job, 60) == f"loaded from the fine-tune cache ({tmp_path / 't'})"
    assert teacher_line(None, 60) == "used as it is (teacher_finetune=null)"


def test_stage_clock_adds_up_a_stage_lapped_twice(monkeypatch):
    times = iter([10.0, 12.5, 20.0, 21.0])
    monkeypatch.setattr("litdistill.pipeline.outline.time.perf_counter", lambda: next(times))
    clock = StageClock()  # 10.0
    clock.lap("data")  # 12.5
    clock.lap("student")  # 20.0
    clock.lap("data")  # 21.0
    assert clock.seconds == {"data": 3.5, "student": 7.5}
