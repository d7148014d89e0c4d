"""The student's side of the k+1-bucket losses (litdistill.losses.sparse): exact tail, empty slots, gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from litdistill.core.outputs import TopK
from litdistill.losses.sparse import (
    FLOOR,
    _anchored_ids,
    _StudentCoarse,
    coarse_log_probs,
    student_coarse_log_probs,
    tail_gap_bound,
)


def _reference(z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log q over (each slot, the rest), row by row with a boolean mask: slow and plain."""
    logq = F.log_softmax(z, -1)
    out = []
    for r in range(z.shape[0]):
        in_k = torch.zeros(z.shape[1], dtype=torch.bool)
        in_k[[i for i in ids[r].tolist() if i >= 0]] = True
        top = [logq[r, i] if i >= 0 else torch.tensor(FLOOR, dtype=z.dtype) for i in ids[r].tolist()]
        tail = logq[r].masked_fill(in_k, -torch.inf).logsumexp(-1).clamp_min(FLOOR)
        out.append(torch.stack([*top, tail]))
    return torch.stack(out)


def _ids_with_empty_slots(n: int, vocab: int, k: int) -> torch.Tensor:
    torch.manual_seed(0)
    ids = torch.stack([torch.randperm(vocab)[:k] for _ in range(n)])
    ids[1, 3:] = -1  # trailing empty slots (a codec folded them into the tail)
    ids[2, 1:] = -1  # one entry left
    ids[3, :] = -1  # a padding row: no entries
    ids[4, 0] = -1  # an empty slot first
    return ids


def test_student_coarse_is_exact_with_empty_slots_and_sums_to_one():
    ids = _ids_with_empty_slots(6, 50, 6)
    z = (torch.randn(6, 50, dtype=torch.float64) * 3).requires_grad_()
    got, want = student_coarse_log_probs(z, ids), _reference(z, ids)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    mass = got.exp().masked_fill(torch.cat([ids < 0, torch.zeros(6, 1, dtype=torch.bool)], -1), 0).sum(-1)
    torch.testing.assert_close(mass, torch.ones(6, dtype=torch.float64), atol=1e-12, rtol=0)
    w = torch.randn(6, 7, dtype=torch.float64).masked_fill(
        torch.cat([ids < 0, torch.zeros(6, 1, dtype=torch.bool)], -1), 0
    )
    (g_got,) = torch.autograd.grad((got * w).sum(), z)
    (g_want,) = torch.autograd.grad((want * w).sum(), z)
    torch.testing.assert_close(g_got, g_want, atol=1e-12, rtol=0)


def test_student_coarse_gradcheck_and_teacher_side_unchanged():
    ids = _ids_with_empty_slots(6, 30, 5)
    valid, anchored = _anchored_ids(ids)
    z = (torch.randn(6, 30, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: _StudentCoarse.apply(x, anchored, valid), (z,))
    topk = TopK(torch.full((6, 5), -2.0, dtype=torch.float64), ids, torch.full((6,), -0.5, dtype=torch.float64), 2.0)
    s_c, t_c = coarse_log_probs(z, topk, temperature=2.0)
    torch.testing.assert_close(s_c, _reference(z / 2.0, ids), atol=1e-12, rtol=0)
    assert torch.isfinite(t_c).all()


def test_student_tail_is_exact_when_tiny_and_all_entries_leave_no_tail():
    z = torch.zeros(2, 100)
    z[:, :5] = 40.0
    tail = student_coarse_log_probs(z, torch.arange(5).expand(2, 5))[:, -1]
    want = torch.log(torch.tensor(95.0)) - 40.0 - torch.log(torch.tensor(5.0))  # log(1 - sum_K q) = -37.06
    torch.testing.assert_close(tail, want.expand(2), atol=1e-4, rtol=0)
    z = torch.randn(3, 10, requires_grad=True)
    out = student_coarse_log_probs(z, torch.stack([torch.randperm(10) for _ in range(3)]))  # k = V
    assert bool((out[:, -1] < FLOOR / 2).all())
    out.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_tail_gap_bound_masks_every_entry_with_empty_slots():
    torch.manual_seed(3)
    ids = torch.tensor([[4, 9, -1, -1]])
    s = torch.randn(1, 20)
    s[0, 4] = 8.0  # a dominant top-1: counting it in the tail would inflate q_tail
    logq = F.log_softmax(s, -1)
    topk = TopK(torch.zeros(1, 4), ids, torch.log(torch.tensor([0.5])))
    in_k = torch.zeros(20, dtype=torch.bool)
    in_k[[4, 9]] = True
    want = 0.5 * (logq[0].masked_fill(in_k, -torch.inf).logsumexp(-1) - logq[0].masked_fill(in_k, torch.inf).amin(-1))
    torch.testing.assert_close(tail_gap_bound(topk, s), want.reshape(1), atol=1e-5, rtol=0)
