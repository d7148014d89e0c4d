"""Token-level divergences: hand-computed values, TRL / F.kl_div references, masks, gradients, validation."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from litdistill.core.outputs import ModelOutputs
from litdistill.losses import (
    LOSSES,
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    SkewKL,
    SkewReverseKL,
    TotalVariation,
    build_loss,
    token_mean,
    token_scale,
)

LN2 = math.log(2.0)
ALL = {
    "forward_kl": ForwardKL,
    "reverse_kl": ReverseKL,
    "jsd": GeneralizedJSD,
    "skew_kl": SkewKL,
    "skew_reverse_kl": SkewReverseKL,
    "tvd": TotalVariation,
}


def _call(loss, s, t, batch):
    return loss(ModelOutputs(logits=s), ModelOutputs(logits=t), batch)


# ---- hand-computed values --------------------------------------------------------------------------
# Token A: teacher logits [ln 2, 0, 0] -> p_T = (1/2, 1/4, 1/4); student [0, 0, 0] -> p_S = (1/3, 1/3, 1/3).
# Token B: the two swapped (teacher uniform, student (1/2, 1/4, 1/4)).
# Token C: masked out (token_mask False), filled with garbage.
HAND = {
    # sum p_T log(p_T / p_S)
    "forward_kl": (0.5 * math.log(1.5) + 0.5 * math.log(0.75), (1 / 3) * math.log(32 / 27)),
    "reverse_kl": ((1 / 3) * math.log(32 / 27), 0.5 * math.log(1.5) + 0.5 * math.log(0.75)),
    # M = (p_T + p_S)/2 = (5/12, 7/24, 7/24); 0.5 KL(T||M) + 0.5 KL(S||M), symmetric in T and S
    "jsd": (
        0.5 * (0.5 * math.log(6 / 5) + 0.5 * math.log(6 / 7))
        + 0.5 * ((1 / 3) * math.log(4 / 5) + (2 / 3) * math.log(8 / 7)),
        0.5 * (0.5 * math.log(6 / 5) + 0.5 * math.log(6 / 7))
        + 0.5 * ((1 / 3) * math.log(4 / 5) + (2 / 3) * math.log(8 / 7)),
    ),
    # alpha = 0.1: token A M = 0.1 p_T + 0.9 p_S = (0.35, 0.325, 0.325); token B M = (0.1/3 + 0.45, 0.1/3 + 0.225, ..)
    "skew_kl": (
        0.5 * math.log(0.5 / 0.35) + 0.5 * math.log(0.25 / 0.325),
        (1 / 3) * math.log((1 / 3) / (0.1 / 3 + 0.45)) + (2 / 3) * math.log((1 / 3) / (0.1 / 3 + 0.225)),
    ),
    # KL(p_S || 0.1 p_S + 0.9 p_T): token A M = (0.1/3 + 0.45, 0.1/3 + 0.225, ..); token B M = (0.35, 0.325, 0.325)
    "skew_reverse_kl": (
        (1 / 3) * math.log((1 / 3) / (0.1 / 3 + 0.45)) + (2 / 3) * math.log((1 / 3) / (0.1 / 3 + 0.225)),
        0.5 * math.log(0.5 / 0.35) + 0.5 * math.log(0.25 / 0.325),
    ),
    # 0.5 (|1/2 - 1/3| + 2 |1/4 - 1/3|) = 1/6
    "tvd": (1 / 6, 1 / 6),
}


def _hand_batch(scale: float = 1.0):
    """[1, 3, 3] logits; logits are multiplied by ``scale`` (= T keeps the softened distributions)."""
    teacher = torch.tensor([[[LN2, 0.0, 0.0], [0.0, 0.0, 0.0], [float("nan"), 1e30, -5.0]]]) * scale
    student = torch.tensor([[[0.0, 0.0, 0.0], [LN2, 0.0, 0.0], [float("inf"), 3.0, float("nan")]]]) * scale
    return student, teacher, {"token_mask": torch.tensor([[True, True, False]])}


@pytest.mark.parametrize("name", sorted(HAND))
def test_values_match_hand_computation(name):
    kwargs = {"beta": 0.5} if name == "jsd" else {"alpha": 0.1} if "skew" in name else {}
    s, t, batch = _hand_batch()
    loss = build_loss(name, **kwargs)
    expected = sum(HAND[name]) / 2  # mean over the 2 real tokens; token C is masked
    assert _call(loss, s, t, batch).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", sorted(HAND))
def test_temperature_softens_and_t2_flag_scales(name):
    kwargs = {"beta": 0.5} if name == "jsd" else {"alpha": 0.1} if "skew" in name else {}
    s, t, batch = _hand_batch(scale=2.0)  # logits x 2 at T = 2: the same softened distributions
    base = sum(HAND[name]) / 2
    scaled = build_loss(name, temperature=2.0, scale_by_t2=True, **kwargs)
    plain = build_loss(name, temperature=2.0, scale_by_t2=False, **kwargs)
    assert _call(scaled, s, t, batch).item() == pytest.approx(4.0 * base, rel=1e-5)
    assert _call(plain, s, t, batch).item() == pytest.approx(base, rel=1e-5)


def test_default_t2_flags_and_registry():
    for name, cls in ALL.items():
        assert LOSSES[name] is cls and cls.needs == frozenset({"logits"}) and cls.uses_teacher
    assert all(cls().scale_by_t2 for name, cls in ALL.items() if name != "tvd")
    assert not TotalVariation().scale_by_t2
    assert ForwardKL().temperature == 1.0


# ---- independent implementations --------------------------------------------------------------------
@pytest.fixture(scope="module")
def trl_jsd():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    gkd = pytest.importorskip("trl.experimental.gkd")
    return gkd.GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_equals_trl_with_the_same_beta(trl_jsd, beta):
    """Our beta IS TRL's beta: 0 = forward KL(teacher || student), 1 = reverse KL, mixture between."""
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7) * 2, torch.randn(2, 5, 7) * 2
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    labels[1, 4] = -100
    batch = {"labels": labels, "token_mask": labels != -100}
    ours = _call(GeneralizedJSD(beta=beta, temperature=1.5, scale_by_t2=False), s, t, batch)
    ref = trl_jsd(s, t, labels=labels, beta=beta, temperature=1.5)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # TRL's num_items_in_batch = our num_tokens_in_step with accumulate = 1
    ours_n = _call(
        GeneralizedJSD(beta=beta, scale_by_t2=False), s, t, {**batch, "num_tokens_in_step": torch.tensor(11.0)}
    )
    ref_n = trl_jsd(s, t, labels=labels, beta=beta, num_items_in_batch=torch.tensor(11.0))
    assert ours_n.item() == pytest.approx(ref_n.item(), rel=1e-5)


