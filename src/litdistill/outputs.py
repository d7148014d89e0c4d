"""What a model forward hands to the losses, in one shape for students and teachers alike."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class TopK:
    """A sparse next-token (or label) distribution: the k most likely entries plus the leftover mass.

    What an offline teacher cache stores for large vocabularies (see ``litdistill.cache`` and
    ``litdistill.losses.sparse``). Log-probabilities are at temperature 1. A slot with ``ids < 0`` is
    empty (padding, or an entry folded into the tail); its log-probability is ignored.
    """

    logprobs: Tensor  # [..., k] log p of the stored entries
    ids: Tensor  # [..., k] int64 entry ids (vocabulary or label ids); -1 marks an empty slot
    log_tail: Tensor  # [...] log of the probability mass outside the stored entries

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
    hidden_states: tuple[Tensor, ...] | None = None  # (embeddings, layer 1, ...), each [B, T, H]
    attentions: tuple[Tensor, ...] | None = None  # per layer, each [B, heads, T, T]
    features: dict[str, Tensor] = field(default_factory=dict)  # hooked submodule outputs by dotted name
    topk: TopK | None = None  # a sparse teacher from a cache (top-k log-probs + tail mass), instead of logits
    # True when ``logits`` already are softened log-probabilities (a MultiTeacher mixture): logit
    # losses then take them as the teacher distribution as is (see losses.base.teacher_logits).
    log_probs: bool = False
