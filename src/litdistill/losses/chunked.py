"""Memory-efficient token divergences: chunked over tokens, and fused with the LM head.

For a causal LM the loss step on ``N`` tokens over a vocabulary ``V`` normally materialises
several ``N x V`` float32 tensors (upcast logits, log-softmaxes, probabilities, their gradients);
at V = 128k and N = 2k each is 1 GB. Two variants keep only ``chunk_size x V`` of them at once:

* :class:`ChunkedDivergence` (``"chunked"``) takes the logits as usual and runs any
  :class:`~litdistill.losses.divergences.TokenDivergence` over chunks of ``chunk_size`` real
  rows. Each chunk's value and gradient are computed together in the forward pass (a local
  ``torch.autograd.grad`` on a float32 copy of the chunk); only the gradient w.r.t. the input
  logits is kept, in the logits' own dtype, and handed out by ``backward``. Added peak: one
  logits-sized gradient (which autograd would allocate anyway) plus the chunk temporaries.
* :class:`FusedLinearKD` (``"fused_kd"``) takes the student's last hidden states [N, H] and the
  LM-head weight [V, H] (+ bias): per chunk it computes ``logits = h @ W.T + b``, the divergence,
  and the gradients w.r.t. ``h``, ``W`` and ``b`` (``W``/``b`` accumulated over chunks in
  float32), so the student's full logits and their gradient never exist.

Both compute the gradient eagerly in forward (one pass over the vocabulary, no recomputation),
only when a gradient is needed (``torch.is_grad_enabled()`` and an input requires grad). Every
shipped divergence has a closed-form gradient that works in place in a few ``chunk_size x V``
buffers (three for forward/reverse KL, TVD and skew reverse KL, four for JSD and skew KL, one more
with ``ce_weight``), allocated once per call as one block and reused by every chunk; the fused loss
writes the head's logits straight into them.
``backward`` scales the stored gradients in place by the incoming gradient and releases them; a
second backward through the same graph (``retain_graph=True``) recomputes them chunk by chunk
from the saved inputs. Double backward is not supported. Teacher inputs are constants (no
gradient flows to them). Both can add a hard-label cross entropy at T=1 in the same chunk pass
(``ce_weight``), so no separate full-vocabulary :class:`~litdistill.losses.HardCE` is needed.

Reduction is the same as the plain losses: sum over real tokens, times
:func:`~litdistill.losses.divergences.token_scale` (per-token mean, or the step-level
normalisation when ``batch["num_tokens_in_step"]`` is given).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from litdistill.core.outputs import ModelOutputs
from litdistill.losses.base import LOSSES, DistillationLoss, teacher_logits, token_scale
from litdistill.losses.divergences import TokenDivergence, compute_dtype

__all__ = [
    "ChunkedDivergence",
    "FusedLinearKD",
    "chunked_divergence_sum",
    "fused_linear_divergence_sum",
]

# Auto chunk: about 2^24 float32 values (64 MB) per chunk-sized temporary.
_AUTO_CHUNK_ELEMENTS = 1 << 24


def _resolve_chunk(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, _AUTO_CHUNK_ELEMENTS // max(vocab, 1))
    return int(chunk_size)


def _check_chunk_size(owner: str, chunk_size: int | None) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{owner}: chunk_size must be an integer >= 1 or None (auto), got {chunk_size!r}")
    return chunk_size


class _ChunkBuffers:
    """The [rows, V] work buffers of one pass, reused by every chunk (allocated once, not per chunk).

    ``get(i, n)`` is buffer ``i``'s first ``n`` rows (the last chunk may be shorter). The buffers in
    ``slots`` are allocated up front as one block, which the allocator serves and returns in one
    piece (on CPU a block this large is its own mapping, so it neither lingers in nor fragments
    the heap); any other index is allocated on first use.
    """

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device, slots=()) -> None:
        self.shape, self.dtype, self.device = (rows, vocab), dtype, device
        slots = sorted(set(slots))
        block = torch.empty((len(slots), rows, vocab), dtype=dtype, device=device) if slots else None
        self.buffers: dict[int, Tensor] = {i: block[k] for k, i in enumerate(slots)}

    def get(self, i: int, n: int) -> Tensor:
        if i not in self.buffers:
            self.buffers[i] = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return self.buffers[i][:n]


def _slots(divergence: TokenDivergence, ce_weight: float) -> list[int]:
    """The buffer indices one chunk uses: the divergence's work buffers, and the CE term's."""
    return list(range(max(divergence._work_buffers(), 2))) + ([_CE] if ce_weight else [])


_CE = 4  # the buffer of the hard-label CE term; 0-3 are the divergence's (see value_and_grad_)


def _value_and_grad(
    divergence, s_rows: Tensor, t_rows: Tensor, labels, ce_weight: float, bufs: _ChunkBuffers, want_grad: bool = True
):
    """(sum over the chunk, d sum / d chunk in ``bufs.dtype`` or None) for one chunk of student logits.

    ``s_rows``/``t_rows`` [n, V] are read only, except that they may be ``bufs.get(0, n)`` /
    ``bufs.get(1, n)`` themselves. Uses the divergence's closed form when it has one (in the
    buffers: three [n, V] blocks for forward/reverse KL, four for the others; also without a
    gradient, so that the value is the same with and without), else ``per_token`` (differentiated
    with autograd when ``want_grad``). The gradient may live in any of the buffers.
    """
    n = s_rows.shape[0]
    soft = None
    if ce_weight:  # CE at T = 1: value logsumexp(z) - z_y, gradient softmax(z) - onehot(y); -100 rows: 0
        soft = torch.log_softmax(
            bufs.get(_CE, n).copy_(s_rows) if s_rows.dtype != bufs.dtype else s_rows, -1, out=bufs.get(_CE, n)
        )
        valid = labels != -100
        target = torch.where(valid, labels, torch.zeros_like(labels))[:, None]
        ce_total = -(soft.gather(1, target).squeeze(1) * valid).sum()
        if want_grad:
            soft.exp_().mul_(valid[:, None])
            soft.scatter_add_(1, target, -valid[:, None].to(soft.dtype))
    grad = None
    closed = divergence.value_and_grad_(s_rows, t_rows, lambda i: bufs.get(i, n))
    if closed is not None:
        values, grad = closed
        total = values.sum()
    elif want_grad:
        with torch.enable_grad():
            s = s_rows.detach().to(bufs.dtype).requires_grad_(True)
            total = divergence.per_token(s, t_rows.detach()).sum()
            grad = torch.autograd.grad(total, s)[0]
    else:
        total = divergence.per_token(s_rows, t_rows).sum()
    if soft is not None:
        total = total + ce_weight * ce_total
        if want_grad:
            grad.add_(soft, alpha=ce_weight)
    return total.detach(), grad if want_grad else None


class _Rows:
    """Rows of a [..., D] tensor at the real positions (``coords``), fetched or written by chunk.

    Where the tensor's rows sit at a fixed stride in memory (contiguous tensors, and also shifted
    views such as ``logits[:, :-1]``), it is seen as a 2-D ``as_strided`` row view and each chunk
    is a zero-copy slice when its real rows are consecutive (``index_select`` otherwise); other
    layouts fall back to advanced indexing. Never copies the whole tensor.
    """

    def __init__(self, x: Tensor, coords: tuple[Tensor, ...]) -> None:
        self.x, self.coords = x, coords
        self.rows = None
        lead, dim = x.shape[:-1], x.shape[-1]
        if x.dim() >= 1 and (x.stride(-1) == 1 or dim == 1):
            strides = [st for sz, st in zip(lead, x.stride()[:-1]) if sz > 1]
            step = min(strides) if strides else max(dim, 1)
            if step >= dim and all(st % step == 0 for st in strides):
                mult = [st // step if sz > 1 else 0 for sz, st in zip(lead, x.stride()[:-1])]
                count = 1 + sum((sz - 1) * m for sz, m in zip(lead, mult))
                self.rows = x.as_strided((count, dim), (step, 1))
                idx = torch.zeros_like(coords[0]) if coords else torch.zeros(0, dtype=torch.long, device=x.device)
                for c, m in zip(coords, mult):
                    if m:
                        idx = idx + c * m
                self.idx = idx
                host = idx.cpu()
                self.start_host = host
                # breaks[k]: how many of the first k steps between consecutive rows are not +1
                self.breaks = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(host.diff() != 1, 0)])

    def _slice(self, start: int, end: int) -> int | None:
        """First row of the chunk if its rows are consecutive in memory, else None."""
        if self.breaks[end - 1] - self.breaks[start] == 0:
            return int(self.start_host[start])
        return None

    def view(self, start: int, end: int) -> Tensor | None:
        """The chunk's rows as a writable view when they are consecutive in memory, else None."""
        if self.rows is None:
            return None
        first = self._slice(start, end)
        return None if first is None else self.rows[first : first + end - start]

    def get(self, start: int, end: int) -> Tensor:
        if self.rows is None:
            return self.x[tuple(c[start:end] for c in self.coords)]
        first = self._slice(start, end)
        if first is not None:
            return self.rows[first : first + end - start]
        return self.rows.index_select(0, self.idx[start:end])

    def put(self, start: int, end: int, values: Tensor) -> None:
        """Write ``values`` [n, D] into the chunk's rows (the tensor must not be a broadcast view)."""
        if self.rows is None:
            self.x[tuple(c[start:end] for c in self.coords)] = values
            return
        first = self._slice(start, end)
        if first is not None:
            self.rows[first : first + end - start].copy_(values)
        else:
            self.rows.index_copy_(0, self.idx[start:end], values.to(self.rows.dtype))