def test_forward_and_reverse_kl_equal_torch_kl_div():
    torch.manual_seed(1)
    s, t = torch.randn(6, 9), torch.randn(6, 9)
    s_logp, t_logp = F.log_softmax(s / 3, -1), F.log_softmax(t / 3, -1)
    fwd = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean") * 9
    rev = F.kl_div(t_logp, s_logp, log_target=True, reduction="batchmean") * 9
    assert _call(ForwardKL(temperature=3.0), s, t, {}).item() == pytest.approx(fwd.item(), rel=1e-5)
    assert _call(ReverseKL(temperature=3.0), s, t, {}).item() == pytest.approx(rev.item(), rel=1e-5)


def test_skew_and_tvd_equal_a_float64_probability_space_reference():
    torch.manual_seed(2)
    s, t = torch.randn(5, 6) * 3, torch.randn(5, 6) * 3
    p, q = t.double().softmax(-1), s.double().softmax(-1)  # teacher, student
    a = 0.3
    skew = (p * (p / (a * p + (1 - a) * q)).log()).sum(-1).mean()
    skew_rev = (q * (q / (a * q + (1 - a) * p)).log()).sum(-1).mean()
    tvd = 0.5 * (p - q).abs().sum(-1).mean()
    assert _call(SkewKL(alpha=a), s, t, {}).item() == pytest.approx(skew.item(), rel=1e-5)
    assert _call(SkewReverseKL(alpha=a), s, t, {}).item() == pytest.approx(skew_rev.item(), rel=1e-5)
    assert _call(TotalVariation(), s, t, {}).item() == pytest.approx(tvd.item(), rel=1e-5)


