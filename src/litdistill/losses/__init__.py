"""Loss terms, looked up by name (``LOSSES``) or built from config with ``_target_``."""

from litdistill.core.architecture import lm_head_features, lm_head_of
from litdistill.losses.attention import AttentionLoss
from litdistill.losses.base import (
    LOSSES,
    DistillationLoss,
    build_loss,
    masked_mean,
    rows_and_mask,
    token_mean,
    token_scale,
)
from litdistill.losses.chunked import ChunkedDivergence, FusedLinearKD
from litdistill.losses.divergences import (
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    SkewKL,
    SkewReverseKL,
    TokenDivergence,
    TotalVariation,
)
from litdistill.losses.features import FeatureLoss, HiddenStateLoss
from litdistill.losses.logits import HardCE, SoftTargetKL

__all__ = [
    "LOSSES",
    "DistillationLoss",
    "HardCE",
    "SoftTargetKL",
    "build_loss",
    "masked_mean",
    "rows_and_mask",
    "token_mean",
    "token_scale",
]
__all__ += [
    "ChunkedDivergence",
    "ForwardKL",
    "FusedLinearKD",
    "GeneralizedJSD",
    "ReverseKL",
    "SkewKL",
    "SkewReverseKL",
    "TokenDivergence",
    "TotalVariation",
    "lm_head_features",
    "lm_head_of",
    "token_mean",
    "token_scale",
]
__all__ += ["AttentionLoss", "FeatureLoss", "HiddenStateLoss"]
