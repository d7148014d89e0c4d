"""What a model forward hands to the losses, in one shape for students and teachers alike."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


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
