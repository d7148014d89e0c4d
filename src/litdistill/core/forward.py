"""One forward pass of a student or teacher, asking only for what the losses need."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import Tensor, nn

from litdistill.core.architecture import layer_stack, lm_head_features
from litdistill.core.hooks import capture_features
from litdistill.core.outputs import ModelOutputs

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
TASKS = ("classification", "causal_lm")


def run_model(
    model: nn.Module,
    batch: dict[str, Tensor],
    needs: frozenset[str],
    task: str,
    feature_names: Sequence[str] = (),
) -> ModelOutputs:
    """Run ``model`` on the batch's inputs and return task-aligned outputs.

    Models that are not plain Hugging Face models (several teachers, a cache reader) may define
    ``distill_forward(batch, needs, task) -> ModelOutputs`` and are called through it instead.

    ``"lm_head"`` in ``needs`` (a head-fused loss) adds the LM head's parameters to ``features``,
    and ``features["lm_head_input"]``, the hidden states the head is applied to (after the final
    norm); a causal LM then skips its full logits (``logits_to_keep=1``) unless ``"logits"`` is
    needed too.

    ``hidden_states[i]`` is block i's output for every family: pre-norm decoders (Llama, GPT-2,
    GPT-NeoX) put their final norm into the last entry only, so a student cut from a teacher's
    layers would compare a normed last layer with the teacher's un-normed middle one. The last
    block's own output (a forward hook) replaces that entry; ``logits`` still see the norm.
    """
    if hasattr(model, "distill_forward"):
        if feature_names:  # hooked submodules (feature losses): only then, so 3-argument versions still work
            return model.distill_forward(batch, needs, task, feature_names=feature_names)
        return model.distill_forward(batch, needs, task)
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    flags = {}
    if needs & {"hidden_states", "lm_head"}:
        flags["output_hidden_states"] = True
    if "attentions" in needs:
        flags["output_attentions"] = True
    skip_logits = (
        task == "causal_lm" and "lm_head" in needs and "logits" not in needs and _accepts(model, "logits_to_keep")
    )
    if skip_logits:
        flags["logits_to_keep"] = 1  # the [B, T, V] logits are never built: the loss applies the head per chunk
    last_block = _last_block_name(model) if "hidden_states" in needs else None
    names = [*feature_names, last_block] if last_block and last_block not in feature_names else list(feature_names)
    with capture_features(model, names) as features:
        out = model(**inputs, **flags)
    hidden_states = getattr(out, "hidden_states", None)
    head = {}
    if "lm_head" in needs:
        head = {**lm_head_features(model), "lm_head_input": hidden_states[-1]}  # HF's last entry: after the final norm
        hidden_states = hidden_states if "hidden_states" in needs else None
    if last_block and hidden_states:
        last = features[last_block] if last_block in feature_names else features.pop(last_block)
        hidden_states = (*hidden_states[:-1], last)
    logits = None if skip_logits else out.logits
    if task == "causal_lm" and logits is not None:
        logits = logits[:, :-1]  # [B, T-1, V]: position t predicts token t+1
    return ModelOutputs(
        logits=logits,
        hidden_states=hidden_states,
        attentions=getattr(out, "attentions", None),
        features={**features, **head},
    )


def _last_block_name(model: nn.Module) -> str | None:
    """Dotted name of the last transformer block, or None for a model without a known layer stack."""
    try:
        path, stack = layer_stack(model)
    except ValueError:
        return None
    return f"{path}.{len(stack) - 1}" if len(stack) else None


def _accepts(model: nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def align_labels(batch: dict[str, Tensor], task: str) -> dict[str, Tensor]:
    """Shift causal-LM labels to match shifted logits and mark the tokens that count.

    Returns a new dict; the loader's batch is not modified. ``token_mask`` is False for prompt
    tokens, padding and any other -100 label.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {list(TASKS)}")
    if task != "causal_lm" or "labels" not in batch:
        return dict(batch)
    labels = batch["labels"][:, 1:]  # [B, T-1]
    return {**batch, "labels": labels, "token_mask": labels != -100}