def test_limits_are_exact():
    torch.manual_seed(3)
    s, t = torch.randn(4, 8) * 2, torch.randn(4, 8) * 2
    fwd, rev = _call(ForwardKL(), s, t, {}), _call(ReverseKL(), s, t, {})
    assert _call(GeneralizedJSD(beta=0.0), s, t, {}).item() == fwd.item()
    assert _call(GeneralizedJSD(beta=1.0), s, t, {}).item() == rev.item()
    assert _call(SkewKL(alpha=0.0), s, t, {}).item() == fwd.item()
    assert _call(SkewReverseKL(alpha=0.0), s, t, {}).item() == rev.item()
    # The mixture form tends to beta * KL(T||S) (not to KL itself): that is why the ends are special-cased.
    small = _call(GeneralizedJSD(beta=1e-3), s.double(), t.double(), {})
    assert (small / 1e-3).item() == pytest.approx(fwd.item(), rel=1e-2)
    assert _call(GeneralizedJSD(beta=0.5), s, t, {}).item() <= math.log(2) + 1e-6  # JSD is bounded by ln 2


def test_identical_distributions_give_zero():
    torch.manual_seed(4)
    x = torch.randn(3, 4, 10)
    batch = {"token_mask": torch.ones(3, 4, dtype=torch.bool)}
    for name in ALL:
        assert _call(build_loss(name), x, x.clone(), batch).item() == pytest.approx(0.0, abs=1e-6), name


# ---- masks and reduction -----------------------------------------------------------------------------
def test_reduction_is_per_token_not_per_sequence():
    torch.manual_seed(5)
    s, t = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, False, False, False], [True, True, True, False]])  # 1 and 3 real tokens
    per_token = (F.log_softmax(t, -1).exp() * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)  # [2, 4]
    token_avg = per_token[mask].mean()
    seq_avg = (per_token[0, :1].mean() + per_token[1, :3].mean()) / 2
    ours = _call(ForwardKL(), s, t, {"token_mask": mask})
    assert ours.item() == pytest.approx(token_avg.item(), rel=1e-6)
    assert abs(token_avg.item() - seq_avg.item()) > 1e-3  # the two reductions really differ here


@pytest.mark.parametrize("name", sorted(ALL))
def test_masked_positions_change_neither_value_nor_gradient(name):
    torch.manual_seed(6)
    s = torch.randn(2, 5, 6)
    t = torch.randn(2, 5, 6)
    labels = torch.randint(0, 6, (2, 5))
    labels[0, 3:] = -100  # padding
    labels[1, 0] = -100  # prompt
    mask = labels != -100
    batch = {"labels": labels, "token_mask": mask}

    def value_and_grad(s_in, t_in):
        s_in = s_in.clone().requires_grad_()
        v = _call(build_loss(name), s_in, t_in, batch)
        v.backward()
        return v.detach(), s_in.grad

    v1, g1 = value_and_grad(s, t)
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = torch.randn(int((~mask).sum()), 6) * 50
    t2[~mask] = float("nan")
    v2, g2 = value_and_grad(s2, t2)
    assert torch.equal(v1, v2) and torch.equal(g1, g2)
    assert torch.all(g1[~mask] == 0) and torch.any(g1[mask] != 0)


def test_no_real_tokens_gives_zero_with_a_gradient_path():
    s = torch.randn(1, 3, 4, requires_grad=True)
    loss = _call(GeneralizedJSD(), s, torch.randn(1, 3, 4), {"token_mask": torch.zeros(1, 3, dtype=torch.bool)})
    loss.backward()
    assert loss.item() == 0.0 and torch.all(s.grad == 0)


def test_low_precision_logits_are_computed_in_float32():
    torch.manual_seed(7)
    s, t = torch.randn(4, 50), torch.randn(4, 50)
    ref = _call(ForwardKL(), s.bfloat16().float(), t.bfloat16().float(), {})
    out = _call(ForwardKL(), s.bfloat16(), t.bfloat16(), {})
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=1e-5)


