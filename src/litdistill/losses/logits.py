"""Logit losses for the core recipe: Hinton soft targets and hard-label cross entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from litdistill.core.outputs import ModelOutputs
from litdistill.data.token_counts import LABELLED, TOKENS
from litdistill.losses.base import (
    DistillationLoss,
    Temperature,
    check_widths,
    kl_rows,
    rows_and_mask,
    teacher_logits,
    token_scale,
)
from litdistill.losses.sparse import sparse_soft_kl


class SoftTargetKL(DistillationLoss):
    """KL(teacher_T || student_T) between temperature-softened distributions, times T^2.

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label loss when
    the temperature changes (Hinton et al., 2015). Averaged over real rows (examples or tokens);
    under gradient accumulation over the real tokens of the whole optimizer step (``token_mean``).
    """

    name = "soft_kl"
    temperature = Temperature()  # validated on every assignment, also a schedule's

    def __init__(self, temperature: float = 2.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.temperature = temperature

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]) -> Tensor:
        if teacher.logits is None and teacher.topk is not None:  # a top-k teacher cache: the k+1-bucket KL
            return sparse_soft_kl(self, student, teacher, batch)
        t = self.temperature
        s_rows, mask = rows_and_mask(student.logits, batch)  # [N, C]
        t_rows, _ = rows_and_mask(teacher_logits(teacher, t), batch)  # [N, C]
        check_widths(self.name, s_rows, t_rows)
        if not bool(mask.all()):  # only the real rows enter the graph: NaN/inf in the others cannot reach a gradient
            s_rows, t_rows = s_rows[mask], t_rows[mask]
        s_logp = F.log_softmax(s_rows.float() / t, dim=-1)
        t_logp = F.log_softmax(t_rows.float() / t, dim=-1)
        kl = kl_rows(t_logp, s_logp)  # [n]
        return kl.sum() * token_scale(mask.sum(), batch).to(kl.dtype) * t * t


class HardCE(DistillationLoss):
    """Cross entropy to the labels at temperature 1; rows labelled -100 are ignored.

    Mean over the labelled rows; under gradient accumulation (and DDP) over the labelled rows of the
    whole optimizer step (``token_scale``), so a micro-batch holding few labelled examples among
    unlabelled transfer-set rows is not over-weighted.
    """

    name = "hard_ce"
    uses_teacher = False

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        self.label_smoothing = label_smoothing

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]) -> Tensor:
        logits = student.logits.reshape(-1, student.logits.shape[-1])  # [N, C]
        labels = batch["labels"].reshape(-1)  # [N]
        labelled = labels != -100
        if not bool(labelled.all()):  # only labelled rows enter the graph: NaN/inf elsewhere cannot reach a gradient
            logits, labels = logits[labelled], labels[labelled]
        per_row = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing, reduction="none")
        count = LABELLED if LABELLED in batch else TOKENS  # a classifier's labelled rows; a causal LM's tokens
        return per_row.sum() * token_scale(labelled.sum(), batch, count).to(per_row.dtype)
