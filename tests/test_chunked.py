"""Chunked and fused (LM-head) divergences equal the plain losses in value and gradient."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from litdistill.core.outputs import ModelOutputs
from litdistill.losses import (
    LOSSES,
    ChunkedDivergence,
    ForwardKL,
    FusedLinearKD,
    GeneralizedJSD,
    HardCE,
    build_loss,
    lm_head_features,
    lm_head_of,
)
from litdistill.losses.chunked import chunked_divergence_sum, fused_linear_divergence_sum

REPO = Path(__file__).resolve().parents[1]
DIVERGENCES = {
    "forward_kl": {},
    "reverse_kl": {},
    "jsd": {"beta": 0.3},
    "skew_kl": {"alpha": 0.1},
    "skew_reverse_kl": {"alpha": 0.2},
    "tvd": {},
}


def _data(seed: int = 0, b: int = 3, t: int = 6, v: int = 13, h: int = 8, bias: bool = True):
    """Hidden states [B, T+1, H] (unshifted, as HF returns them), a head, shifted teacher logits, a mask."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t + 1, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.7
    bias_t = torch.randn(v, generator=g) if bias else None
    teacher = (torch.randn(b, t + 1, v, generator=g) * 2)[:, :-1]  # a shifted view, like the module's
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :2] = -100  # prompt
    labels[1, 4:] = -100  # padding
    labels[2, 3] = -100
    return hidden, weight, bias_t, teacher, {"labels": labels, "token_mask": labels != -100}


def _leaves(*xs):
    return [x.clone().requires_grad_() if x is not None else None for x in xs]


def _grads(value, params):
    return torch.autograd.grad(value, [p for p in params if p is not None])


def _plain(name, kw, hidden, weight, bias, teacher, batch, ce_weight=0.0, temperature=2.0):
    logits = torch.nn.functional.linear(hidden, weight, bias)[:, :-1]
    loss = build_loss(name, temperature=temperature, **kw)(
        ModelOutputs(logits=logits), ModelOutputs(logits=teacher), batch
    )
    if ce_weight:
        loss = loss + ce_weight * HardCE()(ModelOutputs(logits=logits), None, batch)
    return loss


# ---- chunked == plain ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_chunked_equals_plain_values_and_gradients(name, chunk_size):
    kw = DIVERGENCES[name]
    hidden, weight, bias, teacher, batch = _data()
    params = _leaves(hidden, weight, bias)
    plain = _plain(name, kw, *params, teacher, batch)
    g_plain = _grads(plain, params)

    params2 = _leaves(hidden, weight, bias)
    logits = torch.nn.functional.linear(params2[0], params2[1], params2[2])[:, :-1]
    loss = ChunkedDivergence(name, chunk_size=chunk_size, temperature=2.0, **kw)
    chunked = loss(ModelOutputs(logits=logits), ModelOutputs(logits=teacher), batch)
    g_chunked = _grads(chunked, params2)
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6, abs=1e-6)
    for a, b in zip(g_plain, g_chunked):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_chunked_logit_gradient_matches_and_is_zero_at_masked_positions():
    hidden, weight, bias, teacher, batch = _data(seed=1)
    logits = torch.nn.functional.linear(hidden, weight, bias)[:, :-1].contiguous()
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    plain = GeneralizedJSD(beta=0.7)(ModelOutputs(logits=a), ModelOutputs(logits=teacher), batch)
    chunked = ChunkedDivergence(GeneralizedJSD(beta=0.7), chunk_size=3)(
        ModelOutputs(logits=b), ModelOutputs(logits=teacher), batch
    )
    plain.backward()
    chunked.backward()
    mask = batch["token_mask"]
    assert torch.allclose(a.grad, b.grad, atol=1e-7)
    assert torch.all(b.grad[~mask] == 0)
    # Garbage at masked positions changes nothing (those rows are never read).
    c = logits.clone()
    c[~mask] = float("nan")
    t2 = teacher.clone()
    t2[~mask] = float("inf")
    c.requires_grad_()
    again = ChunkedDivergence(GeneralizedJSD(beta=0.7), chunk_size=3)(
        ModelOutputs(logits=c), ModelOutputs(logits=t2), batch
    )
    again.backward()
    assert again.item() == chunked.item() and torch.equal(c.grad, b.grad)


