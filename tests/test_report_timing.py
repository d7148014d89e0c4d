"""Timings in the report come with their spread: more interleaved rounds while a model's repetitions spread
by more than 10%, up to a time budget, and a report that says when the figures are not reliable."""

from __future__ import annotations

import itertools
import time

import torch

from litdistill.reporting.evaluation import cpu_speeds
from litdistill.reporting.report import summarize, to_markdown

EXAMPLE = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long)}


class Sleeper(torch.nn.Module):
    """A real module whose forward takes the given times in turn (a model on a quiet or a busy machine)."""

    def __init__(self, *times: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.times = itertools.cycle(times)

    def forward(self, input_ids, attention_mask=None):
        time.sleep(next(self.times))
        return input_ids


def test_a_busy_machine_is_timed_until_the_budget_and_reported_as_unreliable():
    start = time.perf_counter()
    speeds = cpu_speeds(
        {"steady": Sleeper(0.03), "busy": Sleeper(0.005, 0.04)},
        EXAMPLE,
        threads=1,
        batch_size=2,
        repeats=4,
        budget_s=1.0,
    )
    assert time.perf_counter() - start >= 1.0  # kept timing: the busy model never settled
    assert speeds["busy"]["latency_spread_pct"] > 10 and speeds["busy"]["timing_rounds"] > 4
    rows = {name: {"metrics": {"f1": 0.5}, **speed} for name, speed in speeds.items()}
    report = summarize(rows, "f1", None, 1)
    assert report["timing_reliable"] is False and "**timings not reliable**" in to_markdown(report)


def test_steady_models_stop_after_the_minimum_rounds_and_are_reported_as_reliable():
    speeds = cpu_speeds(
        {"a": Sleeper(0.03), "b": Sleeper(0.06)}, EXAMPLE, threads=1, batch_size=2, repeats=5, budget_s=5.0
    )
    assert all(s["latency_spread_pct"] <= 10 for s in speeds.values()), speeds
    assert speeds["a"]["timing_rounds"] == 5  # settled: no extra round
    report = summarize({n: {"metrics": {"f1": 0.5}, **s} for n, s in speeds.items()}, "f1", None, 1)
    assert report["timing_reliable"] is True and "(reliable)" in to_markdown(report)
