"""The loss contract and the name registry.

A loss is an ``nn.Module`` so that losses with parameters (feature projections) are trained with the
student and saved in checkpoints. Every concrete subclass with a ``name`` registers itself, so a user
loss is one class (imported by its YAML ``_target_``) and needs no change to the module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from litdistill.core.outputs import ModelOutputs
from litdistill.core.validation import check_temperature

LOSSES: dict[str, type[DistillationLoss]] = {}

# What a loss may ask the forward passes for; the module requests only the union of these.
# "lm_head": the LM head's own parameters in features (a head-fused loss applies the head itself)
KNOWN_NEEDS = frozenset({"logits", "hidden_states", "attentions", "features", "lm_head"})


class DistillationLoss(nn.Module):
    """Base class: one weighted loss term.

    Subclasses set ``name`` (registry key and log name), ``needs`` (which outputs the models must
    return) and ``uses_teacher`` (False for losses on labels alone), and implement ``forward``.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    uses_teacher: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.needs) - KNOWN_NEEDS
        if unknown:
            raise TypeError(f"{cls.__name__}.needs has unknown entries {sorted(unknown)}; valid: {sorted(KNOWN_NEEDS)}")
        if "name" in cls.__dict__ and cls.name:  # a subclass that inherits its parent's name is not registered
            register(cls)

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    @property
    def weight(self) -> float:
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{type(self).__name__}: weight must be a finite number >= 0, got {value}")
        self._weight = value

    def setup(self, student: nn.Module, teacher: nn.Module) -> None:
        """Called once by DistillationModule.__init__ (with a teacher), before the optimizer exists.

        Losses resolve what depends on the models here (layer maps) and create their parameters
        (projections), so the optimizer and checkpoints see them. The default does nothing.
        """

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


def register(cls: type[DistillationLoss]) -> None:
    """Add ``cls`` to LOSSES under its ``name``; a name taken by another class is an error.

    Silently replacing a built-in (or another user loss) would make every config that names it run
    a different loss. The same class defined again (a module reloaded, a test run twice) replaces
    its old definition.
    """
    existing = LOSSES.get(cls.name)
    same = existing is not None and (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__)
    if existing is not None and not same:
        raise TypeError(
            f"loss name {cls.name!r} of {_path(cls)} is already registered by {_path(existing)}; "
            f"give {cls.__name__} another name (registered: {sorted(LOSSES)})"
        )
    LOSSES[cls.name] = cls


def _path(cls: type) -> str:
    """Module and qualified name: two clashing classes that share a short name stay distinguishable."""
    return f"{cls.__module__}.{cls.__qualname__}"


def teacher_logits(teacher: ModelOutputs, temperature: float) -> Tensor:
    """The teacher's logits as a loss that divides them by ``temperature`` must receive them.

    Plain outputs: unchanged. Outputs with ``log_probs=True`` (a MultiTeacher mixture, already
    softened by each teacher's own temperature) are multiplied by ``temperature``, so that
    ``log_softmax(x / temperature)`` gives back exactly those log-probabilities: the loss's
    temperature then softens the student only.
    """
    if getattr(teacher, "log_probs", False):
        return teacher.logits * temperature
    return teacher.logits


class Temperature:
    """A loss's ``temperature``, checked by :func:`check_temperature` on every assignment.

    Declared as ``temperature = Temperature()`` on a loss class, so a value set after construction
    (a user, a sweep, a LossParamSchedule every step) is refused like one given to ``__init__``:
    it divides logits, and a zero or negative value would only surface as NaN losses.
    """

    def __get__(self, loss: DistillationLoss | None, owner: type | None = None) -> float | Temperature:
        if loss is None:
            return self  # class access: the descriptor itself
        if "_temperature" not in loss.__dict__:  # AttributeError, so hasattr() is False before __init__ set it
            raise AttributeError(f"{type(loss).__name__}.temperature is not set yet")
        return loss.__dict__["_temperature"]

    def __set__(self, loss: DistillationLoss, value: float) -> None:
        loss.__dict__["_temperature"] = check_temperature(type(loss).__name__, value)


