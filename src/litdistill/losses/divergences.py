"""Token-level divergences for LLM distillation: forward/reverse KL, generalized JSD, skew KL, TVD.

Every loss here compares the teacher's and the student's next-token distributions at each real
token (``batch["token_mask"]``; classification logits [B, C] count every row) and reduces by

    loss = sum over real tokens of d(token) / (number of real tokens)            (default)

not by a per-sequence mean, so long and short sequences weigh by their token counts.
With gradient accumulation the module may pass the token count of the whole optimizer step, see
:func:`litdistill.losses.base.token_scale` for the exact formula. Distributions are softened by ``temperature`` and
computed in float32 (float64 stays float64) with ``log_softmax``; logs of mixtures are taken with
``logaddexp`` on log-probabilities, never ``log`` of summed probabilities.

Notation: ``p_T = softmax(teacher / T)``, ``p_S = softmax(student / T)``, KL(p || q) = sum p log(p/q).
Teacher logits are taken as given (the module computes them under ``no_grad``); they may carry
gradients in the plain losses but the chunked/fused versions treat them as constants.
"""

from __future__ import annotations

import functools
import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from litdistill.core.outputs import ModelOutputs
from litdistill.losses.base import (
    DistillationLoss,
    Temperature,
    check_widths,
    kl_rows,
    rows_and_mask,
    teacher_logits,
    token_scale,
)
from litdistill.losses.sparse import sparse_divergence

__all__ = [
    "ForwardKL",
    "GeneralizedJSD",
    "ReverseKL",
    "SkewKL",
    "SkewReverseKL",
    "TokenDivergence",
    "TotalVariation",
]