def test_chunked_ce_weight_equals_divergence_plus_hard_ce():
    hidden, weight, bias, teacher, batch = _data(seed=2)
    params = _leaves(hidden, weight, bias)
    plain = _plain("forward_kl", {}, *params, teacher, batch, ce_weight=0.4)
    g_plain = _grads(plain, params)
    params2 = _leaves(hidden, weight, bias)
    logits = torch.nn.functional.linear(params2[0], params2[1], params2[2])[:, :-1]
    chunked = ChunkedDivergence("forward_kl", chunk_size=5, ce_weight=0.4, temperature=2.0)(
        ModelOutputs(logits=logits), ModelOutputs(logits=teacher), batch
    )
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    for a, b in zip(g_plain, _grads(chunked, params2)):
        assert torch.allclose(a, b, atol=1e-5)


def test_chunked_bfloat16_logits_give_a_bfloat16_gradient_close_to_plain():
    torch.manual_seed(3)
    s = (torch.randn(2, 4, 40) * 2).bfloat16()
    t = (torch.randn(2, 4, 40) * 2).bfloat16()
    batch = {"token_mask": torch.tensor([[True, True, False, True], [False, True, True, True]])}
    a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
    plain = ForwardKL()(ModelOutputs(logits=a), ModelOutputs(logits=t), batch)
    chunked = ChunkedDivergence(chunk_size=2)(ModelOutputs(logits=b), ModelOutputs(logits=t), batch)
    plain.backward()
    chunked.backward()
    assert chunked.dtype == torch.float32 and chunked.item() == pytest.approx(plain.item(), rel=1e-5)
    assert b.grad.dtype == torch.bfloat16 and torch.allclose(a.grad.float(), b.grad.float(), atol=1e-3)


# ---- fused == plain ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("chunk_size", [2, 7])
def test_fused_equals_plain_values_and_gradients(name, chunk_size):
    kw = DIVERGENCES[name]
    hidden, weight, bias, teacher, batch = _data(seed=4)
    params = _leaves(hidden, weight, bias)
    plain = _plain(name, kw, *params, teacher, batch, ce_weight=0.5)
    g_plain = _grads(plain, params)

    h2, w2, b2 = _leaves(hidden, weight, bias)
    fused = FusedLinearKD(name, chunk_size=chunk_size, ce_weight=0.5, temperature=2.0, **kw)(
        ModelOutputs(hidden_states=(h2 * 0,), features={"lm_head_input": h2, "lm_head_weight": w2, "lm_head_bias": b2}),
        ModelOutputs(logits=teacher),
        batch,
    )
    g_fused = _grads(fused, [h2, w2, b2])
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6, abs=1e-6)
    for a, b in zip(g_plain, g_fused):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fused_with_teacher_hidden_states_and_head_and_no_bias():
    hidden, weight, _, _, batch = _data(seed=5, bias=False)
    g = torch.Generator().manual_seed(9)
    t_hidden, t_weight = torch.randn(3, 7, 5, generator=g), torch.randn(13, 5, generator=g)
    teacher_logits = (t_hidden @ t_weight.T)[:, :-1]
    params = _leaves(hidden, weight)
    plain = _plain("reverse_kl", {}, params[0], params[1], None, teacher_logits, batch)
    g_plain = _grads(plain, params)
    h2, w2 = _leaves(hidden, weight)
    fused = FusedLinearKD("reverse_kl", chunk_size=3, temperature=2.0)(
        ModelOutputs(features={"lm_head_input": h2, "lm_head_weight": w2}),
        ModelOutputs(features={"lm_head_input": t_hidden, "lm_head_weight": t_weight}),
        batch,
    )
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    for a, b in zip(g_plain, _grads(fused, [h2, w2])):
        assert torch.allclose(a, b, atol=1e-5)