# ---- (a) chunked over tokens, given logits --------------------------------------------------------
class _ChunkedLogitsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, mask, labels, divergence, ce_weight, chunk_size, grad_enabled):
        ctx.divergence, ctx.ce_weight, ctx.chunk_size = divergence, ce_weight, chunk_size
        want_grad = bool(ctx.needs_input_grad[0]) and grad_enabled  # needs_input_grad ignores no_grad
        total, grad = _chunked_logits_pass(student, teacher, mask, labels, divergence, ce_weight, chunk_size, want_grad)
        ctx.grad_student = grad
        ctx.save_for_backward(student, teacher, mask, labels)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grad, ctx.grad_student = ctx.grad_student, None
        if grad is None:  # second backward (retain_graph): recompute chunk by chunk
            student, teacher, mask, labels = ctx.saved_tensors
            _, grad = _chunked_logits_pass(
                student, teacher, mask, labels, ctx.divergence, ctx.ce_weight, ctx.chunk_size, True
            )
        grad.mul_(grad_out.to(grad.dtype))
        return grad, None, None, None, None, None, None, None


def _chunked_logits_pass(student, teacher, mask, labels, divergence, ce_weight, chunk_size, want_grad):
    coords = mask.nonzero(as_tuple=True)  # indices of the real rows over the leading dims
    n = coords[0].numel()
    dtype = compute_dtype(student)
    total = torch.zeros((), dtype=dtype, device=student.device)
    grad = None
    if want_grad:  # every real row gets written: only masked rows need zeros
        alloc = torch.empty if n == mask.numel() else torch.zeros
        grad = alloc(student.shape, dtype=student.dtype, device=student.device)
    s_rows, t_rows = _Rows(student, coords), _Rows(teacher, coords)
    g_rows = _Rows(grad, coords) if want_grad else None
    slots = _slots(divergence, ce_weight)
    if want_grad and grad.dtype == dtype and g_rows.rows is not None:
        slots.remove(0)  # buffer 0 is normally the gradient's own rows (see below)
    bufs = _ChunkBuffers(min(chunk_size, n), student.shape[-1], dtype, student.device, slots)
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        lab = labels[tuple(c[start:end] for c in coords)] if ce_weight else None
        if not want_grad:
            total += _value_and_grad(
                divergence, s_rows.get(start, end), t_rows.get(start, end), lab, ce_weight, bufs, False
            )[0]
            continue
        # the student's log-probabilities (and so the gradient, for most divergences) go straight
        # into the gradient tensor's rows when they are consecutive and of the compute dtype
        direct = g_rows.view(start, end) if grad.dtype == dtype else None
        if direct is not None:
            spare, bufs.buffers[0] = bufs.buffers.get(0), direct  # this chunk's buffer 0
        value, g = _value_and_grad(divergence, s_rows.get(start, end), t_rows.get(start, end), lab, ce_weight, bufs)
        total += value
        if direct is None or g.data_ptr() != direct.data_ptr() or g.shape != direct.shape:
            g_rows.put(start, end, g.to(grad.dtype))
        if direct is not None:
            bufs.buffers[0] = spare
            if spare is None:
                del bufs.buffers[0]
        del g
    return total, grad


