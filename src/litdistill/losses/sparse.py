"""Logit losses against a sparse teacher: top-k log-probabilities plus the leftover (tail) mass.

An offline teacher cache (``litdistill.cache``) keeps, per token of an LLM vocabulary, only the
teacher's ``k`` most likely entries ``K`` (ids and log-probabilities at temperature 1) and the log of
the mass left outside them (:class:`~litdistill.core.outputs.TopK`). This module computes the existing
divergences (:class:`~litdistill.losses.SoftTargetKL`, and every
:class:`~litdistill.losses.TokenDivergence`: forward/reverse KL, JSD, skew KL, TVD) against it.

Tail treatment: the k+1-th bucket
---------------------------------
Both distributions are *coarsened* onto the same k+1 outcomes, the stored entries and one bucket
for everything else::

    teacher  P = (p_i  for i in K,  p_tail = 1 - sum_{i in K} p_i)      (stored)
    student  Q = (q_i  for i in K,  q_tail = sum_{j not in K} q_j)      (exact, from the student's full logits)

and the loss is the divergence ``D(P || Q)`` of these two (k+1)-outcome distributions: an exact
divergence, over the coarsened outcome space, with no assumption about how the teacher's tail is
shaped. For the KL the chain rule gives the exact gap to the full-vocabulary loss::

    KL(p || q) = KL(P || Q) + p_tail * KL(p(. | tail) || q(. | tail))          (>= KL(P || Q))

so the sparse loss is off by ``p_tail`` times the KL between the two *conditional* tail
distributions: zero when the teacher's tail is empty (``k = V``) or the student's tail has the
teacher's shape, and never more than ``p_tail * log(q_tail / min_j q_j)``. Every f-divergence (JSD,
skew KL, TVD) only shrinks under coarsening (data-processing inequality). The gradient w.r.t. a
student logit is ``q_i - p_i`` for ``i`` in K (as with full logits) and ``q_j (1 - p_tail / q_tail)``
in the tail: the student's tail is pulled to the teacher's total tail mass, its shape left free.
(The alternative, spreading ``p_tail`` uniformly over the ``V - k`` tail entries, would invent a
flat tail the teacher never had and pull the student's tail towards it.)

Temperature
-----------
The tail's tempered mass ``sum_{j not in K} p_j^(1/T)`` depends on the tail's shape, which a store
does not keep, so a top-k distribution is exact only at the temperature it was captured at. The
cache therefore tempers the teacher first (``softmax(z / T)`` at the loss's T) and then takes the top
k and the exact tail mass of that tempered distribution; the temperature is part of the store's key
and travels with the rows (``TopK.temperature``). The loss tempers the student exactly and takes the
teacher as stored, so every statement above holds at any T. A loss at another temperature than the
store's (a different ``loss.kd.temperature``, a temperature schedule) is refused: its value could
not be computed exactly.

Empty slots (``ids < 0``: padding rows, entries folded into the tail by a codec) carry no mass on
either side. Probabilities that are exactly zero are represented by the finite log-probability
``FLOOR`` (``exp`` underflows to 0 in float32), so ``0 * log 0`` never turns into NaN.

Cost
----
The student's side (:func:`student_coarse_log_probs`) is one autograd node with its own backward:
forward one masked copy of the [n, V] logit rows and one log-sum-exp over it (the tail; the
normaliser is ``logaddexp`` of the tail's and the k entries' log-sum-exps: a sum of positive terms,
no cancellation), backward one ``exp`` pass and two [n, k] scatters. Composing ``log_softmax``, a
[n, V] boolean mask, ``masked_fill`` and ``logsumexp`` with autograd cost about three times as much
on CPU, more than the dense loss it replaces (the teacher's log-softmax included). The tail stays an
exact log-sum-exp over the tail entries: ``log(1 - sum_K q_i)`` from the gathered entries would
cancel catastrophically when the student's tail mass is small (float32 resolves ``sum_K q_i`` only to
about 1e-7 near 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from litdistill.core.outputs import ModelOutputs, TopK
from litdistill.losses.base import rows_and_mask, token_mean, token_scale

__all__ = [
    "FLOOR",
    "coarse_log_probs",
    "dense_to_topk",
    "sparse_divergence",
    "sparse_rows",
    "sparse_soft_kl",
    "student_coarse_log_probs",
    "tail_gap_bound",
]

FLOOR = -1.0e4  # "no mass" as a finite log-probability


def dense_to_topk(logits: Tensor, k: int, temperature: float = 1.0) -> TopK:
    """The top-``k`` log-probabilities (sorted, largest first) of ``softmax(logits / temperature)``, their
    ids and the exact log tail mass.

    ``logits`` [..., V]; computed in float32 (float64 stays float64). The tail is a log-sum-exp over
    the entries outside the top k (not ``log(1 - sum)``, which cancels catastrophically).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(dtype)
    logp = F.log_softmax(z / temperature if temperature != 1.0 else z, dim=-1)
    k = min(int(k), logp.shape[-1])
    values, ids = logp.topk(k, dim=-1)
    tail = logp.scatter(-1, ids, FLOOR).logsumexp(-1).clamp_min(FLOOR)
    return TopK(logprobs=values, ids=ids, log_tail=tail, temperature=float(temperature))


