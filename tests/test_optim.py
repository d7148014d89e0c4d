"""Learning-rate schedules: transformers' warm-up/decay, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from litdistill.training.optim import warmup_decay


def _lrs(shape: str, steps: int = 10, warmup_ratio: float = 0.2) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_decay(optimizer, steps, warmup_ratio=warmup_ratio, shape=shape)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def test_linear_warmup_then_linear_decay():
    # 10 steps, 2 of warm-up: 0, 1/2, then (10 - t) / 8 for t = 2..9
    assert _lrs("linear") == pytest.approx([0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


def test_cosine_decay_is_a_half_cosine_after_the_warmup():
    expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * (t - 2) / 8)) for t in range(2, 10)]
    assert _lrs("cosine") == pytest.approx(expected)


def test_constant_holds_the_peak_after_the_warmup():
    assert _lrs("constant") == pytest.approx([0.0, 0.5] + [1.0] * 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"shape": "step"}, "scheduler.shape='step'"), ({"warmup_ratio": 1.5}, "scheduler.warmup_ratio=1.5")],
)
def test_bad_schedule_values_name_the_key(kwargs, message):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        warmup_decay(optimizer, 10, **kwargs)
