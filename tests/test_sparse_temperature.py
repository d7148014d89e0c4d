"""Top-k teacher targets at T != 1 are exact: the teacher is tempered before its top k are taken, so the
(k+1)-bucket loss equals an independently computed coarsened KL of the tempered distributions, and the gap
to the dense loss is exactly the chain rule's tail term. A loss at another temperature than the store's is
refused. Float64, a 32,000-entry vocabulary, k = 64 and 128, T = 2 and 4."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from litdistill.core.outputs import ModelOutputs, TopK
from litdistill.losses import ForwardKL, SoftTargetKL
from litdistill.losses.sparse import coarse_log_probs, dense_to_topk

V = 32_000


def _llm_like(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits with a peaked head and a long tail, as an LLM's next-token scores."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, V, generator=g, dtype=torch.float64) * 2
    teacher = base + torch.randn(rows, V, generator=g, dtype=torch.float64) + 8 * (torch.arange(V) < 20)
    student = base + torch.randn(rows, V, generator=g, dtype=torch.float64) * 1.5
    return student, teacher


def _coarse_kl_reference(s: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(P||Q) over {top-k entries, everything else} of the tempered distributions, from dense float64."""
    p = F.softmax(t / temperature, -1)
    q = F.softmax(s / temperature, -1)
    p_top, q_top = p.gather(-1, ids), q.gather(-1, ids)
    p_c = torch.cat([p_top, (1 - p_top.sum(-1, keepdim=True)).clamp_min(0)], -1)
    q_c = torch.cat([q_top, (1 - q_top.sum(-1, keepdim=True)).clamp_min(0)], -1)
    return torch.where(p_c > 0, p_c * (p_c.log() - q_c.log()), 0.0).sum(-1)


@pytest.mark.parametrize("temperature", [2.0, 4.0])
@pytest.mark.parametrize("k", [64, 128])
def test_topk_at_temperature_is_the_exact_coarse_kl_and_the_chain_rule_gap_to_dense(k, temperature):
    s, t = _llm_like(6, seed=k)
    topk = dense_to_topk(t, k, temperature)
    s_c, t_c = coarse_log_probs(s, topk, temperature)
    coarse = (t_c.exp() * (t_c - s_c)).sum(-1)
    torch.testing.assert_close(coarse, _coarse_kl_reference(s, t, topk.ids, temperature), rtol=1e-9, atol=1e-12)
    # dense KL of the tempered distributions = coarse + p_tail * KL of the tail conditionals
    p, q = F.log_softmax(t / temperature, -1), F.log_softmax(s / temperature, -1)
    dense = (p.exp() * (p - q)).sum(-1)
    tail = torch.ones_like(p, dtype=torch.bool).scatter_(-1, topk.ids, False)
    p_t, q_t = p.masked_fill(~tail, -torch.inf).log_softmax(-1), q.masked_fill(~tail, -torch.inf).log_softmax(-1)
    tail_kl = torch.where(tail, p_t.exp() * (p_t - q_t), 0.0).sum(-1)
    torch.testing.assert_close(dense - coarse, topk.log_tail.exp() * tail_kl, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_losses_and_gradients_at_temperature_match_the_independent_coarse_kl(temperature):
    s, t = _llm_like(4, seed=7)
    topk = dense_to_topk(t, 64, temperature)
    batch = {"token_mask": torch.ones(4, dtype=torch.bool)}
    for loss in (SoftTargetKL(temperature=temperature), ForwardKL(temperature=temperature)):
        x = s.clone().requires_grad_()
        got = loss(ModelOutputs(logits=x), ModelOutputs(topk=topk), batch)
        got.backward()
        y = s.clone().requires_grad_()
        want = _coarse_kl_reference(y, t, topk.ids, temperature).mean() * temperature**2
        want.backward()
        torch.testing.assert_close(got.double(), want, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-12)


def test_a_loss_at_another_temperature_than_the_store_is_refused():
    s, t = _llm_like(2, seed=3)
    stored_at_1 = dense_to_topk(t, 64)
    with pytest.raises(ValueError, match="captured at temperature 1, the loss runs at 2"):
        SoftTargetKL(temperature=2.0)(ModelOutputs(logits=s), ModelOutputs(topk=stored_at_1), {})
    stored_at_2 = TopK(stored_at_1.logprobs, stored_at_1.ids, stored_at_1.log_tail, temperature=2.0)
    with pytest.raises(ValueError, match="captured at temperature 2, the loss runs at 1"):
        ForwardKL()(ModelOutputs(logits=s), ModelOutputs(topk=stored_at_2), {"token_mask": torch.ones(2, dtype=bool)})
