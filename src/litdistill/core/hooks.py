"""Fetch any submodule's output by its dotted name (torchdistill-style forward hooks).

This lets feature losses match outputs that Hugging Face does not return (an FFN output, a pooler,
a non-HF model's block) without changing the model code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn


def _first_tensor(output: object) -> Tensor:
    """Modules return tensors, tuples or ModelOutput objects; the first tensor is the feature."""
    if isinstance(output, Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output
    for value in values if isinstance(values, (tuple, list)) else list(values):
        if isinstance(value, Tensor):
            return value
    raise TypeError(f"module output of type {type(output).__name__} holds no tensor")


@contextmanager
def capture_features(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Within the block, ``features[name]`` receives the output of ``model.get_submodule(name)``."""
    features: dict[str, Tensor] = {}
    if not names:  # the common case: no feature loss, nothing to hook (and no walk over the modules)
        yield features
        return
    handles = []
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.6)
            raise KeyError(f"no submodule named {name!r} in {type(model).__name__}; similar names: {close}")

        def hook(_module: nn.Module, _inputs: tuple, output: object, name: str = name) -> None:
            features[name] = _first_tensor(output)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()
