"""Where a Hugging Face model keeps its transformer blocks and its LM head, per model family."""

from __future__ import annotations

from torch import Tensor, nn

# Where the stack of transformer blocks lives, per model family.
LAYER_PATHS = (
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "distilbert.transformer.layer",
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "encoder.layer",
    "layers",
)


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted path and the ``ModuleList`` of transformer blocks of a supported model."""
    for path in LAYER_PATHS:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.ModuleList):
            return path, module
    raise ValueError(f"cannot find the layer stack of {type(model).__name__}; supported layouts: {list(LAYER_PATHS)}")


def lm_head_of(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(weight [V, H], bias [V] or None)`` of a Hugging Face model's output embeddings.

    The returned tensors are the parameters themselves (gradients reach them; tied embeddings
    stay tied). Wrappers with ``.module`` (DDP) are unwrapped. Sharded parameters (FSDP) are
    not gathered here.
    """
    inner = model
    while not hasattr(inner, "get_output_embeddings") and hasattr(inner, "module"):
        inner = inner.module
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (get_output_embeddings() returned {head!r})")
    return head.weight, getattr(head, "bias", None)


def lm_head_features(model: nn.Module) -> dict[str, Tensor]:
    """``{"lm_head_weight": W, "lm_head_bias": b}`` (bias only if present) for ``ModelOutputs.features``."""
    weight, bias = lm_head_of(model)
    features = {"lm_head_weight": weight}
    if bias is not None:
        features["lm_head_bias"] = bias
    return features