def chunked_divergence_sum(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    divergence: TokenDivergence,
    chunk_size: int | None = None,
    labels: Tensor | None = None,
    ce_weight: float = 0.0,
) -> Tensor:
    """Sum over the rows in ``mask`` of ``divergence.per_token`` (+ ``ce_weight`` * CE), in chunks.

    ``student_logits``/``teacher_logits`` [..., V] (e.g. [B, T, V], any strides: shifted views
    are not copied), ``mask`` [...] bool over the leading dims, ``labels`` [...] when
    ``ce_weight > 0``. Differentiable w.r.t. ``student_logits``; equals the plain computation.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ "
            "in shape"
        )
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"mask {tuple(mask.shape)} does not match the logits' leading dims {tuple(student_logits.shape[:-1])}"
        )
    if ce_weight and labels is None:
        raise ValueError("ce_weight > 0 needs labels")
    chunk = _resolve_chunk(chunk_size, student_logits.shape[-1])
    labels = labels if ce_weight else torch.empty(0, dtype=torch.long, device=student_logits.device)
    return _ChunkedLogitsFn.apply(
        student_logits,
        teacher_logits,
        mask.bool(),
        labels,
        divergence,
        float(ce_weight),
        chunk,
        torch.is_grad_enabled(),
    )


# ---- (b) fused with the LM head, given hidden states ---------------------------------------------
def _matmul_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the head matmul runs in: the autocast dtype when autocast is on, else promoted."""
    device_type = tensors[0].device.type
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # older torch: no device argument
        pass
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _FusedLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        h,
        weight,
        bias,
        t_logits,
        t_h,
        t_weight,
        t_bias,
        mask,
        labels,
        divergence,
        ce_weight,
        chunk_size,
        grad_enabled,
    ):
        ctx.divergence, ctx.ce_weight, ctx.chunk_size = divergence, ce_weight, chunk_size
        ctx.want = tuple(bool(x) and grad_enabled for x in ctx.needs_input_grad[:3])
        total, grads = _fused_pass(
            h, weight, bias, t_logits, t_h, t_weight, t_bias, mask, labels, divergence, ce_weight, chunk_size, ctx.want
        )
        ctx.grads = grads
        ctx.save_for_backward(h, weight, bias, t_logits, t_h, t_weight, t_bias, mask, labels)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # second backward (retain_graph): recompute
            _, grads = _fused_pass(*ctx.saved_tensors, ctx.divergence, ctx.ce_weight, ctx.chunk_size, ctx.want)
        out = []
        for g in grads:
            if g is not None:
                g.mul_(grad_out.to(g.dtype))
            out.append(g)
        return (*out, None, None, None, None, None, None, None, None, None, None)


