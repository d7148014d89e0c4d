"""Attention transfer: KL/MSE values by hand, heads, eager attention only when needed, a short fit."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from tests.conftest import tiny_bert
from tests.test_features import PlainNet
from torch import nn

from litdistill import DistillationModule, HardCE, SoftTargetKL
from litdistill.core.attention_impl import AttentionOutputsError, attention_implementation, ensure_attention_outputs
from litdistill.core.outputs import ModelOutputs
from litdistill.losses import LOSSES, AttentionLoss, FeatureLoss, HiddenStateLoss
from litdistill.losses.attention import attention_kl, attention_mse


def _maps(b: int, h: int, t: int, seed: int, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, t, t, generator=g)
    x[..., -1] = -1e9  # last key position is padding for the first example below, masked before softmax
    probs = x.softmax(-1)
    return probs.requires_grad_(requires_grad)


def _kl_by_hand(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> float:
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for h in range(s.shape[1]):
            for q in range(s.shape[2]):
                if not mask[b, q]:
                    continue
                row = 0.0
                for k in range(s.shape[3]):
                    p, r = float(t[b, h, q, k]), float(s[b, h, q, k])
                    if p > 0:
                        row += p * (math.log(p) - math.log(max(r, 1e-12)))
                total, count = total + row, count + 1
    return total / count


def test_attention_kl_matches_hand_computation_with_masked_rows():
    s, t = _maps(2, 2, 4, seed=0, requires_grad=True), _maps(2, 2, 4, seed=1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    value = attention_kl(s, t, mask)
    assert math.isclose(float(value.detach()), _kl_by_hand(s.detach(), t, mask), rel_tol=1e-5)
    value.backward()
    assert s.grad[0, :, 3].abs().sum() == 0 and s.grad[0, :, :3].abs().sum() > 0  # padded query row: no gradient
    assert float(attention_kl(t, t, mask)) == pytest.approx(0.0, abs=1e-6)


def test_attention_heads_are_averaged_when_counts_differ():
    s, t = _maps(1, 2, 3, seed=2), _maps(1, 4, 3, seed=3)
    mask = torch.ones(1, 3, dtype=torch.long)
    expected = _kl_by_hand(s.mean(1, keepdim=True), t.mean(1, keepdim=True), mask)
    assert math.isclose(float(attention_kl(s, t, mask)), expected, rel_tol=1e-5)


def test_attention_mse_over_real_query_and_key_entries():
    s, t = _maps(2, 2, 4, seed=4), _maps(2, 2, 4, seed=5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    total, count = 0.0, 0
    for b in range(2):
        for h in range(2):
            for q in range(4):
                for k in range(4):
                    if mask[b, q] and mask[b, k]:
                        total += float(s[b, h, q, k] - t[b, h, q, k]) ** 2
                        count += 1
    assert math.isclose(float(attention_mse(s, t, mask)), total / count, rel_tol=1e-5)


def test_attention_loss_averages_mapped_pairs():
    s_att = tuple(_maps(1, 2, 3, seed=i) for i in range(2))
    t_att = tuple(_maps(1, 2, 3, seed=10 + i) for i in range(4))
    mask = torch.ones(1, 3, dtype=torch.long)
    loss = AttentionLoss(layer_map=[[1, 2], [2, 4]])
    loss.pairs = [(1, 2), (2, 4)]
    value = loss(ModelOutputs(attentions=s_att), ModelOutputs(attentions=t_att), {"attention_mask": mask})
    expected = (_kl_by_hand(s_att[0], t_att[1], mask) + _kl_by_hand(s_att[1], t_att[3], mask)) / 2
    assert math.isclose(float(value), expected, rel_tol=1e-5)
    assert LOSSES["attention"] is AttentionLoss


def test_attention_layer_map_refuses_the_embedding_layer():
    with pytest.raises(ValueError, match=r"pair \[0, 0\] is out of range: the student has 2 layers, the teacher 4"):
        DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert(), {"a": AttentionLoss(layer_map=[[0, 0]])})
    with pytest.raises(ValueError, match="metric must be one of"):
        AttentionLoss(metric="cosine")


class KwargRecorder:
    def __init__(self, *models: nn.Module) -> None:
        self.kwargs: list[list[str]] = []
        for model in models:
            model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, model, args, kwargs):
        self.kwargs.append(sorted(k for k in kwargs if k.startswith("output_")))


def test_attention_outputs_only_when_an_attention_loss_is_configured():
    batch = {
        "input_ids": torch.randint(1000, 2000, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
        "labels": torch.tensor([0, 1]),
    }
    teacher, student = tiny_bert(), tiny_bert(layers=2, seed=1)
    plain = DistillationModule(student, teacher, {"kd": SoftTargetKL(), "h": HiddenStateLoss()})
    recorder = KwargRecorder(student, teacher)
    plain.loss_terms(batch)
    assert attention_implementation(student) == attention_implementation(teacher) == "sdpa"
    assert recorder.kwargs == [["output_hidden_states"], ["output_hidden_states"]]

    teacher, student = tiny_bert(), tiny_bert(layers=2, seed=1)
    module = DistillationModule(student, teacher, {"kd": SoftTargetKL(), "a": AttentionLoss()})
    recorder = KwargRecorder(student, teacher)
    assert attention_implementation(student) == attention_implementation(teacher) == "eager"
    s_out, t_out = module.student_outputs(batch), module.teacher_outputs(batch)
    assert len(s_out.attentions) == 2 and len(t_out.attentions) == 4 and s_out.attentions[0].shape == (2, 2, 6, 6)
    assert recorder.kwargs == [["output_attentions"], ["output_attentions"]]
    # validation asks for logits only
    recorder.kwargs.clear()
    module.student_outputs(batch, frozenset({"logits"}))
    assert recorder.kwargs == [[]]


def test_models_without_attention_maps_are_refused_clearly():
    with pytest.raises(AttentionOutputsError, match="PlainNet .*cannot return attention maps"):
        DistillationModule(PlainNet(8), PlainNet(8, seed=1), {"a": AttentionLoss()}, num_labels=2)
    model = tiny_bert()
    assert ensure_attention_outputs(model) is model and attention_implementation(model) == "eager"


def test_short_fit_with_feature_and_attention_losses(tmp_path, tiny_data):
    teacher = tiny_bert(layers=4, hidden=32)
    student = tiny_bert(layers=2, hidden=16, seed=1, dropout=0.0)
    losses = {
        "kd": SoftTargetKL(weight=0.5),
        "ce": HardCE(weight=0.5),
        "hidden": HiddenStateLoss(metric="nmse", weight=1.0),
        "attn": AttentionLoss(layer_map="last"),
        "ffn": FeatureLoss("bert.encoder.layer.1.intermediate", "bert.encoder.layer.3.intermediate"),
    }
    module = DistillationModule(student, teacher, losses)
    assert module.losses["ffn"].projection.weight.shape == (64, 32)  # intermediate sizes 32 -> 64
    before = {k: v.detach().clone() for k, v in module.losses.state_dict().items()}
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=4,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=tiny_data)
    logged = trainer.callback_metrics
    for name in losses:
        assert torch.isfinite(
            logged[f"train/loss/{name}_epoch"] if f"train/loss/{name}_epoch" in logged else logged[f"train/loss/{name}"]
        )
    after = module.losses.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("hidden.projections") for k in changed) and any(
        k.startswith("ffn.projection") for k in changed
    )
    assert "val/student/f1" in logged and "val/teacher/f1" in logged
    # eager attention was for training only: inference, export and timing use sdpa again
    assert attention_implementation(student) == attention_implementation(teacher) == "sdpa"


# ---- gradients, head averaging by hand ------------------------------------------------------------
def _padded_batch(b: int = 3, t: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in ([t, 4, 2] * b)[:b]])
    return {
        "input_ids": torch.randint(1000, 2000, (b, t), generator=g) * mask,
        "attention_mask": mask,
        "labels": torch.arange(b) % 2,
    }


@pytest.mark.parametrize("metric", ["kl", "mse"])
def test_attention_loss_gradients_reach_the_students_query_and_key_weights_only(metric):
    """Attention probabilities of block s depend on its query/key projections (and the blocks below),
    not on its value projection or the head; the teacher side is a constant, even with grad enabled."""
    student = ensure_attention_outputs(tiny_bert(layers=2, seed=1, dropout=0.0))
    teacher = ensure_attention_outputs(tiny_bert(layers=4, seed=0, dropout=0.0))  # trainable on purpose
    batch = _padded_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    s_out = ModelOutputs(attentions=student(**inputs, output_attentions=True).attentions)
    t_out = ModelOutputs(attentions=teacher(**inputs, output_attentions=True).attentions)
    assert t_out.attentions[-1].requires_grad  # the teacher graph exists: the loss must cut it
    loss = AttentionLoss(layer_map=[[2, 4]], metric=metric)
    loss.pairs = [(2, 4)]
    value = loss(s_out, t_out, batch)
    assert value > 0
    value.backward()
    top = student.bert.encoder.layer[1].attention.self
    for w in (top.query.weight, top.key.weight, student.bert.encoder.layer[0].attention.self.value.weight):
        assert w.grad is not None and w.grad.abs().sum() > 0
    assert top.value.weight.grad is None or top.value.weight.grad.abs().sum() == 0  # probabilities ignore V
    assert student.classifier.weight.grad is None
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("metric", ["kl", "mse"])
def test_attention_loss_gradients_in_a_distillation_module(metric):
    student, teacher = tiny_bert(layers=2, seed=1, dropout=0.0), tiny_bert(layers=4)
    module = DistillationModule(student, teacher, {"a": AttentionLoss(metric=metric)})
    total, terms, _ = module.loss_terms(_padded_batch())
    total.backward()
    for layer in student.bert.encoder.layer:
        assert (
            layer.attention.self.query.weight.grad.abs().sum() > 0
            and layer.attention.self.key.weight.grad.abs().sum() > 0
        )
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_head_averaging_by_hand_when_head_counts_differ():
    """Student 2 heads, teacher 3 heads, 2 tokens: both sides averaged over heads, then KL / MSE."""
    s = torch.tensor([[[[0.4, 0.6], [0.2, 0.8]], [[0.8, 0.2], [0.2, 0.8]]]])  # mean [[0.6, 0.4], [0.2, 0.8]]
    t = torch.tensor(
        [[[[0.5, 0.5], [1.0, 0.0]], [[0.9, 0.1], [0.0, 1.0]], [[0.7, 0.3], [0.5, 0.5]]]]
    )  # mean [[0.7, 0.3], [0.5, 0.5]]
    kl_rows = [
        0.7 * math.log(0.7 / 0.6) + 0.3 * math.log(0.3 / 0.4),
        0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8),
    ]
    assert float(attention_kl(s, t)) == pytest.approx(sum(kl_rows) / 2, rel=1e-5)
    assert float(attention_mse(s, t)) == pytest.approx((0.1**2 + 0.1**2 + 0.3**2 + 0.3**2) / 4, rel=1e-5)
    one_query = torch.tensor([[1, 0]])  # the second position is padding: only query row 0 (KL), entry (0, 0) (MSE)
    assert float(attention_kl(s, t, one_query)) == pytest.approx(kl_rows[0], rel=1e-5)
    assert float(attention_mse(s, t, one_query)) == pytest.approx(0.1**2, rel=1e-5)
    # equal head counts: heads matched 1:1, not averaged
    t2 = t[:, :2]
    matched = (
        sum(
            float(p) * math.log(float(p) / float(r))
            for h in range(2)
            for q in range(2)
            for p, r in zip(t2[0, h, q], s[0, h, q])
            if p > 0
        )
        / 4
    )
    assert float(attention_kl(s, t2)) == pytest.approx(matched, rel=1e-5)
    s_grad = s.clone().requires_grad_(True)
    attention_mse(s_grad, t).backward()
    assert torch.allclose(s_grad.grad[0, 0], s_grad.grad[0, 1])  # the average spreads the gradient over heads


# ---- with a MultiTeacher -------------------------------------------------------------------------
def _multi_pair():
    from litdistill.models.multi_teacher import MultiTeacher

    a, b = tiny_bert(layers=4, hidden=32, seed=0), tiny_bert(layers=2, hidden=16, seed=5)
    return a, b, MultiTeacher


def _attention_terms(student, teacher, losses, batch):
    _, terms, _ = DistillationModule(student, teacher, losses).loss_terms(batch)
    return terms


@pytest.mark.parametrize("metric", ["kl", "mse"])
def test_averaging_multi_teacher_attention_loss_matches_the_primary_or_named_teacher_alone(metric):
    a, b, MultiTeacher = _multi_pair()
    multi = MultiTeacher({"a": a, "b": b}, weights=[0.3, 0.7])
    student = tiny_bert(layers=2, seed=1, dropout=0.0)
    batch = _padded_batch()
    losses = {
        "prim": AttentionLoss(layer_map="uniform", metric=metric),
        "b": AttentionLoss(layer_map="uniform", metric=metric, teacher="b"),
    }
    module = DistillationModule(student, multi, losses)
    assert module.losses["prim"].pairs == [(1, 2), (2, 4)] and module.losses["b"].pairs == [(1, 1), (2, 2)]
    _, terms, _ = module.loss_terms(batch)
    alone_a = _attention_terms(student, a, {"x": AttentionLoss(layer_map="uniform", metric=metric)}, batch)["x"]
    alone_b = _attention_terms(student, b, {"x": AttentionLoss(layer_map="uniform", metric=metric)}, batch)["x"]
    assert torch.allclose(terms["prim"], alone_a, atol=1e-6) and torch.allclose(terms["b"], alone_b, atol=1e-6)
    assert not torch.allclose(alone_a, alone_b)  # the two teachers differ: the test can tell them apart


@pytest.mark.parametrize("metric", ["kl", "mse"])
def test_routed_multi_teacher_attention_loss_uses_each_examples_teacher(metric):
    from litdistill.models.multi_teacher import subset_batch

    a, b, MultiTeacher = _multi_pair()
    c = tiny_bert(layers=4, hidden=32, seed=7)  # a's shape: routed attentions without a name
    student = tiny_bert(layers=2, seed=1, dropout=0.0)
    batch = {**_padded_batch(4, seed=2), "teacher_id": torch.tensor([1, 0, 1, 1])}
    rows_b = torch.tensor([0, 2, 3])
    named = DistillationModule(
        student,
        MultiTeacher({"a": a, "b": b}, route_field="teacher_id"),
        {"b": AttentionLoss(metric=metric, teacher="b"), "a": AttentionLoss(metric=metric, teacher="a")},
    )
    _, terms, _ = named.loss_terms(batch)
    sub_b, sub_a = subset_batch(batch, rows_b), subset_batch(batch, torch.tensor([1]))
    assert torch.allclose(
        terms["b"], _attention_terms(student, b, {"x": AttentionLoss(metric=metric)}, sub_b)["x"], atol=1e-6
    )
    assert torch.allclose(
        terms["a"], _attention_terms(student, a, {"x": AttentionLoss(metric=metric)}, sub_a)["x"], atol=1e-6
    )
    with pytest.raises(
        ValueError, match=r"teachers must share \('num_hidden_layers', 'num_attention_heads'\).*teacher=<name>"
    ):
        DistillationModule(student, MultiTeacher({"a": a, "b": b}, route_field="teacher_id"), {"x": AttentionLoss()})

    same_shape = DistillationModule(
        student, MultiTeacher({"a": a, "c": c}, route_field="teacher_id"), {"x": AttentionLoss(metric=metric)}
    )
    _, terms, s_out = same_shape.loss_terms(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t_a, t_c = (m(**inputs, output_attentions=True).attentions for m in (a, c))
    own = batch["teacher_id"].bool()[:, None, None, None]  # id 1: c's rows
    fn = attention_kl if metric == "kl" else attention_mse
    pairs = same_shape.losses["x"].pairs
    expected = torch.stack(
        [
            fn(s_out.attentions[s - 1], torch.where(own, t_c[t - 1], t_a[t - 1]), batch["attention_mask"])
            for s, t in pairs
        ]
    ).mean()
    assert torch.allclose(terms["x"], expected, atol=1e-6)
