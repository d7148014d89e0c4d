"""``litdistill [command] [hydra overrides]``: train (default) or one of the other commands."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from litdistill.config import config_dir

log = logging.getLogger("litdistill")


def _train(cfg: DictConfig) -> None:
    from litdistill.train import train

    train(cfg)


def _generate(cfg: DictConfig) -> None:
    from litdistill.generation.run import generate

    generate(cfg)


# command -> (primary config name, function run with the composed config)
COMMANDS: dict[str, tuple[str, Callable[[DictConfig], None]]] = {
    "train": ("train", _train),
    "generate": ("generate", _generate),
}


def _group_deletions(argv: list[str]) -> list[str]:
    """``teacher=null`` (any config group set to null) means "no teacher": Hydra spells it ``~teacher``."""
    groups = {d.name for d in config_dir().iterdir() if d.is_dir()}
    return [f"~{arg.split('=')[0]}" if arg.endswith("=null") and arg.split("=")[0] in groups else arg for arg in argv]


def main(argv: list[str] | None = None) -> None:
    argv = _group_deletions(list(sys.argv[1:] if argv is None else argv))
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    config_name, run = COMMANDS[command]
    sys.argv = [f"litdistill {command}", *argv]
    hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(run)()


if __name__ == "__main__":
    main()
