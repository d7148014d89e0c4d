"""Students initialised from a subset of the teacher's layers (DistilBERT-style layer dropping)."""

from __future__ import annotations

import copy

from torch import nn
from transformers import PreTrainedModel

from litdistill.core.architecture import LAYER_PATHS, layer_stack  # noqa: F401  (re-exported)

# student_from_teacher keeps every DEFAULT_EVERY-th layer when neither layers= nor every= is given
# (conf/student/from_teacher.yaml leaves both null, so student.layers=[...] alone works on the CLI).
DEFAULT_EVERY = 3


def select_layers(num_layers: int, layers: list[int] | None, every: int | None) -> list[int]:
    """Resolve ``layers`` (explicit indices) or ``every`` (keep layers 0, k, 2k, ...) and validate."""
    if (layers is None) == (every is None):
        raise ValueError(f"give exactly one of layers= or every= (got layers={layers}, every={every})")
    if every is not None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        layers = list(range(0, num_layers, every))
    layers = [int(i) for i in layers]
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad or not layers:
        raise ValueError(
            f"layer indices {bad or layers} out of range: the teacher has {num_layers} layers (0..{num_layers - 1})"
        )
    if sorted(set(layers)) != layers:
        raise ValueError(f"layers must be strictly increasing without repeats, got {layers}")
    return layers


def check_cut(teacher: nn.Module, layers: list[int] | None = None, every: int | None = None) -> list[int]:
    """The teacher blocks a ``student_from_teacher(teacher, layers, every)`` would keep, checked against
    the teacher's depth without copying anything: a bad ``student.layers`` fails before fine-tuning."""
    refuse_quantized_source(teacher)
    _, stack = layer_stack(teacher)
    try:
        return select_layers(len(stack), layers, DEFAULT_EVERY if layers is None and every is None else every)
    except ValueError as error:
        raise ValueError(f"student.layers={layers}, student.every={every}: {error}") from error


def student_from_teacher(
    teacher: PreTrainedModel, layers: list[int] | None = None, every: int | None = None
) -> PreTrainedModel:
    """Deep-copy the teacher (embeddings, head and the chosen blocks) into a shallower student.

    ``layers`` (0-based teacher block indices) or ``every`` (keep blocks 0, k, 2k, ...); with
    neither, ``every=DEFAULT_EVERY`` (3: blocks 0 and 3 of a 6-layer teacher). Both is an error.
    The student records ``config.litdistill_teacher_layers`` so feature losses can map each
    student layer to the teacher layer it was copied from.
    """
    if teacher is None:
        raise ValueError("student=from_teacher needs a teacher; set teacher= to a model config")
    refuse_quantized_source(teacher)
    path, stack = layer_stack(teacher)
    if layers is None and every is None:
        every = DEFAULT_EVERY
    chosen = select_layers(len(stack), layers, every)
    student = copy.deepcopy(teacher)
    _, student_stack = layer_stack(student)
    kept = nn.ModuleList([student_stack[i] for i in chosen])
    for new_index, block in enumerate(kept):  # KV-cache bookkeeping in Llama-style attention
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    parent_path, _, attr = path.rpartition(".")
    setattr(student.get_submodule(parent_path) if parent_path else student, attr, kept)
    config = student.config
    config.num_hidden_layers = len(chosen)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in chosen]
    config.litdistill_teacher_layers = chosen
    student.requires_grad_(True)
    student.litdistill_source = {"from_teacher_layers": chosen}
    return student


def refuse_quantized_source(teacher: nn.Module) -> None:
    """A student cannot be cut from 8-bit or 4-bit weights: they are packed integers, not trainable
    floats. Raised before any copy (and, from the CLI, before the teacher is fine-tuned)."""
    method = getattr(getattr(teacher, "config", None), "quantization_config", None)
    if getattr(teacher, "is_quantized", False) or method is not None:
        source = (getattr(teacher, "litdistill_source", None) or {}).get("quantization") or "bitsandbytes"
        raise ValueError(
            f"student=from_teacher copies the teacher's layers, but the teacher is quantized ({source}): its "
            "weights cannot be copied into a trainable student. Load the teacher unquantized "
            "(teacher.quantization=null), or with teacher=multi quantize a member that is not the primary "
            "(teacher.primary=<unquantized member>), or build the student another way (student=scaled, "
            "student=pretrained)"
        )