def test_fused_masked_positions_change_nothing_and_get_zero_gradient():
    hidden, weight, bias, teacher, batch = _data(seed=6)
    mask = batch["token_mask"]

    def run(h_in, t_in):
        h_in = h_in.clone().requires_grad_()
        w_in = weight.clone().requires_grad_()
        out = FusedLinearKD("jsd", chunk_size=4, beta=0.5)(
            ModelOutputs(features={"lm_head_input": h_in, "lm_head_weight": w_in, "lm_head_bias": bias}),
            ModelOutputs(logits=t_in),
            batch,
        )
        out.backward()
        return out.detach(), h_in.grad, w_in.grad

    v1, gh1, gw1 = run(hidden, teacher)
    h2, t2 = hidden.clone(), teacher.clone()
    h2[:, :-1][~mask] = 1e4
    h2[:, -1] = float("nan")  # the last position predicts nothing after the shift
    t2[~mask] = float("nan")
    v2, gh2, gw2 = run(h2, t2)
    assert torch.equal(v1, v2) and torch.equal(gw1, gw2) and torch.equal(gh1[:, :-1][mask], gh2[:, :-1][mask])
    assert torch.all(gh1[:, :-1][~mask] == 0) and torch.all(gh1[:, -1] == 0)


def test_fused_on_a_tiny_hugging_face_model_matches_plain_through_the_model():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 32, (2, 7))
    labels = ids.clone()
    labels[0, :3] = -100
    batch = {"labels": labels[:, 1:], "token_mask": labels[:, 1:] != -100}
    teacher = ModelOutputs(logits=torch.randn(2, 6, 32))
    weight, bias = lm_head_of(model)
    assert weight is model.lm_head.weight and bias is None
    assert set(lm_head_features(model)) == {"lm_head_weight"}

    out = model(input_ids=ids, output_hidden_states=True)
    plain = ForwardKL()(ModelOutputs(logits=out.logits[:, :-1]), teacher, batch)
    g_plain = torch.autograd.grad(plain, list(model.parameters()))
    from litdistill.core.forward import run_model

    student = run_model(model, {"input_ids": ids}, FusedLinearKD.needs, "causal_lm")  # the module's own forward
    assert student.logits is None and student.hidden_states is None
    fused = FusedLinearKD(chunk_size=4)(student, teacher, batch)
    g_fused = torch.autograd.grad(fused, list(model.parameters()))
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    for a, b in zip(g_plain, g_fused):
        assert torch.allclose(a, b, atol=1e-6)


def test_lm_head_of_rejects_models_without_output_embeddings():
    with pytest.raises(ValueError, match="no output embeddings"):
        lm_head_of(torch.nn.Linear(2, 2))


# ---- gradcheck, autograd modes, normalisation --------------------------------------------------------
def test_gradcheck_float64_chunked_and_fused():
    torch.manual_seed(7)
    div = GeneralizedJSD(beta=0.4, temperature=1.3)
    mask = torch.tensor([[True, False, True], [False, True, False]])  # 3 real rows: 2 chunks of 2
    labels = torch.randint(0, 4, (2, 3))
    s = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: chunked_divergence_sum(x, t, mask, div, chunk_size=2, labels=labels, ce_weight=0.3), (s,), atol=1e-5
    )
    h = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h_, w_, b_: fused_linear_divergence_sum(
            h_, w_, b_, mask, div, teacher_logits=t, chunk_size=2, labels=labels, ce_weight=0.3
        ),
        (h, w, b),
        atol=1e-5,
        fast_mode=True,
    )


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_gradcheck_float64_closed_form_gradients_with_ce(name):
    """The divergences use closed-form chunk gradients (not autograd): check them, CE and -100 included."""
    torch.manual_seed(12)
    div = build_loss(name, temperature=1.6, **DIVERGENCES[name])
    assert div.value_and_grad(torch.randn(2, 3), torch.randn(2, 3)) is not None
    mask = torch.tensor([True, True, True, False])
    labels = torch.tensor([2, -100, 0, 1])
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: chunked_divergence_sum(x, t, mask, div, chunk_size=2, labels=labels, ce_weight=0.7), (s,), atol=1e-6
    )


