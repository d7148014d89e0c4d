"""Loss values against hand-computed numbers and an independent implementation; validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from litdistill.core.outputs import ModelOutputs
from litdistill.losses import LOSSES, DistillationLoss, ForwardKL, GeneralizedJSD, HardCE, SoftTargetKL, build_loss


def _kl_by_hand(t_logits: list[float], s_logits: list[float], temp: float) -> float:
    def softmax(xs):
        exps = [math.exp(x / temp) for x in xs]
        return [e / sum(exps) for e in exps]

    p, q = softmax(t_logits), softmax(s_logits)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_soft_target_kl_matches_hand_computation():
    teacher = [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]
    student = [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]
    for temp in (1.0, 2.0, 4.0):
        loss = SoftTargetKL(temperature=temp)(
            ModelOutputs(logits=torch.tensor(student)), ModelOutputs(logits=torch.tensor(teacher)), {}
        )
        expected = temp**2 * sum(_kl_by_hand(t, s, temp) for t, s in zip(teacher, student)) / 2
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_soft_target_kl_matches_torch_kl_div_and_is_zero_for_equal_logits():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    ours = SoftTargetKL(temperature=3.0)(ModelOutputs(logits=s), ModelOutputs(logits=t), {})
    ref = F.kl_div(F.log_softmax(s / 3, -1), F.log_softmax(t / 3, -1), log_target=True, reduction="batchmean") * 9
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    same = SoftTargetKL()(ModelOutputs(logits=t), ModelOutputs(logits=t), {})
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_token_logits_use_the_token_mask_and_masked_positions_get_no_gradient():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 6, requires_grad=True)
    t = torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    loss = SoftTargetKL(temperature=1.0)(ModelOutputs(logits=s), ModelOutputs(logits=t), {"token_mask": mask})
    ref = F.kl_div(F.log_softmax(s[mask], -1), F.log_softmax(t[mask], -1), log_target=True, reduction="batchmean")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert torch.all(s.grad[~mask] == 0) and torch.any(s.grad[mask] != 0)


def test_hard_ce_ignores_minus_100_and_runs_at_temperature_one():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    labels = torch.tensor([0, -100, 1])
    loss = HardCE()(ModelOutputs(logits=logits), None, {"labels": labels})
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(-5) / (math.exp(5) + math.exp(-5)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_refused_naming_the_value(bad):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        SoftTargetKL(temperature=bad)


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match=r"weight must be a finite number >= 0, got -0.5"):
        HardCE(weight=-0.5)


def test_registry_finds_builtins_and_user_losses_register_themselves():
    assert LOSSES["soft_kl"] is SoftTargetKL and LOSSES["hard_ce"] is HardCE
    assert build_loss("soft_kl", temperature=3.0).temperature == 3.0
    with pytest.raises(KeyError, match="registered losses"):
        build_loss("nope")

    class L1Logits(DistillationLoss):
        name = "test_l1_logits"

        def forward(self, student, teacher, batch):
            return (student.logits - teacher.logits).abs().mean()

    assert LOSSES["test_l1_logits"] is L1Logits
    with pytest.raises(TypeError, match="unknown entries"):
        type("BadNeeds", (DistillationLoss,), {"needs": frozenset({"telepathy"})})


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("cls", [SoftTargetKL, ForwardKL, GeneralizedJSD])
def test_temperature_set_after_construction_is_validated_like_weight(bad, cls):
    """Schedules and users set temperature mid-training; a bad value is refused and the old one kept."""
    loss = cls(temperature=2.0)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: temperature must be a finite number > 0, got {bad}"):
        loss.temperature = bad
    assert loss.temperature == 2.0
    loss.temperature = 0.5  # any positive value, as a schedule produces
    assert loss.temperature == 0.5
    assert not hasattr(HardCE(), "temperature")  # a loss without one still has none to schedule


def test_a_user_loss_may_not_take_a_registered_name():
    with pytest.raises(
        TypeError,
        match=r"loss name 'soft_kl' of \S*test_losses\.test_a_user_loss_may_not_take_a_registered_name"
        r"\.<locals>\.Impostor is already registered by litdistill\.losses\.logits\.SoftTargetKL; "
        r"give Impostor another name",
    ):

        class Impostor(DistillationLoss):
            name = "soft_kl"

    assert LOSSES["soft_kl"] is SoftTargetKL

    class TweakedKD(SoftTargetKL):  # inherits the name: not registered, so no clash
        pass

    assert LOSSES["soft_kl"] is SoftTargetKL


def test_the_same_loss_class_defined_again_replaces_itself():
    """A reloaded module (or a test run twice) defines the same class again: not a clash."""

    def define() -> type[DistillationLoss]:
        class Reloaded(DistillationLoss):
            name = "test_reloaded"

        return Reloaded

    first, second = define(), define()
    assert first is not second and LOSSES["test_reloaded"] is second
