"""NaN and -inf in logits: masked rows never reach a gradient; a restricted vocabulary's -inf logits give
the finite true value (p log p -> 0 where p = 0), in the plain, chunked and fused losses; mismatched
output spaces are named. Expected values are written out by hand on 3-entry distributions."""

from __future__ import annotations

import math

import pytest
import torch

from litdistill.core.outputs import ModelOutputs
from litdistill.losses import ChunkedDivergence, ForwardKL, HardCE, ReverseKL, SoftTargetKL
from litdistill.losses.sparse import dense_to_topk

NEG = -math.inf


def test_masked_rows_with_nan_or_inf_logits_leave_value_and_gradients_finite():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [math.nan, 0.0, math.inf]]], requires_grad=True)  # [1, 2, 3]
    teacher = torch.tensor([[[1.0, 1.0, 0.0], [math.nan, math.nan, 1.0]]])
    batch = {"token_mask": torch.tensor([[True, False]]), "labels": torch.tensor([[2, -100]])}
    for loss in (SoftTargetKL(temperature=2.0), ForwardKL(), ReverseKL(), HardCE()):
        logits.grad = None
        value = loss(ModelOutputs(logits=logits), ModelOutputs(logits=teacher), batch)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all(), type(loss).__name__
        assert torch.equal(logits.grad[0, 1], torch.zeros(3)), type(loss).__name__  # the masked row


def test_a_teacher_only_minus_inf_gives_the_true_forward_kl():
    # p_T = (1/2, 1/2, 0), p_S = (1/4, 1/4, 1/2): KL(p_T || p_S) = 2 * 1/2 * log(2) = log 2
    student = torch.log(torch.tensor([[0.25, 0.25, 0.5]])).requires_grad_()
    teacher = torch.tensor([[0.0, 0.0, NEG]])
    batch = {"token_mask": torch.tensor([True])}
    for loss in (ForwardKL(), SoftTargetKL(temperature=1.0), ChunkedDivergence("forward_kl")):
        student.grad = None
        value = loss(ModelOutputs(logits=student), ModelOutputs(logits=teacher), batch)
        value.backward()
        assert float(value) == pytest.approx(math.log(2), rel=1e-6), type(loss).__name__
        # d/dz_S = p_S - p_T = (-1/4, -1/4, 1/2)
        torch.testing.assert_close(student.grad, torch.tensor([[-0.25, -0.25, 0.5]]))


def test_a_student_only_minus_inf_gives_the_true_reverse_kl():
    # p_S = (1/2, 1/2, 0), p_T = (1/4, 1/4, 1/2): KL(p_S || p_T) = log 2; d/dz_S = p_S (log p_S/p_T - KL) = 0
    student = torch.tensor([[0.0, 0.0, NEG]], requires_grad=True)
    teacher = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    batch = {"token_mask": torch.tensor([True])}
    for loss in (ReverseKL(), ChunkedDivergence("reverse_kl")):
        student.grad = None
        value = loss(ModelOutputs(logits=student), ModelOutputs(logits=teacher), batch)
        value.backward()
        assert float(value) == pytest.approx(math.log(2), rel=1e-6), type(loss).__name__
        torch.testing.assert_close(student.grad, torch.zeros(1, 3), atol=1e-7, rtol=0)


def test_mismatched_output_spaces_are_named():
    student, teacher = torch.zeros(2, 10), torch.zeros(2, 12)
    for loss in (SoftTargetKL(), ForwardKL()):
        with pytest.raises(ValueError, match="student's logits have 10 entries per row, the teacher's 12"):
            loss(ModelOutputs(logits=student), ModelOutputs(logits=teacher), {})
    topk = dense_to_topk(torch.randn(2, 50), 5)
    with pytest.raises(ValueError, match=r"top-k ids reach \d+, but the student's logits have 10 entries"):
        ForwardKL()(ModelOutputs(logits=student), ModelOutputs(topk=topk), {"token_mask": torch.ones(2, dtype=bool)})
