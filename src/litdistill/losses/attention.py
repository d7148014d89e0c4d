"""Attention transfer: the student's attention distributions match the teacher's, layer to layer.

For each mapped pair ``(s, t)`` of blocks (layer numbers from 1, same ``layer_map`` options as
:class:`~litdistill.losses.features.HiddenStateLoss`; 0, the embeddings, has no attention), with
``A`` = attention probabilities ``[B, heads, T, T]`` (row ``q``: the distribution over keys of query
position ``q``):

* heads: matched 1:1 when both models have the same number, else averaged over heads on both
  sides first (the average of distributions is a distribution);
* ``metric="kl"``: ``KL(A_t[b,h,q,:] || A_s[b,h,q,:]) = sum_k A_t log(A_t / A_s)`` per row
  (0 log 0 = 0; the student side is clamped at 1e-12 before the log), averaged over heads and
  the real query rows (``batch["attention_mask"]``);
* ``metric="mse"``: ``(A_s - A_t)^2`` averaged over heads and the (real query, real key) entries.

Pairs are averaged. The teacher side is a constant. Attention maps exist only with eager attention:
:class:`~litdistill.training.module.DistillationModule` switches both models to it (only) when a loss like
this one is configured (:func:`litdistill.core.attention_impl.ensure_attention_outputs`). During training
the student's returned maps are after attention dropout; set the student's
``attention_probs_dropout_prob`` to 0 for exact distributions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litdistill.core.outputs import ModelOutputs
from litdistill.losses.base import DistillationLoss
from litdistill.losses.features import (
    _zero,
    check_layer_map_spec,
    check_metric,
    init_layers,
    layer_pair_view,
    num_layers,
    resolve_layer_map,
)
from litdistill.models.multi_teacher import teacher_source

ATTENTION_METRICS = ("kl", "mse")
EPS = 1e-12


def attention_kl(student: Tensor, teacher: Tensor, query_mask: Tensor | None = None) -> Tensor:
    """Mean over heads and real query rows of KL(teacher row || student row); inputs [B, H, T, T]."""
    student, teacher = _match_heads(student, teacher)
    dtype = torch.promote_types(student.dtype, torch.float32)
    s, t = student.to(dtype), teacher.detach().to(dtype)
    rows = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(EPS))).sum(-1)  # [B, H, T]
    mask = _rows_mask(query_mask, rows)
    return torch.where(mask, rows, torch.zeros((), dtype=dtype, device=rows.device)).sum() / mask.sum().clamp_min(1)


def attention_mse(student: Tensor, teacher: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Mean over heads and (real query, real key) entries of (A_s - A_t)^2; inputs [B, H, T, T]."""
    student, teacher = _match_heads(student, teacher)
    dtype = torch.promote_types(student.dtype, torch.float32)
    sq = (student.to(dtype) - teacher.detach().to(dtype)).pow(2)  # [B, H, T, T]
    if key_mask is None:
        return sq.mean()
    m = key_mask.bool()
    mask = (m[:, None, :, None] & m[:, None, None, :]).expand_as(sq)
    return torch.where(mask, sq, torch.zeros((), dtype=dtype, device=sq.device)).sum() / mask.sum().clamp_min(1)


def _match_heads(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(
            f"attention maps must be [B, heads, T, T], got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    if student.shape != teacher.shape:
        raise ValueError(
            f"student attention {tuple(student.shape)} and teacher attention {tuple(teacher.shape)} do not match"
        )
    return student, teacher


def _rows_mask(query_mask: Tensor | None, rows: Tensor) -> Tensor:
    if query_mask is None:
        return torch.ones_like(rows, dtype=torch.bool)
    return query_mask.bool()[:, None, :].expand_as(rows)


class AttentionLoss(DistillationLoss):
    """Attention distributions of mapped layers, student vs teacher (see the module docstring).

    Args:
        layer_map: "auto" | "init" | "uniform" | "last" | [[s, t], ...] | [t_1, ..., t_S] (blocks from 1).
        metric: "kl" | "mse".
        teacher: with a MultiTeacher, the teacher to match (None: the combined output).
    """

    name = "attention"
    needs = frozenset({"attentions"})

    def __init__(
        self, layer_map: str | list = "auto", metric: str = "kl", teacher: str | None = None, weight: float = 1.0
    ) -> None:
        super().__init__(weight)
        owner = type(self).__name__
        self.layer_map = check_layer_map_spec(owner, layer_map)
        self.metric = check_metric(owner, metric, ATTENTION_METRICS)
        self.teacher = teacher
        self.pairs: list[tuple[int, int]] | None = None

    def setup(self, student: nn.Module, teacher: nn.Module) -> None:

        source = teacher_source(teacher, self.teacher, "attentions")
        init = init_layers(student) if source is getattr(teacher, "primary_model", teacher) else None
        self.pairs = resolve_layer_map(
            self.layer_map,
            num_layers(student),
            num_layers(source),
            init,
            allow_embeddings=False,
            owner=f"{type(self).__name__}.layer_map",
        )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]) -> Tensor:
        view = layer_pair_view(self, student, teacher, batch)
        if view is None:
            return _zero(student)
        student, teacher, batch = view
        a_s, a_t = student.attentions, teacher.attentions
        if not a_s or not a_t:
            raise ValueError(
                f"{type(self).__name__} got no attention maps (student: {len(a_s or ())}, teacher: {len(a_t or ())} "
                "layers); "
                "the models must run eager attention (DistillationModule switches them when this loss is configured)"
            )
        mask = batch.get("attention_mask")
        values = []
        for s, t in self.pairs:
            if s > len(a_s) or t > len(a_t):
                raise ValueError(
                    f"{type(self).__name__}: pair [{s}, {t}] but the models returned {len(a_s)} and {len(a_t)} "
                    "attention maps"
                )
            fn = attention_kl if self.metric == "kl" else attention_mse
            values.append(fn(a_s[s - 1], a_t[t - 1], mask))
        return torch.stack(values).mean()

    def extra_repr(self) -> str:
        return (
            f"layer_map={self.layer_map!r}, pairs={self.pairs}, metric={self.metric!r}, "
            f"teacher={self.teacher!r}, weight={self.weight}"
        )