# ---- gradients ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALL))
def test_gradcheck_float64(name):
    torch.manual_seed(8)
    kwargs = {"beta": 0.3} if name == "jsd" else {"alpha": 0.2} if "skew" in name else {}
    loss = build_loss(name, temperature=1.7, **kwargs)
    s = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 3, 4, dtype=torch.float64)
    batch = {"token_mask": torch.tensor([[True, False, True]])}
    assert torch.autograd.gradcheck(lambda x: _call(loss, x, t, batch), (s,), eps=1e-6, atol=1e-5)


CLOSED_FORM_CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.3}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_kl", {"alpha": 0.0}),
    ("skew_reverse_kl", {"alpha": 0.2}),
    ("skew_reverse_kl", {"alpha": 0.0}),
    ("tvd", {}),
    ("tvd", {"scale_by_t2": True}),
]


@pytest.mark.parametrize(("name", "kwargs"), CLOSED_FORM_CASES)
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_closed_form_value_and_grad_equals_autograd_of_per_token(name, kwargs, temperature):
    """Every shipped divergence has a closed-form gradient (used by the chunked/fused losses)."""
    torch.manual_seed(13)
    div = build_loss(name, temperature=temperature, **kwargs)
    s = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 9, dtype=torch.float64) * 2
    t[0, 3] = s.detach()[0, 3] = 0.5  # equal logits in one row: ties where p_T == p_S are possible
    values = div.per_token(s, t)
    grad = torch.autograd.grad(values.sum(), s)[0]
    s_in, t_in = s.detach().clone(), t.clone()
    v2, g2 = div.value_and_grad(s_in, t_in)
    assert torch.equal(s_in, s.detach()) and torch.equal(t_in, t)  # inputs untouched
    assert torch.allclose(v2, values, atol=1e-12) and torch.allclose(g2, grad, atol=1e-12)
    # in the caller's buffers, reading from separate rows or from the buffers themselves
    for own in (False, True):
        bufs = {}

        def buffers(i, bufs=bufs):
            return bufs.setdefault(i, torch.empty_like(s_in))

        s_rows = buffers(0).copy_(s_in) if own else s_in
        t_rows = buffers(1).copy_(t_in) if own else t_in
        v3, g3 = div.value_and_grad_(s_rows, t_rows, buffers)
        assert len(bufs) <= div._work_buffers()
        assert torch.allclose(v3, values, atol=1e-12) and torch.allclose(g3, grad, atol=1e-12)
        if not own:
            assert torch.equal(s_in, s.detach()) and torch.equal(t_in, t)


def test_closed_form_falls_back_to_autograd_for_a_redefined_divergence():
    class Halved(ForwardKL):
        def divergence(self, s_logp, t_logp):
            return 0.5 * super().divergence(s_logp, t_logp)

    class Own(ReverseKL):
        def value_and_grad(self, s_rows, t_rows):
            return torch.zeros(s_rows.shape[0]), torch.zeros_like(s_rows)

    s, t = torch.randn(2, 5), torch.randn(2, 5)
    assert Halved().value_and_grad(s, t) is None and Halved()._work_buffers() == 2
    assert Halved().value_and_grad_(s, t, lambda i: torch.empty_like(s)) is None
    values, grad = Own().value_and_grad_(s, t, lambda i: torch.empty_like(s))  # its own closed form is used
    assert torch.equal(values, torch.zeros(2)) and torch.equal(grad, torch.zeros(2, 5))
    assert ForwardKL()._work_buffers() == 3 and GeneralizedJSD(beta=0.5)._work_buffers() == 4
    assert GeneralizedJSD(beta=0.0)._work_buffers() == 3 and SkewKL(alpha=0.0)._work_buffers() == 3