def _linear_into(x: Tensor, w: Tensor, b: Tensor | None, out: Tensor) -> Tensor:
    """``F.linear(x, w, b)`` (same kernels: addmm / mm), written to ``out`` when the dtypes agree."""
    if x.dtype != out.dtype:
        return F.linear(x, w, b)
    if b is None:
        return torch.mm(x, w.t(), out=out)
    return torch.addmm(b, x, w.t(), out=out)


def _fused_pass(
    h, weight, bias, t_logits, t_h, t_weight, t_bias, mask, labels, divergence, ce_weight, chunk_size, want
):
    want_h, want_w, want_b = want
    want_any = want_h or want_w or (want_b and bias is not None)
    device_type = h.device.type
    mm_dtype = _matmul_dtype(h, weight)
    acc_dtype = torch.promote_types(weight.dtype, torch.float32)  # grad W/b accumulate in float32 (or float64)
    with torch.autocast(device_type=device_type, enabled=False):
        w = weight.to(mm_dtype)  # no copy when the dtypes agree
        b = bias.to(mm_dtype) if bias is not None else None
        if t_logits is None:
            t_dtype = _matmul_dtype(t_h, t_weight)
            tw = t_weight.detach().to(t_dtype)
            tb = t_bias.detach().to(t_dtype) if t_bias is not None else None
        coords = mask.nonzero(as_tuple=True)
        n = coords[0].numel()
        total = torch.zeros((), dtype=torch.promote_types(mm_dtype, torch.float32), device=h.device)
        grad_h = torch.zeros(h.shape, dtype=h.dtype, device=h.device) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if want_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc_dtype, device=bias.device) if (want_b and bias is not None) else None
        h_rows = _Rows(h, coords)
        gh_rows = _Rows(grad_h, coords) if grad_h is not None else None
        t_rows = _Rows(t_logits if t_logits is not None else t_h, coords)
        bufs = _ChunkBuffers(min(chunk_size, n), weight.shape[0], total.dtype, h.device, _slots(divergence, ce_weight))
        for start in range(0, n, chunk_size):
            end, rows = min(start + chunk_size, n), min(chunk_size, n - start)
            hc = h_rows.get(start, end).to(mm_dtype)  # [c, H]
            s_logits = _linear_into(hc, w, b, bufs.get(0, rows))  # [c, V], in buffer 0 when the dtypes allow
            if t_logits is not None:
                t_chunk = t_rows.get(start, end)
            else:
                t_chunk = _linear_into(t_rows.get(start, end).detach().to(t_dtype), tw, tb, bufs.get(1, rows))
            lab = labels[tuple(c[start:end] for c in coords)] if ce_weight else None
            value, g = _value_and_grad(divergence, s_logits, t_chunk, lab, ce_weight, bufs, want_any)
            total += value
            del s_logits, t_chunk
            if not want_any:
                continue
            if gh_rows is not None:
                gh_rows.put(start, end, (g.to(mm_dtype) @ w).to(grad_h.dtype))  # [c, H]
            if grad_w is not None:
                grad_w.addmm_(g.t().to(acc_dtype), hc.to(acc_dtype))  # [V, H] += [V, c] @ [c, H]
            if grad_b is not None:
                grad_b += g.sum(0).to(acc_dtype)
            del g
        del bufs
    grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
    grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
    return total, (grad_h, grad_w, grad_b)


