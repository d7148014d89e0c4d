"""litdistill: knowledge distillation for language models on PyTorch Lightning, configured with Hydra.

The heavy names (torch, Lightning, transformers behind them) load on first use, so commands that
need none of them (``litdistill generate``, ``litdistill new``) start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from litdistill.config import schema as _schema  # noqa: F401  (registers the typed config schemas)
from litdistill.core import conf as _conf  # noqa: F401  (registers the OmegaConf resolvers)

__version__ = "0.1.0"
# the public names, where they live (docs/architecture.md has the full map)
_LAZY = {
    "DistillationModule": "litdistill.training.module",
    "NonFiniteLossError": "litdistill.training.module",
    "DistillationLoss": "litdistill.losses",
    "HardCE": "litdistill.losses",
    "SoftTargetKL": "litdistill.losses",
    "build_loss": "litdistill.losses",
    "student_from_teacher": "litdistill.models.layer_subset",
    "load_pretrained": "litdistill.models.loading",
    "from_config": "litdistill.models.loading",
    "MultiTeacher": "litdistill.models.multi_teacher",
    "train": "litdistill.pipeline.train",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'litdistill' has no attribute {name!r}")
