"""The numbers a report and a cache key rest on, against values worked out by hand: task metrics, the
positive-class F1, agreement of each row with the teacher, and a cache key that changes with the teacher's
config and with a local teacher's weights. Each test fails on one bug planted in the code under test."""

from __future__ import annotations

import math

import pytest
import torch
from tests.conftest import tiny_bert

from litdistill.cache.keys import teacher_identity
from litdistill.config.schema import ReportConfig
from litdistill.core.metrics import agreement
from litdistill.pipeline.evaluate import evaluate_models
from litdistill.reporting.evaluation import predict, score

PREDS = torch.tensor([1, 1, 0, 0, 1])
LABELS = torch.tensor([1, 0, 0, 1, 1])


def test_binary_f1_is_the_positive_class_and_accuracy_the_fraction_right():
    # positive class 1: TP = 2 (rows 0, 4), FP = 1 (row 1), FN = 1 (row 3): P = R = F1 = 2/3.
    # (class 0 would give TP = 1, FP = 1, FN = 1: F1 = 1/2.) Accuracy: 3 of 5.
    values = score(PREDS, LABELS, "classification", 2)
    assert values["f1"] == pytest.approx(2 / 3) and values["acc"] == pytest.approx(3 / 5)


def test_multiclass_f1_is_the_macro_mean():
    preds, labels = torch.tensor([0, 1, 2, 2, 1, 0]), torch.tensor([0, 1, 2, 1, 1, 2])
    # class 0: TP 1, FP 1, FN 0 -> 2/3; class 1: TP 2, FP 0, FN 1 -> 4/5; class 2: TP 1, FP 1, FN 1 -> 1/2
    assert score(preds, labels, "classification", 3)["f1"] == pytest.approx((2 / 3 + 0.8 + 0.5) / 3)


def test_token_accuracy_skips_ignored_positions_and_perplexity_is_exp_nll():
    preds, labels = torch.tensor([5, 6, 7, 8]), torch.tensor([5, -100, 7, 9])
    values = score(preds, labels, "causal_lm", 10, mean_nll=math.log(4.0))
    assert values["token_acc"] == pytest.approx(2 / 3) and values["perplexity"] == pytest.approx(4.0)


def test_agreement_counts_equal_predictions_over_counted_positions():
    assert agreement(PREDS, LABELS) == (3, 5)
    assert agreement(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3]), torch.tensor([0, -100, 0])) == (2, 2)


def test_each_row_of_the_report_agrees_with_the_teacher_not_with_another_row(tiny_data):
    """Three different tiny models: the student's and the baseline's agreement are each with the teacher's
    predictions, recomputed here from plain argmaxes."""
    tiny_data.setup("fit")
    tiny_data.setup("test")
    models = {
        name: tiny_bert(layers=1, seed=seed, dropout=0.0).eval()
        for name, seed in (("teacher", 0), ("student", 1), ("baseline", 2))
    }
    settings = ReportConfig(speed=False, disk_size=False)
    report = evaluate_models(models, tiny_data, "classification", settings, ".", {"student": 3, "baseline": 3})
    preds = {name: predict(model, tiny_data.test_dataloader(), "classification")[0] for name, model in models.items()}
    for name in ("student", "baseline"):
        want = float((preds[name] == preds["teacher"]).float().mean())
        assert report["models"][name]["agreement"] == pytest.approx(want), name
    assert report["agreement"] == pytest.approx(float((preds["student"] == preds["teacher"]).float().mean()))
    assert report["models"]["baseline"]["train_steps"] == 3 and "train_steps" not in report["models"]["teacher"]


def test_the_cache_key_changes_with_the_teachers_config():
    base = {
        "_target_": "litdistill.models.loading.from_config",
        "config": {"model_type": "bert", "hidden_size": 64},
        "seed": 0,
    }
    wider = {**base, "config": {"model_type": "bert", "hidden_size": 128}}
    reseeded = {**base, "seed": 1}
    keys = [teacher_identity(t) for t in (base, wider, reseeded)]
    assert keys[0] != keys[1] and keys[0] != keys[2] and keys[0] == teacher_identity(dict(base))
    assert teacher_identity(base, "finetune-a") != teacher_identity(base, "finetune-b")


def test_the_cache_key_changes_with_a_local_teachers_weights(tmp_path):
    model = tiny_bert(layers=1, seed=0)
    model.save_pretrained(tmp_path / "teacher")
    spec = {"_target_": "litdistill.models.loading.load_pretrained", "name_or_path": str(tmp_path / "teacher")}
    before = teacher_identity(spec)
    with torch.no_grad():
        model.classifier.weight.add_(1e-3)
    model.save_pretrained(tmp_path / "teacher")  # same name, other weights
    after = teacher_identity(spec)
    assert before["name"] == after["name"] == "local:teacher" and before["weights"] != after["weights"]


def _report(teacher_acc: float, majority: float, margin: dict | None = None, rows: dict | None = None) -> dict:
    models = {"teacher": {"metrics": {"acc": teacher_acc, "f1": teacher_acc}}, "student": {"metrics": {"acc": 0.5}}}
    report = {"metric": "f1", "threads": 2, "models": models, "majority_class_rate": majority}
    return {
        **report,
        **({"student_minus_baseline": margin} if margin else {}),
        **({"train_rows": rows} if rows else {}),
    }


def test_a_teacher_at_the_majority_rate_is_called_a_plumbing_check():
    from litdistill.reporting.report import to_markdown

    assert "the teacher is not competent** (accuracy 0.438, majority class 0.562)" in to_markdown(
        _report(0.4375, 0.5625)
    )
    assert "not competent" in to_markdown(_report(0.60, 0.5625))  # within 0.05 of the majority: still nothing learnt
    assert "not competent" not in to_markdown(_report(0.90, 0.5625))


def test_the_margin_line_says_one_seed_or_gives_the_interval_and_counts_the_rows():
    from litdistill.reporting.report import to_markdown

    rows = {"labelled": 60, "hidden_labels": 1140, "unlabeled": 0, "augmented": 0, "total": 1200}
    one = to_markdown(_report(0.9, 0.5, {"metric": "f1", "difference": 0.0316, "seeds": 1}, rows))
    assert "**distilled student - labels-only baseline: +3.16 f1 points** (one seed: no interval" in one
    assert "60 labelled (the baseline's and the teacher fine-tune's), 1140 without a label" in one
    five = {"metric": "f1", "difference": 0.02, "seeds": 5, "ci95": [0.0065, 0.0371]}
    text = to_markdown(_report(0.9, 0.5, five))
    assert "+2.00 f1 points**, mean of 5 seeds, paired-bootstrap 95% interval [+0.65, +3.71] (above zero)" in text
    crossing = to_markdown(_report(0.9, 0.5, {**five, "ci95": [-0.01, 0.05]}))
    assert "[-1.00, +5.00] (includes zero)" in crossing