def fused_linear_divergence_sum(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    divergence: TokenDivergence,
    *,
    teacher_logits: Tensor | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    chunk_size: int | None = None,
    labels: Tensor | None = None,
    ce_weight: float = 0.0,
) -> Tensor:
    """Sum over real rows of the divergence between ``hidden @ weight.T + bias`` and the teacher.

    ``hidden`` [..., H] with leading dims equal to ``mask``'s; ``weight`` [V, H]; the teacher is
    either ``teacher_logits`` [..., V] or ``teacher_hidden`` [..., H_t] with ``teacher_weight``
    [V, H_t] (+ ``teacher_bias``), also evaluated chunk by chunk. Differentiable w.r.t.
    ``hidden``, ``weight`` and ``bias``; the student logits are never materialised in full.
    """
    if mask.shape != hidden.shape[:-1]:
        raise ValueError(
            f"mask {tuple(mask.shape)} does not match the hidden states' leading dims {tuple(hidden.shape[:-1])}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"head weight {tuple(weight.shape)} does not fit hidden size {hidden.shape[-1]} (expected [V, "
            f"{hidden.shape[-1]}])"
        )
    vocab = weight.shape[0]
    if teacher_logits is not None:
        if teacher_logits.shape[:-1] != mask.shape or teacher_logits.shape[-1] != vocab:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} do not match mask {tuple(mask.shape)} and vocab {vocab}"
            )
    else:
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError("give teacher_logits, or teacher_hidden with teacher_weight")
        if teacher_hidden.shape[:-1] != mask.shape or teacher_weight.shape != (vocab, teacher_hidden.shape[-1]):
            raise ValueError(
                f"teacher hidden {tuple(teacher_hidden.shape)} / head {tuple(teacher_weight.shape)} do not match mask "
                f"{tuple(mask.shape)} and vocab {vocab}"
            )
    if ce_weight and labels is None:
        raise ValueError("ce_weight > 0 needs labels")
    chunk = _resolve_chunk(chunk_size, vocab)
    labels = labels if ce_weight else torch.empty(0, dtype=torch.long, device=hidden.device)
    return _FusedLinearFn.apply(
        hidden,
        weight,
        bias,
        teacher_logits,
        teacher_hidden,
        teacher_weight,
        teacher_bias,
        mask.bool(),
        labels,
        divergence,
        float(ce_weight),
        chunk,
        torch.is_grad_enabled(),
    )


