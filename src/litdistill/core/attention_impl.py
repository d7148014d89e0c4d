"""Switch models to an attention implementation that returns attention maps, only when a loss needs them.

Hugging Face models default to ``sdpa`` (or flash) attention, which is faster and never materialises
the ``[B, heads, T, T]`` probabilities: asked for ``output_attentions=True`` it returns an empty
tuple with a warning. Attention-transfer losses need the probabilities, so
:class:`~litdistill.training.module.DistillationModule` calls :func:`ensure_attention_outputs` on the student
and the teacher when (and only when) a configured loss declares ``"attentions"`` in ``needs``.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)

EAGER = "eager"


class AttentionOutputsError(ValueError):
    """A model cannot return attention probabilities."""


def attention_implementation(model: nn.Module) -> str | None:
    """The model's current attention implementation (``"sdpa"``, ``"eager"``, ...), or None if unknown."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def ensure_attention_outputs(model: nn.Module) -> nn.Module:
    """Make ``model`` return attention probabilities (``output_attentions=True``); returns the model.

    * Models defining ``ensure_attention_outputs()`` themselves (a MultiTeacher: every member) are
      delegated to.
    * Hugging Face models are switched to ``"eager"`` attention (``set_attn_implementation``,
      transformers >= 5; older versions: ``config._attn_implementation``). Nothing is reloaded;
      the weights are untouched.
    * Anything else raises :class:`AttentionOutputsError` naming the model.
    """
    if hasattr(model, "ensure_attention_outputs") and callable(model.ensure_attention_outputs):
        model.ensure_attention_outputs()
        return model
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise AttentionOutputsError(
            f"{type(model).__name__} is not a Hugging Face model with a configurable attention implementation, "
            "so it cannot return attention maps; drop the attention loss or use a feature loss on a hooked "
            "submodule (litdistill.losses.FeatureLoss)"
        )
    current = attention_implementation(model)
    if current == EAGER:
        return model
    try:
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(EAGER)
        else:  # transformers < 5
            config._attn_implementation = EAGER
    except (ValueError, NotImplementedError, AttributeError) as err:
        raise AttentionOutputsError(
            f"{type(model).__name__} (attention implementation {current!r}) cannot switch to eager attention, "
            f"so it cannot return attention maps: {err}"
        ) from err
    model.litdistill_attn_before = current  # restore_attention_implementation puts it back
    log.info("%s: attention %s -> eager (an attention loss needs the attention maps)", type(model).__name__, current)
    return model


def restore_attention_implementation(model: nn.Module) -> nn.Module:
    """Undo :func:`ensure_attention_outputs` (after training: inference and timing use the fast kernel again)."""
    if hasattr(model, "restore_attention_implementation") and callable(model.restore_attention_implementation):
        model.restore_attention_implementation()
        return model
    before = getattr(model, "litdistill_attn_before", None)
    if before is None:
        return model
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(before)
    else:
        model.config._attn_implementation = before
    del model.litdistill_attn_before
    return model