def test_a_divergence_without_a_closed_form_is_differentiated_with_autograd_in_both_variants():
    class Halved(ForwardKL):  # redefines the divergence: the inherited closed form no longer applies
        def divergence(self, s_logp, t_logp):
            return 0.5 * super().divergence(s_logp, t_logp)

    hidden, weight, bias, teacher, batch = _data(seed=14)
    div = Halved(temperature=1.5)
    assert div.value_and_grad(torch.randn(2, 3), torch.randn(2, 3)) is None
    h, w, b = _leaves(hidden, weight, bias)
    logits = torch.nn.functional.linear(h, w, b)[:, :-1]
    mask = batch["token_mask"]
    reference = div.per_token(logits[mask], teacher[mask]).sum() + 0.4 * torch.nn.functional.cross_entropy(
        logits[mask], batch["labels"][mask], reduction="sum"
    )
    expected = _grads(reference, [h, w, b])
    logits = torch.nn.functional.linear(h, w, b)[:, :-1]
    chunked = chunked_divergence_sum(logits, teacher, mask, div, chunk_size=4, labels=batch["labels"], ce_weight=0.4)
    fused = fused_linear_divergence_sum(
        h[:, :-1], w, b, mask, div, teacher_logits=teacher, chunk_size=4, labels=batch["labels"], ce_weight=0.4
    )
    for value in (chunked, fused):
        assert torch.allclose(value, reference, atol=1e-5)
        for a, e in zip(_grads(value, [h, w, b]), expected):
            assert torch.allclose(a, e, atol=1e-5)


def test_second_backward_with_retain_graph_recomputes_the_same_gradient():
    hidden, weight, bias, teacher, batch = _data(seed=8)
    s = torch.nn.functional.linear(hidden, weight, bias)[:, :-1].detach().requires_grad_()
    loss = ChunkedDivergence(chunk_size=3)(ModelOutputs(logits=s), ModelOutputs(logits=teacher), batch)
    (2 * loss).backward(retain_graph=True)
    first = s.grad.clone()
    s.grad = None
    (2 * loss).backward()
    assert torch.allclose(first, s.grad)
    h, w = _leaves(hidden, weight)
    fused = FusedLinearKD(chunk_size=3)(
        ModelOutputs(features={"lm_head_input": h, "lm_head_weight": w}), ModelOutputs(logits=teacher), batch
    )
    fused.backward(retain_graph=True)
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    fused.backward()
    assert torch.allclose(gh, h.grad) and torch.allclose(gw, w.grad)


def test_no_grad_and_inference_give_the_same_value():
    hidden, weight, bias, teacher, batch = _data(seed=9)
    s = torch.nn.functional.linear(hidden, weight, bias)[:, :-1].detach().requires_grad_()
    loss = ChunkedDivergence("skew_kl", chunk_size=4, alpha=0.1)
    with_grad = loss(ModelOutputs(logits=s), ModelOutputs(logits=teacher), batch)
    with torch.no_grad():
        no_grad = loss(ModelOutputs(logits=s), ModelOutputs(logits=teacher), batch)
    with torch.inference_mode():
        inference = loss(ModelOutputs(logits=s), ModelOutputs(logits=teacher), batch)
    assert not no_grad.requires_grad and no_grad.item() == with_grad.item() == inference.item()


def test_step_token_count_is_honoured_like_the_plain_loss():
    hidden, weight, bias, teacher, batch = _data(seed=10)
    step = {**batch, "num_tokens_in_step": torch.tensor(40.0), "accumulate": 2}
    logits = torch.nn.functional.linear(hidden, weight, bias)[:, :-1]
    plain = ForwardKL()(ModelOutputs(logits=logits), ModelOutputs(logits=teacher), step)
    chunked = ChunkedDivergence(chunk_size=3)(ModelOutputs(logits=logits), ModelOutputs(logits=teacher), step)
    fused = FusedLinearKD(chunk_size=3)(
        ModelOutputs(features={"lm_head_input": hidden, "lm_head_weight": weight, "lm_head_bias": bias}),
        ModelOutputs(logits=teacher),
        step,
    )
    by_hand = (
        ForwardKL()(ModelOutputs(logits=logits), ModelOutputs(logits=teacher), batch)
        * batch["token_mask"].sum()
        * 2
        / 40
    )
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    assert plain.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_chunked_works_on_classification_logits():
    torch.manual_seed(11)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    plain = ForwardKL(temperature=3.0)(ModelOutputs(logits=s), ModelOutputs(logits=t), {})
    chunked = ChunkedDivergence("forward_kl", chunk_size=2, temperature=3.0)(
        ModelOutputs(logits=s), ModelOutputs(logits=t), {}
    )
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)