def build_loss(name: str, **kwargs) -> DistillationLoss:
    """Look a loss up by its registered name, e.g. ``build_loss("soft_kl", temperature=2.0)``."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; registered losses: {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)


def kl_rows(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities [n, V] -> [n].

    An entry with ``p = 0`` exactly (``logp = -inf``: a restricted vocabulary's ``-inf`` logits)
    contributes 0, the limit of ``p log p``; the difference is masked *before* the product, so the
    gradient there is 0 too (masking the product afterwards would leave ``0 * inf = NaN`` in backward).
    ``p > 0`` where ``q = 0`` gives ``+inf``, the true value.
    """
    diff = torch.where(torch.isneginf(logp), torch.zeros((), dtype=logp.dtype, device=logp.device), logp - logq)
    return (logp.exp() * diff).sum(-1)


def check_widths(owner: str, student: Tensor, teacher: Tensor) -> None:
    """Student and teacher rows must cover the same outputs (labels, or vocabulary entries)."""
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"{owner}: the student's logits have {student.shape[-1]} entries per row, the teacher's "
            f"{teacher.shape[-1]}; a logit loss needs one output space (the same labels, or one vocabulary)"
        )


def rows_and_mask(logits: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Flatten logits to rows and return the boolean mask of rows that count.

    Classification logits [B, C] count every row. Token logits [B, T, V] count the positions in
    ``batch["token_mask"]`` (prompt, padding and -100 labels already excluded by the module).
    """
    if logits.dim() == 2:
        return logits, torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    rows = logits.reshape(-1, logits.shape[-1])  # [B*T, V]
    mask = batch["token_mask"].reshape(-1).bool()  # [B*T]
    return rows, mask


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the rows in ``mask``; divides by the real-row count, never by padding.

    A per-micro-batch mean: feature losses use it (their positions are the input's, not the label
    tokens). Losses over label tokens use :func:`token_mean`, which is exact across accumulation.
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def token_scale(num_real: Tensor, batch: dict[str, Tensor], count: str = "num_tokens_in_step") -> Tensor:
    """The factor that turns a SUM over this micro-batch's real tokens into the loss value.

    * Without ``batch["num_tokens_in_step"]``: ``1 / max(num_real, 1)``, the mean over the real
      tokens of this batch.
    * With it (``N = batch["num_tokens_in_step"]``, the real-token count over all micro-batches
      of the optimizer step, and ``A = batch.get("accumulate", 1)``, the number of micro-batches
      Lightning divides each loss by, i.e. ``accumulate_grad_batches``): ``A / max(N, 1)``.

    So micro-batch ``k`` returns ``loss_k = A * S_k / N`` with ``S_k`` its token sum; Lightning
    back-propagates ``loss_k / A``, and the accumulated gradient is that of
    ``sum_k S_k / N``: the exact per-token mean over the whole step, however unevenly the real
    tokens fall into micro-batches. Under data parallelism the module's training step first sums
    the count over ranks and folds the world size into ``accumulate`` (DDP averages gradients over
    ranks): :func:`litdistill.data.token_counts.across_ranks`.

    ``count`` names the step's count to divide by: hard CE on a classifier passes
    ``num_labelled_in_step`` (the labelled examples; unlabelled transfer-set rows carry label -100).
    """
    n_step = batch.get(count) if isinstance(batch, Mapping) else None
    if n_step is None:
        return 1.0 / num_real.to(torch.float32).clamp_min(1.0)
    n_step = torch.as_tensor(n_step, dtype=torch.float32, device=num_real.device)
    accumulate = torch.as_tensor(batch.get("accumulate", 1), dtype=torch.float32, device=num_real.device)
    return accumulate / n_step.clamp_min(1.0)


def token_mean(values: Tensor, mask: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """``sum(values[mask]) * token_scale(mask.sum(), batch)``; masked rows never reach the sum.

    ``values`` [N] per row, ``mask`` [N] bool. Rows outside the mask are dropped with ``where``,
    so NaN/inf there cannot leak into the value or the gradient.
    """
    mask = mask.bool()
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total * token_scale(mask.sum(), batch).to(total.dtype)