# ---- validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: ForwardKL(temperature=0), r"temperature.*> 0.*got 0\.0"),
        (lambda: ReverseKL(temperature=-1.5), r"got -1\.5"),
        (lambda: TotalVariation(temperature=float("nan")), r"got nan"),
        (lambda: GeneralizedJSD(beta=1.5), r"beta must be in \[0, 1\], got 1\.5"),
        (lambda: GeneralizedJSD(beta=-0.1), r"beta must be in \[0, 1\], got -0\.1"),
        (lambda: GeneralizedJSD(beta=float("nan")), r"beta.*got nan"),
        (lambda: SkewKL(alpha=1.0), r"alpha must be in \[0, 1\), got 1\.0"),
        (lambda: SkewReverseKL(alpha=-0.2), r"alpha must be in \[0, 1\), got -0\.2"),
        (lambda: SkewKL(alpha="0.1"), r"alpha must be a number, got '0\.1'"),
        (lambda: ForwardKL(scale_by_t2="yes"), r"scale_by_t2.*got 'yes'"),
        (lambda: ForwardKL(weight=-1), r"weight.*got -1"),
    ],
)
def test_invalid_parameters_raise_value_error_naming_the_value(factory, pattern):
    with pytest.raises(ValueError, match=pattern):
        factory()


def test_vocab_mismatch_is_refused():
    with pytest.raises(ValueError, match="student.s logits have 5 entries per row, the teacher.s 6"):
        _call(ForwardKL(), torch.randn(2, 5), torch.randn(2, 6), {})


# ---- gradient-accumulation normalisation -----------------------------------------------------------
def test_token_scale_formula():
    n = torch.tensor(7)
    assert token_scale(n, {}).item() == pytest.approx(1 / 7)
    assert token_scale(torch.tensor(0), {}).item() == 1.0  # no real tokens: sum (= 0) / 1
    step = {"num_tokens_in_step": torch.tensor(20.0), "accumulate": 4}
    assert token_scale(n, step).item() == pytest.approx(4 / 20)  # A / N, whatever this batch's count
    assert token_scale(n, {"num_tokens_in_step": torch.tensor(20.0)}).item() == pytest.approx(1 / 20)
    values, mask = torch.tensor([1.0, 2.0, float("nan"), 4.0]), torch.tensor([True, True, False, True])
    assert token_mean(values, mask, {}).item() == pytest.approx(7 / 3)
    assert token_mean(values, mask, step).item() == pytest.approx(7 * 4 / 20)


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "tvd", "soft_kl", "hard_ce"])
def test_micro_batches_with_step_token_count_give_the_exact_step_mean(name):
    """sum_k loss_k / A (what Lightning accumulates) == per-token mean over the whole step, for every
    loss over label tokens: the divergences, Hinton's soft targets and the hard-label cross entropy."""
    torch.manual_seed(9)
    s = torch.randn(3, 2, 6, 5)  # 3 micro-batches of [2, 6] tokens
    t = torch.randn(3, 2, 6, 5)
    masks = torch.zeros(3, 2, 6, dtype=torch.bool)
    masks[0, 0, :1] = True  # 1 real token
    masks[1, :, :5] = True  # 10
    masks[2, 1, 2:6] = True  # 4
    labels = torch.where(masks, torch.randint(0, 5, masks.shape), torch.full(masks.shape, -100))  # [3, 2, 6]
    n_step, accumulate = masks.sum().float(), 3
    loss = build_loss(name)

    def micro(k: int, **step) -> dict:
        return {"token_mask": masks[k], "labels": labels[k], **step}

    s_leaf = s.clone().requires_grad_()
    for k in range(3):
        batch = micro(k, num_tokens_in_step=n_step, accumulate=accumulate)
        (_call(loss, s_leaf[k], t[k], batch) / accumulate).backward()  # Lightning divides by A

    s_all = s.clone().requires_grad_()
    whole = _call(
        loss,
        s_all.reshape(1, -1, 5),
        t.reshape(1, -1, 5),
        {"token_mask": masks.reshape(1, -1), "labels": labels.reshape(1, -1)},
    )
    whole.backward()
    total = sum(
        _call(loss, s[k], t[k], micro(k, num_tokens_in_step=n_step, accumulate=accumulate)).item() for k in range(3)
    )
    assert total / accumulate == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(s_leaf.grad, s_all.grad, atol=1e-7)
    # The per-micro-batch mean (no step count) weighs the 1-token micro-batch like the 10-token one.
    naive = sum(_call(loss, s[k], t[k], micro(k)).item() for k in range(3)) / 3
    assert abs(naive - whole.item()) > 1e-3
