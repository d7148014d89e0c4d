"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from litdistill.core.packaged import packaged_minilm


def config_dir() -> Path:
    """``conf/`` inside an installed wheel, or the checkout's top-level ``conf/`` in development."""
    packaged = Path(__file__).parents[1] / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "conf"


def to_plain(value: Any) -> Any:
    """A config node as plain Python containers, interpolations resolved; any other value unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("litdistill.minilm"):
        OmegaConf.register_new_resolver("litdistill.minilm", packaged_minilm)


register_resolvers()
