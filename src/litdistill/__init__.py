"""litdistill: knowledge distillation for language models on PyTorch Lightning, configured with Hydra."""

from litdistill import config as _config  # noqa: F401  (registers the OmegaConf resolvers)
from litdistill.losses import DistillationLoss, HardCE, SoftTargetKL
from litdistill.module import DistillationModule, NonFiniteLossError

__version__ = "0.1.0"
__all__ = ["DistillationLoss", "DistillationModule", "HardCE", "NonFiniteLossError", "SoftTargetKL", "__version__"]