# ---- the losses ----------------------------------------------------------------------------------
def _build_divergence(owner: str, divergence: str | TokenDivergence, kwargs: dict[str, Any]) -> TokenDivergence:
    if isinstance(divergence, TokenDivergence):
        if kwargs:
            raise ValueError(
                f"{owner}: pass divergence parameters {sorted(kwargs)} to the divergence instance, not to the wrapper"
            )
        return divergence
    if isinstance(divergence, str):
        cls = LOSSES.get(divergence)
        if cls is None or not issubclass(cls, TokenDivergence):
            valid = sorted(n for n, c in LOSSES.items() if issubclass(c, TokenDivergence))
            raise ValueError(f"{owner}: divergence must be one of {valid} or a TokenDivergence, got {divergence!r}")
        return cls(**kwargs)
    raise ValueError(f"{owner}: divergence must be a registered name or a TokenDivergence, got {divergence!r}")


class _ChunkedBase(DistillationLoss):
    def __init__(
        self,
        divergence: str | TokenDivergence = "forward_kl",
        chunk_size: int | None = None,
        ce_weight: float = 0.0,
        weight: float = 1.0,
        **divergence_kwargs: Any,
    ) -> None:
        super().__init__(weight)
        owner = type(self).__name__
        self.divergence = _build_divergence(owner, divergence, divergence_kwargs)
        self.chunk_size = _check_chunk_size(owner, chunk_size)
        ce_weight = float(ce_weight)
        if not ce_weight >= 0 or ce_weight == float("inf"):
            raise ValueError(f"{owner}: ce_weight must be a finite number >= 0, got {ce_weight}")
        self.ce_weight = ce_weight

    def _labels(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        if not self.ce_weight:
            return None
        if "labels" not in batch:
            raise KeyError(f"{type(self).__name__}: ce_weight > 0 needs batch['labels']")
        return batch["labels"]

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}, ce_weight={self.ce_weight}, weight={self.weight}"


class ChunkedDivergence(_ChunkedBase):
    """Any token divergence over chunks of real rows; same value and gradient as the plain loss.

    ``divergence`` is a registered name (``"forward_kl"``, ``"reverse_kl"``, ``"jsd"``,
    ``"skew_kl"``, ``"skew_reverse_kl"``, ``"tvd"``) built with ``**divergence_kwargs``
    (``temperature``, ``beta``, ``alpha``, ``scale_by_t2``), or a divergence instance (its own
    ``weight`` is ignored; this term's ``weight`` counts). ``chunk_size`` rows per chunk
    (``None``: about 2^24 / V). ``ce_weight`` adds ``ce_weight * CE(student, labels)`` at T=1 per
    token in the same pass. Value = sum over real tokens / real-token count (see ``token_scale``).
    """

    name = "chunked"
    needs = frozenset({"logits"})

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]) -> Tensor:
        if teacher.logits is None:
            raise ValueError(
                "chunked needs dense teacher logits (a top-k teacher cache works with the plain divergences only)"
            )
        s, t = student.logits, teacher_logits(teacher, self.divergence.temperature)
        if s.dim() == 2:
            mask = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
        else:
            mask = batch["token_mask"].bool()
        total = chunked_divergence_sum(
            s, t, mask, self.divergence, self.chunk_size, self._labels(batch), self.ce_weight
        )
        return total * token_scale(mask.sum(), batch).to(total.dtype)