# ---- construction and validation -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "error", "pattern"),
    [
        (lambda: ChunkedDivergence(chunk_size=0), ValueError, r"chunk_size.*got 0"),
        (lambda: FusedLinearKD(chunk_size=2.5), ValueError, r"chunk_size.*got 2\.5"),
        (lambda: ChunkedDivergence("soft_kl"), ValueError, r"divergence must be one of .*got 'soft_kl'"),
        (
            lambda: ChunkedDivergence(ForwardKL(), temperature=2.0),
            ValueError,
            r"pass divergence parameters \['temperature'\]",
        ),
        (lambda: ChunkedDivergence("jsd", beta=2.0), ValueError, r"beta must be in \[0, 1\], got 2\.0"),
        (lambda: FusedLinearKD(ce_weight=-1), ValueError, r"ce_weight.*got -1"),
    ],
)
def test_invalid_construction(factory, error, pattern):
    with pytest.raises(error, match=pattern):
        factory()


def test_fused_explains_a_missing_head_weight_and_registration():
    assert LOSSES["chunked"] is ChunkedDivergence and LOSSES["fused_kd"] is FusedLinearKD
    assert FusedLinearKD.needs == frozenset({"lm_head"})  # no "logits": the module skips them
    hidden, _, _, teacher, batch = _data()
    with pytest.raises(KeyError, match="lm_head_weight"):
        FusedLinearKD()(ModelOutputs(features={"lm_head_input": hidden}), ModelOutputs(logits=teacher), batch)


def test_shipped_loss_configs_instantiate():
    names = ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd", "chunked_forward_kl", "fused_kd"]
    for name in names:
        cfg = OmegaConf.load(REPO / "conf" / "loss" / f"{name}.yaml")
        terms = {key: instantiate(term) for key, term in cfg.items()}
        assert terms and all(term.weight >= 0 for term in terms.values()), name
    fused = instantiate(OmegaConf.load(REPO / "conf" / "loss" / "fused_kd.yaml"))
    assert all(not isinstance(term, HardCE) for term in fused.values())  # CE runs inside the fused pass


# ---- the benchmark script ----------------------------------------------------------------------------
def test_bench_script_runs_at_tiny_size(tmp_path):
    """Driver, summary and JSON at tiny sizes, measured in this process (the command line measures
    each variant in a fresh forked process; forking here, after torch ran, could deadlock)."""
    sys.path.insert(0, str(REPO))
    try:
        from bench import loss_memory
    finally:
        sys.path.remove(str(REPO))

    def in_process(variant, cfg, args):
        return loss_memory.measure(
            variant,
            cfg["tokens"],
            cfg["vocab"],
            cfg["hidden"],
            1,
            cfg["chunk_size"],
            cfg["fused_chunk_size"],
            fix_malloc=False,
        )

    out = tmp_path / "bench.json"
    argv = [
        "--quick",
        "--reps",
        "2",
        "--tokens",
        "16",
        "--vocab",
        "64",
        "--hidden",
        "8",
        "--chunk-size",
        "4",
        "--fused-chunk-size",
        "4",
        "--out",
        str(out),
    ]
    result = loss_memory.main(argv, runner=in_process)
    saved = json.loads(out.read_text())
    assert set(saved["summary"]) == set(loss_memory.VARIANTS) == set(result["summary"])
    assert all(len(runs) == 2 for runs in saved["runs"].values())
    assert all(row["seconds"] > 0 for row in saved["summary"].values())
    assert saved["summary"]["hidden/plain"]["time_ratio"] == 1.0