# ---- helpers -------------------------------------------------------------------------------------
def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64 (so gradcheck works)."""
    return torch.promote_types(x.dtype, torch.float32)


def _log_mixture(logp: Tensor, logq: Tensor, w: float) -> Tensor:
    """log(w p + (1 - w) q) from log-probabilities, for 0 < w < 1, without leaving log space."""
    return torch.logaddexp(logp + math.log(w), logq + math.log1p(-w))


# ---- in-place building blocks of the closed-form gradients (chunked / fused losses) ---------------
@functools.lru_cache(maxsize=64)
def _dot_block(vocab: int) -> int | None:
    """A divisor of ``vocab`` near 128 (between 64 and 1024), or None when it has none."""
    divisors = [d for d in range(64, 1025) if vocab % d == 0]
    return min(divisors, key=lambda d: abs(d - 128)) if divisors else None


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(-1)`` for [n, V] rows, accurate at large V, with no [n, V] temporary.

    One dot product per row (a single ``bmm``) sums V products in one float32 accumulator: at
    V = 32,000 it is ~200x less accurate than a summed elementwise product (measured 6e-5 vs 3e-7
    relative). So each row is cut into blocks of ~128 entries (a divisor of V, as a view), one
    ``bmm`` gives the [n, V/128] block sums, and those are summed: the same speed, the elementwise
    product's accuracy. A vocabulary without such a divisor (30,522, 50,257) takes the elementwise
    product 64 rows at a time (a [64, V] temporary).
    """
    n, vocab = a.shape
    block = _dot_block(vocab)
    if block is None:
        out = torch.cat([(x * y).sum(-1) for x, y in zip(a.split(64), b.split(64))])
    else:
        parts = torch.bmm(a.reshape(-1, 1, block), b.reshape(-1, block, 1))  # [n * V/block, 1, 1]
        out = parts.view(n, vocab // block).sum(-1)
    holes = torch.isnan(out)
    if bool(holes.any()):  # 0 * inf (a probability of 0 times a log-ratio of -inf): 0, as p log p -> 0
        a_h, b_h = a[holes], b[holes]
        out[holes] = torch.where(a_h == 0, torch.zeros((), dtype=out.dtype, device=out.device), a_h * b_h).sum(-1)
    return out


def _log_mixture_(logp: Tensor, logq: Tensor, w: float, out: Tensor, tmp: Tensor) -> Tensor:
    """:func:`_log_mixture` into ``out``, using ``tmp`` (which may be ``logq`` itself, then overwritten)."""
    torch.add(logp, math.log(w), out=out)
    torch.add(logq, math.log1p(-w), out=tmp)
    return torch.logaddexp(out, tmp, out=out)


class _Scratch:
    """Extra [n, V] buffers like ``like``, allocated on first use: ``scratch(i)``."""

    def __init__(self, like: Tensor) -> None:
        self.like, self.buffers = like, []

    def __call__(self, i: int) -> Tensor:
        while len(self.buffers) <= i:
            self.buffers.append(torch.empty_like(self.like))
        return self.buffers[i]


def _check_unit(owner: str, name: str, value: float, *, upper_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{owner}: {name} must be a number, got {value!r}")
    value = float(value)
    ok = math.isfinite(value) and value >= 0.0 and (value < 1.0 if upper_open else value <= 1.0)
    if not ok:
        valid = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{owner}: {name} must be in {valid}, got {value}")
    return value


# ---- the losses ----------------------------------------------------------------------------------
class TokenDivergence(DistillationLoss):
    """Base of the token-level divergences (not registered itself).

    Subclasses implement :meth:`divergence` on log-probabilities. :meth:`per_token` maps raw logit
    rows to per-row values including the temperature and the optional T^2 factor; the chunked and
    fused losses call it chunk by chunk, so every divergence here works with them unchanged.

    ``scale_by_t2`` multiplies by T^2 (Hinton et al., 2015): the gradient of a divergence of
    temperature-softened distributions shrinks like 1/T^2, and the factor keeps its scale
    comparable to the hard-label loss when T changes. With the default ``temperature=1`` it is 1.
    """

    temperature = Temperature()  # checked on every assignment (schedules and sweeps set it after construction)

    def __init__(self, temperature: float = 1.0, weight: float = 1.0, scale_by_t2: bool = True) -> None:
        super().__init__(weight)
        self.temperature = temperature
        if not isinstance(scale_by_t2, bool):
            raise ValueError(f"{type(self).__name__}: scale_by_t2 must be True or False, got {scale_by_t2!r}")
        self.scale_by_t2 = scale_by_t2

    @property
    def factor(self) -> float:
        """The constant the divergence is multiplied by: T^2 or 1."""
        return self.temperature**2 if self.scale_by_t2 else 1.0

    def divergence(self, s_logp: Tensor, t_logp: Tensor) -> Tensor:
        """Per-row divergence [n] from student and teacher log-probabilities [n, V]."""
        raise NotImplementedError

    def per_token(self, s_rows: Tensor, t_rows: Tensor) -> Tensor:
        """Per-row loss [n] (divergence times ``factor``) from raw logit rows [n, V]."""
        check_widths(self.name, s_rows, t_rows)
        values = self.divergence(*self._log_probs(s_rows, t_rows))
        return values * self.factor if self.factor != 1.0 else values

    def value_and_grad(self, s_rows: Tensor, t_rows: Tensor) -> tuple[Tensor, Tensor] | None:
        """Optional closed form used by the chunked/fused losses: ``(per_token(s, t) [n], the
        gradient of its sum w.r.t. s_rows [n, V])``, both in ``compute_dtype``. ``None`` makes them
        differentiate :meth:`per_token` with autograd instead. The shipped divergences have one
        (:meth:`_closed_form`); a subclass that redefines :meth:`divergence` falls back to ``None``."""
        if not self._has_closed_form():
            return None
        s_logp, t_logp = self._log_probs(s_rows, t_rows)  # fresh buffers: the inputs stay untouched
        return self._closed_form(s_logp, t_logp, _Scratch(s_logp))

    def value_and_grad_(self, s_rows: Tensor, t_rows: Tensor, buffers) -> tuple[Tensor, Tensor] | None:
        """:meth:`value_and_grad` in work buffers that the caller (the chunked/fused passes) owns.

        ``buffers(i)`` returns the i-th buffer: contiguous, ``compute_dtype``, ``s_rows``'s shape
        [n, V]. The log-probabilities are written to ``buffers(0)`` and ``buffers(1)``; ``(2)`` and
        ``(3)`` are scratch (at most four in all, three for forward/reverse KL). ``s_rows`` and
        ``t_rows`` are read only, unless they are ``buffers(0)``/``buffers(1)`` themselves (e.g.
        logits a matmul wrote there), which is allowed. The gradient may live in any buffer. A
        subclass with its own :meth:`value_and_grad` gets that one called instead.
        """
        if not self._closed_form_in_buffers():
            return self.value_and_grad(s_rows, t_rows)
        s_logp, t_logp = self._log_probs_into(s_rows, buffers(0)), self._log_probs_into(t_rows, buffers(1))
        return self._closed_form(s_logp, t_logp, lambda i: buffers(2 + i))

    def _closed_form(self, s_logp: Tensor, t_logp: Tensor, scratch) -> tuple[Tensor, Tensor]:
        """``(per-row values, gradient)`` from log-probability buffers it may overwrite."""
        raise NotImplementedError

    def _work_buffers(self) -> int:
        """How many ``buffers(i)`` :meth:`value_and_grad_` uses (2 when it has no closed form: the
        chunked/fused passes still put the logits there)."""
        return 3 if self._closed_form_in_buffers() else 2

    def _closed_form_in_buffers(self) -> bool:
        """Whether :meth:`value_and_grad_` runs the shipped closed form in the caller's buffers: not when a
        subclass brings its own :meth:`value_and_grad`, nor when it has no closed form."""
        return type(self).value_and_grad is TokenDivergence.value_and_grad and self._has_closed_form()

    def _has_closed_form(self) -> bool:
        """Whether :meth:`_closed_form` is the derivative of this instance's :meth:`per_token`: the
        class defining it also defines the :meth:`divergence` in use, and neither ``per_token`` nor
        ``_log_probs`` is redefined."""
        cls = type(self)
        owner = next((c for c in cls.__mro__ if "_closed_form" in c.__dict__), TokenDivergence)
        return (
            owner is not TokenDivergence
            and cls.divergence is owner.__dict__.get("divergence")
            and cls.per_token is TokenDivergence.per_token
            and cls._log_probs is TokenDivergence._log_probs
        )

    def _log_probs_into(self, rows: Tensor, out: Tensor) -> Tensor:
        """``log_softmax(rows / T)`` in ``compute_dtype`` (as :meth:`_log_probs`), written to ``out``
        (which may be ``rows`` itself)."""
        if rows.dtype != out.dtype:
            rows = out.copy_(rows)
        if self.temperature != 1.0:
            rows = torch.div(rows, self.temperature, out=out)
        return torch.log_softmax(rows, -1, out=out)  # row-wise kernels: in place when rows is out

    def _scaled(self, values: Tensor, grad: Tensor, grad_scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """Apply ``factor`` to the values and ``grad_scale * factor / T`` to the gradient (in place).

        A gradient entry ``0 * inf`` (a zero student probability at a ``-inf`` logit) is 0, its true
        value; rows whose value is not finite keep their NaN, and the module stops on them.
        """
        if bool(torch.isnan(grad.sum())) and bool(torch.isfinite(values).all()):
            grad.nan_to_num_(nan=0.0)
        scale = grad_scale * self.factor / self.temperature
        if scale != 1.0:
            grad.mul_(scale)
        return values * self.factor, grad

    def _log_probs(self, s_rows: Tensor, t_rows: Tensor) -> tuple[Tensor, Tensor]:
        """Student and teacher log-probabilities at the temperature, in ``compute_dtype``."""
        dtype = compute_dtype(s_rows)
        s_rows, t_rows = s_rows.to(dtype), t_rows.to(dtype)
        if self.temperature != 1.0:  # no N x V copy for T = 1
            s_rows, t_rows = s_rows / self.temperature, t_rows / self.temperature
        return F.log_softmax(s_rows, dim=-1), F.log_softmax(t_rows, dim=-1)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]) -> Tensor:
        if teacher.logits is None and teacher.topk is not None:  # a top-k teacher cache: the k+1-bucket divergence
            return sparse_divergence(self, student, teacher, batch)
        s_rows, mask = rows_and_mask(student.logits, batch)  # [N, V], [N]
        t_rows, _ = rows_and_mask(teacher_logits(teacher, self.temperature), batch)  # [N, V]
        if not bool(mask.all()):  # compute only the real rows (one host sync; skips the copy when all are real)
            s_rows, t_rows = s_rows[mask], t_rows[mask]
        values = self.per_token(s_rows, t_rows)
        total = values.sum()
        return total * token_scale(mask.sum(), batch).to(total.dtype)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, weight={self.weight}, scale_by_t2={self.scale_by_t2}"


class ForwardKL(TokenDivergence):
    """KL(p_T || p_S) per token: mode covering; the standard word-level KD objective."""

    name = "forward_kl"

    def divergence(self, s_logp: Tensor, t_logp: Tensor) -> Tensor:
        return kl_rows(t_logp, s_logp)

    def _closed_form(self, s_logp: Tensor, t_logp: Tensor, scratch) -> tuple[Tensor, Tensor]:
        return _forward_kl_closed(self, s_logp, t_logp, scratch)


class ReverseKL(TokenDivergence):
    """KL(p_S || p_T) per token: mode seeking (MiniLLM, Gu et al., 2024).

    This is the exact token-level reverse KL over the vocabulary (as in GKD / DistiLLM), not
    MiniLLM's sequence-level policy-gradient estimator.
    """

    name = "reverse_kl"

    def divergence(self, s_logp: Tensor, t_logp: Tensor) -> Tensor:
        return kl_rows(s_logp, t_logp)

    def _closed_form(self, s_logp: Tensor, t_logp: Tensor, scratch) -> tuple[Tensor, Tensor]:
        return _reverse_kl_closed(self, s_logp, t_logp, scratch)


class GeneralizedJSD(TokenDivergence):
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024, Eq. 1).

    With ``M = beta p_T + (1 - beta) p_S``::

        JSD_beta = beta KL(p_T || M) + (1 - beta) KL(p_S || M)       for 0 < beta < 1
        JSD_0    = KL(p_T || p_S)   (forward KL, exactly)
        JSD_1    = KL(p_S || p_T)   (reverse KL, exactly)

    Near the ends the mixture form is ~ beta KL(p_T||p_S) resp. (1-beta) KL(p_S||p_T): it behaves
    like forward KL for small beta and reverse KL for beta near 1 but tends to 0, so the ends are
    special-cased (the value jumps at beta = 0 and 1). This is exactly TRL's
    ``GKDTrainer.generalized_jsd_loss`` convention: our ``beta`` IS TRL's ``beta`` (TRL mixes
    ``log(1-beta) + student_logp`` with ``log(beta) + teacher_logp`` and special-cases 0 and 1 the
    same way). ``beta=0.5`` is the symmetric JSD.
    """

    name = "jsd"

    def __init__(
        self, beta: float = 0.5, temperature: float = 1.0, weight: float = 1.0, scale_by_t2: bool = True
    ) -> None:
        super().__init__(temperature=temperature, weight=weight, scale_by_t2=scale_by_t2)
        self.beta = _check_unit(type(self).__name__, "beta", beta)

    def divergence(self, s_logp: Tensor, t_logp: Tensor) -> Tensor:
        beta = self.beta
        if beta == 0.0:
            return kl_rows(t_logp, s_logp)
        if beta == 1.0:
            return kl_rows(s_logp, t_logp)
        log_m = _log_mixture(t_logp, s_logp, beta)
        return beta * kl_rows(t_logp, log_m) + (1.0 - beta) * kl_rows(s_logp, log_m)

    def _work_buffers(self) -> int:
        count = super()._work_buffers()
        return count + 1 if count == 3 and 0.0 < self.beta < 1.0 else count

    def _closed_form(self, s_logp: Tensor, t_logp: Tensor, scratch) -> tuple[Tensor, Tensor]:
        # d/dz_S JSD = (1 - beta) p_S * (log p_S - log M - KL(p_S || M)) / T
        beta = self.beta
        if beta == 0.0:
            return _forward_kl_closed(self, s_logp, t_logp, scratch)
        if beta == 1.0:
            return _reverse_kl_closed(self, s_logp, t_logp, scratch)
        log_m = _log_mixture_(t_logp, s_logp, beta, scratch(0), scratch(1))
        probs = torch.exp(t_logp, out=scratch(1))  # p_T
        kl_t = _rowdot(probs, t_logp.sub_(log_m))  # KL(p_T || M)
        torch.exp(s_logp, out=probs)  # p_S
        diff = s_logp.sub_(log_m)  # log p_S - log M
        kl_s = _rowdot(probs, diff)  # KL(p_S || M)
        grad = diff.sub_(kl_s[:, None]).mul_(probs)
        return self._scaled(beta * kl_t + (1.0 - beta) * kl_s, grad, 1.0 - beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, " + super().extra_repr()


class SkewKL(TokenDivergence):
    """Skew KL of DistiLLM (Ko et al., 2024): KL(p_T || alpha p_T + (1 - alpha) p_S).

    ``alpha=0`` is forward KL exactly; larger alpha bounds the loss (by -log alpha) and smooths
    its gradient. Valid: 0 <= alpha < 1 (alpha = 1 would be identically zero). DistiLLM uses 0.1.
    """

    name = "skew_kl"

    def __init__(
        self, alpha: float = 0.1, temperature: float = 1.0, weight: float = 1.0, scale_by_t2: bool = True
    ) -> None:
        super().__init__(temperature=temperature, weight=weight, scale_by_t2=scale_by_t2)
        self.alpha = _check_unit(type(self).__name__, "alpha", alpha, upper_open=True)

    def divergence(self, s_logp: Tensor, t_logp: Tensor) -> Tensor:
        if self.alpha == 0.0:
            return kl_rows(t_logp, s_logp)
        return kl_rows(t_logp, _log_mixture(t_logp, s_logp, self.alpha))

    def _work_buffers(self) -> int:
        count = super()._work_buffers()
        return count + 1 if count == 3 and self.alpha > 0.0 else count

    def _closed_form(self, s_logp: Tensor, t_logp: Tensor, scratch) -> tuple[Tensor, Tensor]:
        # with M = a p_T + (1 - a) p_S and u = p_T / M: d/dz_S = (1 - a) p_S * (sum(p_S u) - u) / T
        if self.alpha == 0.0:
            return _forward_kl_closed(self, s_logp, t_logp, scratch)
        log_m = _log_mixture_(t_logp, s_logp, self.alpha, scratch(0), scratch(1))
        probs = torch.exp(t_logp, out=scratch(1))  # p_T
        ratio = t_logp.sub_(log_m)  # log p_T - log M
        values = _rowdot(probs, ratio)
        ratio.exp_()  # u
        p_s = torch.exp(s_logp, out=probs)
        mean = _rowdot(p_s, ratio)  # sum p_S u
        grad = ratio.neg_().add_(mean[:, None]).mul_(p_s)
        return self._scaled(values, grad, 1.0 - self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, " + super().extra_repr()


class SkewReverseKL(TokenDivergence):
    """Skew reverse KL of DistiLLM: KL(p_S || alpha p_S + (1 - alpha) p_T).

    ``alpha=0`` is reverse KL exactly. Valid: 0 <= alpha < 1.
    """

    name = "skew_reverse_kl"

    def __init__(
        self, alpha: float = 0.1, temperature: float = 1.0, weight: float = 1.0, scale_by_t2: bool = True
    ) -> None:
        super().__init__(temperature=temperature, weight=weight, scale_by_t2=scale_by_t2)
        self.alpha = _check_unit(type(self).__name__, "alpha", alpha, upper_open=True)

    def divergence(self, s_logp: Tensor, t_logp: Tensor) -> Tensor:
        if self.alpha == 0.0:
            return kl_rows(s_logp, t_logp)
        return kl_rows(s_logp, _log_mixture(s_logp, t_logp, self.alpha))

    def _closed_form(self, s_logp: Tensor, t_logp: Tensor, scratch) -> tuple[Tensor, Tensor]:
        # with M = a p_S + (1 - a) p_T, d = log p_S - log M, u = p_S / M = exp(d):
        # d/dz_S = p_S * (d - a u - sum(p_S (d - a u))) / T
        alpha = self.alpha
        if alpha == 0.0:
            return _reverse_kl_closed(self, s_logp, t_logp, scratch)
        log_m = _log_mixture_(s_logp, t_logp, alpha, scratch(0), t_logp)  # t_logp is not needed after this
        p_s = torch.exp(s_logp, out=t_logp)
        d = s_logp.sub_(log_m)
        values = _rowdot(p_s, d)
        u = torch.exp(d, out=log_m)
        g = d.sub_(u, alpha=alpha)
        grad = g.sub_(_rowdot(p_s, g)[:, None]).mul_(p_s)
        return self._scaled(values, grad)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, " + super().extra_repr()


class TotalVariation(TokenDivergence):
    """Total variation distance 0.5 * sum |p_T - p_S| per token, in [0, 1].

    Not scaled by T^2 by default (``scale_by_t2=False``): it is a bounded distance, not a KL.
    At ties (p_T == p_S for a token) the subgradient 0 is used.
    """

    name = "tvd"

    def __init__(self, temperature: float = 1.0, weight: float = 1.0, scale_by_t2: bool = False) -> None:
        super().__init__(temperature=temperature, weight=weight, scale_by_t2=scale_by_t2)

    def divergence(self, s_logp: Tensor, t_logp: Tensor) -> Tensor:
        return 0.5 * (t_logp.exp() - s_logp.exp()).abs().sum(-1)

    def _closed_form(self, s_logp: Tensor, t_logp: Tensor, scratch) -> tuple[Tensor, Tensor]:
        # d/dz_S = 0.5 p_S * (sum(p_S sign(p_T - p_S)) - sign(p_T - p_S)) / T   (sign(0) = 0)
        p_s = s_logp.exp_()
        diff = t_logp.exp_().sub_(p_s)  # p_T - p_S
        sign = torch.abs(diff, out=scratch(0))
        values = 0.5 * sign.sum(-1)
        torch.sign(diff, out=sign)
        mean = _rowdot(p_s, sign)  # sum p_S sign(p_T - p_S)
        grad = sign.neg_().add_(mean[:, None]).mul_(p_s)
        return self._scaled(values, grad, 0.5)


def _forward_kl_closed(div: TokenDivergence, s_logp: Tensor, t_logp: Tensor, scratch) -> tuple[Tensor, Tensor]:
    """KL(p_T || p_S) per row and d/dz_S = (p_S - p_T) / T, in three [n, V] buffers."""
    p_t = torch.exp(t_logp, out=scratch(0))
    values = _rowdot(p_t, t_logp.sub_(s_logp))  # sum p_T (log p_T - log p_S)
    grad = s_logp.exp_().sub_(p_t)  # in s_logp's memory
    return div._scaled(values, grad)


def _reverse_kl_closed(div: TokenDivergence, s_logp: Tensor, t_logp: Tensor, scratch) -> tuple[Tensor, Tensor]:
    """KL(p_S || p_T) per row and d/dz_S = p_S * (log p_S - log p_T - KL) / T, in three buffers."""
    p_s = torch.exp(s_logp, out=scratch(0))
    diff = s_logp.sub_(t_logp)  # log p_S - log p_T, in s_logp's memory
    values = _rowdot(p_s, diff)
    grad = diff.sub_(values[:, None]).mul_(p_s)
    return div._scaled(values, grad)