class FusedLinearKD(_ChunkedBase):
    """A token divergence computed from hidden states through the LM head, chunk by chunk.

    Contract with the module (the loss cannot find the head itself):

    * ``student.features["lm_head_input"]`` [B, T, H]: the hidden states the LM head is applied to
      (after the final norm; ``run_model`` puts Hugging Face's last ``hidden_states`` entry there,
      since ``hidden_states[-1]`` itself is the last block's un-normed output). If T is one more than
      ``batch["token_mask"].shape[1]`` (causal LM: logits shifted, hidden states not), the last
      position is dropped; if equal, they are used as aligned.
    * ``student.features["lm_head_weight"]`` [V, H] and optionally ``["lm_head_bias"]`` [V]: the
      head's parameters themselves (``lm_head_features(model)``), so gradients reach them. The
      fused loss assumes ``logits = h @ W.T + b`` (no logit soft-capping or scaling).
    * Teacher: ``teacher.logits`` [B, T-1, V] (shifted, as the module already gives) if present,
      else ``teacher.features["lm_head_input"]`` with ``teacher.features["lm_head_weight"]`` (+ bias).

    To save memory the module should not also compute the student's full logits (e.g. call the
    HF model with ``logits_to_keep=1``) unless another loss needs them; ``ce_weight`` gives the
    hard-label CE inside this loss for that reason.
    """

    name = "fused_kd"
    needs = frozenset({"lm_head"})  # without "logits" the module skips the full logits

    @staticmethod
    def _aligned(hidden: Tensor, mask: Tensor, who: str) -> Tensor:
        if hidden.dim() != 3 or mask.dim() != 2 or hidden.shape[0] != mask.shape[0]:
            raise ValueError(
                f"fused_kd: {who} hidden states {tuple(hidden.shape)} do not fit token_mask {tuple(mask.shape)}"
            )
        if hidden.shape[1] == mask.shape[1] + 1:
            return hidden[:, :-1]
        if hidden.shape[1] == mask.shape[1]:
            return hidden
        raise ValueError(
            f"fused_kd: {who} hidden states {tuple(hidden.shape)} do not fit token_mask {tuple(mask.shape)}"
        )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]) -> Tensor:
        if "token_mask" not in batch:
            raise KeyError("fused_kd is a causal-LM loss: it needs batch['token_mask']")
        if not {"lm_head_input", "lm_head_weight"} <= student.features.keys():
            raise KeyError(
                "fused_kd needs the student's LM head input and weight in student.features['lm_head_input'] and "
                "['lm_head_weight'] (run_model adds them for needs={'lm_head'}; see "
                "litdistill.core.architecture.lm_head_features)"
            )
        mask = batch["token_mask"].bool()
        h = self._aligned(student.features["lm_head_input"], mask, "student")
        kwargs: dict[str, Any] = {}
        if teacher.logits is not None:
            kwargs["teacher_logits"] = teacher_logits(teacher, self.divergence.temperature)
        else:
            if not {"lm_head_input", "lm_head_weight"} <= teacher.features.keys():
                raise KeyError(
                    "fused_kd needs dense teacher.logits, or teacher.features['lm_head_input'] and ['lm_head_weight'] "
                    "(a top-k teacher cache works with the plain divergences only)"
                )
            kwargs["teacher_hidden"] = self._aligned(teacher.features["lm_head_input"], mask, "teacher")
            kwargs["teacher_weight"] = teacher.features["lm_head_weight"]
            kwargs["teacher_bias"] = teacher.features.get("lm_head_bias")
        total = fused_linear_divergence_sum(
            h,
            student.features["lm_head_weight"],
            student.features.get("lm_head_bias"),
            mask,
            self.divergence,
            chunk_size=self.chunk_size,
            labels=self._labels(batch),
            ce_weight=self.ce_weight,
            **kwargs,
        )
        return total * token_scale(mask.sum(), batch).to(total.dtype)