# -- the fused loss through DistillationModule -------------------------------------------------------------
def _tiny_causal_pair():
    import transformers

    def llama(layers: int, seed: int):
        torch.manual_seed(seed)
        return transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=97,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=layers,
                num_attention_heads=2,
                num_key_value_heads=1,
                max_position_embeddings=32,
            )
        ).eval()

    return llama(2, 0), llama(1, 1)


def _causal_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 97, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # prompt tokens
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_fused_kd_through_the_module_matches_forward_kl_plus_ce_without_full_student_logits():
    from litdistill import DistillationModule
    from litdistill.core.forward import align_labels

    teacher, student = _tiny_causal_pair()
    batch = align_labels(_causal_batch(), "causal_lm")
    fused = DistillationModule(
        student, teacher, {"kd": FusedLinearKD("forward_kl", chunk_size=4, ce_weight=1.0, weight=0.5)}, task="causal_lm"
    )
    outputs = fused.student_outputs(batch)
    assert outputs.logits is None and outputs.features["lm_head_weight"] is student.lm_head.weight
    assert fused.teacher_outputs(batch).logits is None  # the teacher side goes through its head chunk by chunk too
    total, _, _ = fused.loss_terms(batch)
    fused_grads = torch.autograd.grad(total, list(student.parameters()))

    plain = DistillationModule(
        student, teacher, {"kd": ForwardKL(weight=0.5), "ce": HardCE(weight=0.5)}, task="causal_lm"
    )
    reference, _, _ = plain.loss_terms(batch)
    plain_grads = torch.autograd.grad(reference, list(student.parameters()))
    assert torch.allclose(total, reference, atol=1e-5)
    for a, b in zip(fused_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_cli_trains_the_tiny_causal_recipe_with_the_fused_loss(tmp_path):
    from tests.test_cli import run_cli

    run_cli(["experiment=tiny_causal", "loss=fused_kd", "baseline=false", "report.plots=false"], tmp_path)
    run = next((tmp_path / "outputs").glob("*/runs/*"))
    report = json.loads((run / "report.json").read_text())
    assert report["models"]["student"]["metrics"]["perplexity"] > 1.0


# ---- precision at a large vocabulary ------------------------------------------------------------------
@pytest.mark.parametrize("vocab", [32_000, 30_522])  # one with a block divisor, one without
def test_chunked_and_fused_forward_kl_stay_within_2e_6_of_the_plain_loss_at_a_large_vocabulary(vocab):
    """Per-row sums over 32,000 entries in one float32 dot product drift by ~2e-5 (relative) from the
    plain loss on peaked, close distributions; the chunked and fused losses must keep the accuracy of a
    summed elementwise product (docs/losses.md: within 1e-5 of plain; here 2e-6)."""
    g = torch.Generator().manual_seed(0)
    b, t, h = 2, 24, 256
    hidden = torch.randn(b, t + 1, h, generator=g)
    weight = torch.randn(vocab, h, generator=g) * (5 / h**0.5)  # logits of std ~5: a peaked distribution
    logits = torch.nn.functional.linear(hidden, weight)[:, :-1]
    teacher = logits + torch.randn(logits.shape, generator=g) * 0.05  # a student close to its teacher
    batch = {"token_mask": torch.ones(b, t, dtype=torch.bool)}
    plain = float(ForwardKL()(ModelOutputs(logits=logits), ModelOutputs(logits=teacher), batch))
    chunked = ChunkedDivergence("forward_kl", chunk_size=16)(
        ModelOutputs(logits=logits), ModelOutputs(logits=teacher), batch
    )
    fused = FusedLinearKD("forward_kl", chunk_size=16)(
        ModelOutputs(features={"lm_head_input": hidden, "lm_head_weight": weight}), ModelOutputs(logits=teacher), batch
    )
    for got in (chunked, fused):
        assert abs(float(got) - plain) / plain < 2e-6, (float(got), plain)
