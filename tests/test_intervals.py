"""The paired bootstrap behind "the distilled student beats the baseline": metrics checked against the
report's torchmetrics values and hand counts, the interval against known cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from litdistill.reporting.evaluation import score
from litdistill.reporting.intervals import paired_bootstrap, weighted_metric


@pytest.mark.parametrize("num_labels", [2, 3])
def test_unit_weight_metrics_equal_the_reports_torchmetrics_values(num_labels):
    torch.manual_seed(num_labels)
    labels = torch.randint(0, num_labels, (200,))
    preds = torch.where(torch.rand(200) < 0.7, labels, torch.randint(0, num_labels, (200,)))
    ones = torch.ones(1, 200, dtype=torch.float64)
    reference = score(preds, labels, "classification", num_labels)
    for metric in ("acc", "f1"):
        got = weighted_metric(preds[None], labels, ones, metric, num_labels)
        assert got.item() == pytest.approx(reference[metric], abs=1e-6)


def test_weights_count_rows_like_repeating_them_and_f1_matches_hand_counts():
    labels = torch.tensor([1, 1, 0, 0, 1])
    preds = torch.tensor([1, 0, 1, 0, 1])
    weights = torch.tensor([[2.0, 1.0, 0.0, 1.0, 3.0]], dtype=torch.float64)
    # by hand: tp = 2 + 3 = 5, fn = 1, fp = 0 (row 2 has weight 0) -> F1 = 10 / 11; acc = 6 / 7
    assert weighted_metric(preds[None], labels, weights, "f1", 2).item() == pytest.approx(10 / 11)
    assert weighted_metric(preds[None], labels, weights, "acc", 2).item() == pytest.approx(6 / 7)
    repeated = torch.tensor([0, 0, 1, 3, 4, 4, 4])
    assert score(preds[repeated], labels[repeated], "classification", 2)["f1"] == pytest.approx(10 / 11)


def test_identical_models_differ_by_exactly_zero():
    labels = torch.randint(0, 2, (50,))
    preds = torch.randint(0, 2, (3, 50))
    result = paired_bootstrap(preds, preds.clone(), labels, "f1", 2, rounds=200)
    assert result.difference == 0 and result.ci95 == (0.0, 0.0) and result.per_seed == [0.0, 0.0, 0.0]


def test_a_model_right_where_the_other_is_wrong_has_an_interval_above_zero():
    torch.manual_seed(1)
    labels = torch.randint(0, 2, (300,))
    b = torch.where(torch.rand(5, 300) < 0.75, labels, 1 - labels)  # 75% right, five seeds
    a = torch.where(b != labels, labels, b)  # A fixes every error of B ...
    a = torch.where(torch.rand(5, 300) < 0.05, 1 - a, a)  # ... and makes a few of its own
    result = paired_bootstrap(a, b, labels, "acc", 2, rounds=1000)
    per_seed = [float((a[s] == labels).float().mean() - (b[s] == labels).float().mean()) for s in range(5)]
    assert result.per_seed == pytest.approx(per_seed)
    assert result.difference == pytest.approx(np.mean(per_seed))
    assert 0 < result.ci95[0] < result.difference < result.ci95[1]


def test_the_interval_widens_with_seed_variance_and_covers_zero_for_a_coin_flip():
    torch.manual_seed(2)
    labels = torch.randint(0, 2, (400,))
    coin_a = torch.randint(0, 2, (5, 400))
    coin_b = torch.randint(0, 2, (5, 400))
    result = paired_bootstrap(coin_a, coin_b, labels, "acc", 2, rounds=1000)
    assert result.ci95[0] < 0 < result.ci95[1]
    one_seed = paired_bootstrap(coin_a[:1], coin_b[:1], labels, "acc", 2, rounds=1000)
    assert one_seed.ci95[0] < one_seed.difference < one_seed.ci95[1]


def test_mismatched_shapes_and_unsupported_metrics_are_refused():
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"predictions must be \[seeds, rows\]"):
        paired_bootstrap(torch.zeros(2, 4), torch.zeros(3, 4), labels, "acc", 2)
    with pytest.raises(ValueError, match="report.metric='perplexity' has no bootstrap interval"):
        paired_bootstrap(torch.zeros(1, 4), torch.zeros(1, 4), labels, "perplexity", 2)
