"""What a model forward hands to the losses, in one shape for students and teachers alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


@dataclass
class TopK:
    """A sparse next-token (or label) distribution: the k most likely entries plus the leftover mass.

    What an offline teacher cache stores for large vocabularies (see ``litdistill.cache`` and
    ``litdistill.losses.sparse``). Log-probabilities are of the teacher tempered at ``temperature``
    (``softmax(z / T)``, tempered before the top k are taken, so the tail mass is exact too). A slot
    with ``ids < 0`` is empty (padding, or an entry folded into the tail); its log-probability is ignored.
    """

    logprobs: Tensor  # [..., k] log p of the stored entries
    ids: Tensor  # [..., k] int64 entry ids (vocabulary or label ids); -1 marks an empty slot
    log_tail: Tensor  # [...] log of the probability mass outside the stored entries
    temperature: float = 1.0  # the temperature the distribution was tempered at

    def argmax(self) -> Tensor:
        """Id of the most likely stored entry per row, [...]."""
        best = self.logprobs.masked_fill(self.ids < 0, float("-inf")).argmax(-1, keepdim=True)
        return self.ids.gather(-1, best).squeeze(-1)


@dataclass
class ModelOutputs:
    """Outputs of one forward pass, aligned for the task.

    For causal LMs the logits are already shifted so position t predicts token t+1, and line up
    with ``batch["labels"]`` as the module passes it to the losses.
    """

    logits: Tensor | None = None  # [B, C] (classification) or [B, T, V] (causal LM)
    # (embeddings, layer 1, ...), each [B, T, H]; from a teacher cache only the stored layers, None elsewhere
    hidden_states: tuple[Tensor | None, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None  # per layer, each [B, heads, T, T]
    features: dict[str, Tensor] = field(default_factory=dict)  # hooked submodule outputs by dotted name
    topk: TopK | None = None  # a sparse teacher from a cache (top-k log-probs + tail mass), instead of logits
    # True when ``logits`` already are softened log-probabilities (a MultiTeacher mixture): logit
    # losses then take them as the teacher distribution as is (see losses.base.teacher_logits).
    log_probs: bool = False


def outputs_in_batch(batch: dict[str, Any]) -> ModelOutputs | None:
    """The teacher outputs an offline cache put into the batch (``litdistill.cache.data``), or None.

    Stored hidden states (``teacher_hidden_states``, {teacher layer: [B, T, H]}) come back at their
    teacher indices, None at the layers not stored: the hidden-state losses read only mapped layers.
    """
    stored = batch.get("teacher_hidden_states")
    hidden = tuple(stored.get(i) for i in range(max(stored) + 1)) if stored else None
    if "teacher_logits" in batch:
        return ModelOutputs(logits=batch["teacher_logits"], hidden_states=hidden)
    if "teacher_topk_ids" in batch:
        tempered = batch.get("teacher_topk_temperature")  # [B], one value: the store's capture temperature
        t = float(tempered.reshape(-1)[0]) if tempered is not None and tempered.numel() else 1.0
        topk = TopK(batch["teacher_topk_logprobs"], batch["teacher_topk_ids"], batch["teacher_topk_log_tail"], t)
        return ModelOutputs(topk=topk, hidden_states=hidden)
    return None


class TeacherOutputsInBatch(nn.Module):
    """The teacher's stand-in when its outputs arrive inside the training batches: no weights, nothing to run.

    Used for an offline teacher cache (``cache=use``) and for soft labels read from a file. Splits the
    source does not cover (validation without the teacher's outputs) are evaluated without a teacher:
    ``outputs_in_batch`` tells the module so.
    """

    outputs_in_batch = True

    def __init__(self, source: str, splits: Sequence[str]) -> None:
        super().__init__()
        self.source, self.splits = source, sorted(splits)

    def distill_forward(self, batch: dict[str, Tensor], needs: frozenset[str], task: str, **_: Any) -> ModelOutputs:
        raise RuntimeError(
            f"a batch arrived without the teacher's outputs (keys {sorted(batch)}); the teacher was "
            f"not loaded: its outputs come from {self.source}, which covers only the splits {self.splits}"
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"this teacher has no weights: its outputs come from {self.source}")

    def extra_repr(self) -> str:
        return f"source={self.source!r}, splits={self.splits}"