def _anchored_ids(ids: Tensor) -> tuple[Tensor, Tensor]:
    """(valid mask, ids safe for gather/scatter): empty slots point at the row's first valid id.

    Several slots then share an id: a scatter through these ids must write the same value at every
    slot of an id (a scatter with duplicate indices keeps an unspecified one of them).
    """
    valid = ids >= 0
    safe = ids.clamp_min(0)
    first = valid.to(torch.uint8).argmax(-1, keepdim=True)  # first valid slot (0 for all-empty rows)
    return valid, torch.where(valid, safe, safe.gather(-1, first))


class _StudentCoarse(torch.autograd.Function):
    """``(log q_i for the k slots, log q_tail)`` [n, k+1] from logit rows ``z`` [n, V]; see
    :func:`student_coarse_log_probs`. ``ids`` are anchored (:func:`_anchored_ids`), ``valid`` their mask."""

    @staticmethod
    def forward(ctx, z: Tensor, ids: Tensor, valid: Tensor) -> Tensor:
        any_valid = valid.any(-1, keepdim=True)  # [n, 1]; a row without entries is all tail
        z_k = z.gather(-1, ids)  # [n, k]
        z_kv = torch.where(valid, z_k, -math.inf)
        # the k entries masked to "no mass" (FLOOR nats below the largest of them, so below the
        # normaliser too); rows without entries write their anchor's own logit back (no change)
        fill = torch.where(any_valid, z_kv.amax(-1, keepdim=True) + FLOOR, z_k)
        lse_tail = z.scatter(-1, ids, fill).logsumexp(-1, keepdim=True)  # [n, 1]: exact, over the tail
        lse = torch.logaddexp(lse_tail, z_kv.logsumexp(-1, keepdim=True))  # normaliser: tail + entries
        log_tail = lse_tail - lse
        active = any_valid & (log_tail >= FLOOR)  # where the clamp below passes the gradient
        ctx.save_for_backward(z, ids, valid, lse, lse_tail, active)
        top = torch.where(valid, z_k - lse, FLOOR)
        return torch.cat([top, torch.where(any_valid, log_tail.clamp_min(FLOOR), 0.0)], dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        # d/dz_j of sum_i g_i log q_i + g_t log q_tail, with G = sum_i g_i + g_t:
        #   j in K:    g_j - G q_j
        #   j in tail: g_t q_j / q_tail - G q_j = exp(z_j - lse_tail) * (g_t - G q_tail)
        # (the second form never overflows: z_j <= lse_tail in the tail and q_tail <= 1)
        z, ids, valid, lse, lse_tail, active = ctx.saved_tensors
        k = ids.shape[-1]
        g_top = torch.where(valid, grad[:, :k], 0.0)
        g_tail = torch.where(active, grad[:, k:], 0.0)
        total = g_top.sum(-1, keepdim=True) + g_tail
        out = torch.sub(z, lse_tail).exp_().mul_(g_tail - total * torch.exp(lse_tail - lse))
        in_top = g_top - total * torch.exp(z.gather(-1, ids) - lse)
        first = valid.to(torch.uint8).argmax(-1, keepdim=True)  # empty slots write their anchor's value
        in_top = torch.where(valid, in_top, in_top.gather(-1, first))
        return out.scatter_(-1, ids, in_top), None, None


def student_coarse_log_probs(s_rows: Tensor, topk_ids: Tensor) -> Tensor:
    """The student's log-probabilities over the k+1 coarsened outcomes [n, k+1], from logit rows [n, V].

    ``topk_ids`` [n, k] (``-1`` = empty slot, ``FLOOR`` there). The last column is the exact log of
    the student's mass outside the row's entries (``FLOOR`` at least; 0 for a row without entries).
    Differentiable w.r.t. ``s_rows`` (first order).
    """
    valid, ids = _anchored_ids(topk_ids.long())
    return _StudentCoarse.apply(s_rows, ids, valid)


def coarse_log_probs(s_rows: Tensor, topk: TopK, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities over the k+1 coarsened outcomes, each [n, k+1].

    ``s_rows`` [n, V] raw student logits, tempered here by ``temperature``; ``topk`` rows [n, k] / [n],
    captured at that same temperature (else ``ValueError``). The last column is the tail bucket. The
    teacher side is renormalised (``log_softmax``), so values rounded by a float16 store still form a
    distribution.
    """
    dtype = torch.promote_types(s_rows.dtype, torch.float32)
    t = float(temperature)
    if not math.isclose(t, float(topk.temperature), rel_tol=1e-6):
        raise ValueError(
            f"the teacher's top-k distribution was captured at temperature {topk.temperature:g}, the loss runs at "
            f"{t:g}: a top-k store is exact only at its own temperature (its tail's shape is not stored). Build the "
            "store at the loss's temperature (cache=build with that loss; it is part of the key), keep the "
            "temperature fixed (no temperature schedule with a top-k store), or use cache.outputs=logits"
        )
    valid = topk.ids >= 0
    s = s_rows.to(dtype)
    s_coarse = student_coarse_log_probs(s / t if t != 1.0 else s, topk.ids)  # [n, k+1], tail exact

    t_top = torch.where(valid, topk.logprobs.to(dtype), FLOOR)  # already tempered at t (checked above)
    log_tail = topk.log_tail.to(dtype).clamp_min(FLOOR)
    t_coarse = F.log_softmax(torch.cat([t_top, log_tail.unsqueeze(-1)], dim=-1), dim=-1)
    return s_coarse, t_coarse


def sparse_rows(student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Tensor]) -> tuple[Tensor, TopK, Tensor]:
    """Student logit rows [N, V], teacher top-k rows [N, k] and the real-row mask [N], flattened alike."""
    s_rows, mask = rows_and_mask(student.logits, batch)
    topk = teacher.topk
    k = topk.ids.shape[-1]
    rows = TopK(topk.logprobs.reshape(-1, k), topk.ids.reshape(-1, k), topk.log_tail.reshape(-1), topk.temperature)
    if rows.ids.numel() and int(rows.ids.max()) >= s_rows.shape[-1]:
        raise ValueError(
            f"the cached teacher's top-k ids reach {int(rows.ids.max())}, but the student's logits have "
            f"{s_rows.shape[-1]} entries: the store was built for a larger vocabulary than the student's"
        )
    if rows.ids.shape[0] != s_rows.shape[0]:
        raise ValueError(
            f"cached teacher rows ({tuple(topk.ids.shape[:-1])}) do not line up with the student's logits "
            f"({tuple(student.logits.shape[:-1])}); the cache and the batch disagree on the token positions"
        )
    return s_rows, rows, mask


def _select(rows: TopK, mask: Tensor) -> TopK:
    return TopK(rows.logprobs[mask], rows.ids[mask], rows.log_tail[mask], rows.temperature)


def sparse_soft_kl(loss, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Tensor]) -> Tensor:
    """:class:`~litdistill.losses.SoftTargetKL` (KL * T^2, mean over real rows) on the coarsened distributions."""
    t = loss.temperature
    s_rows, rows, mask = sparse_rows(student, teacher, batch)
    s_logp, t_logp = coarse_log_probs(s_rows, rows, t)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return token_mean(kl, mask, batch) * t * t


def sparse_divergence(loss, student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Tensor]) -> Tensor:
    """A :class:`~litdistill.losses.TokenDivergence` on the coarsened distributions, reduced like the dense one."""
    s_rows, rows, mask = sparse_rows(student, teacher, batch)
    if not bool(mask.all()):
        s_rows, rows = s_rows[mask], _select(rows, mask)
    s_logp, t_logp = coarse_log_probs(s_rows, rows, loss.temperature)
    values = loss.divergence(s_logp, t_logp)
    if loss.scale_by_t2 and loss.temperature != 1.0:
        values = values * loss.factor
    total = values.sum()
    return total * token_scale(mask.sum(), batch).to(total.dtype)


def tail_gap_bound(topk: TopK, s_rows: Tensor) -> Tensor:
    """Per-row upper bound of KL(p||q) - KL(P||Q): ``p_tail * log(q_tail / min_tail q_j)`` (diagnostics)."""
    valid, ids = _anchored_ids(topk.ids.long())
    s_logp = F.log_softmax(s_rows.float(), dim=-1)
    # every slot writes True (empty slots point at a valid id of their row); rows without entries: none
    in_top = torch.zeros(s_logp.shape, dtype=torch.bool, device=s_logp.device).scatter_(-1, ids, True)
    in_top &= valid.any(-1, keepdim=True)
    q_tail = s_logp.masked_fill(in_top, FLOOR).logsumexp(-1)
    q_min = s_logp.masked_fill(in_top, math.inf).amin(-1)
    return topk.log_tail.float().exp() * (q_tail - q_min)
