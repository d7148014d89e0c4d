"""``litdistill [command] [hydra overrides]``: train (default) or one of the other commands."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from litdistill.cli.resume_guard import check_resume
from litdistill.cli.secret_overrides import refuse_secrets
from litdistill.core.conf import config_dir

log = logging.getLogger("litdistill")


def _train(cfg: DictConfig) -> None:
    from litdistill.pipeline.train import train
    from litdistill.training.ddp_launch import ddp_launch_scope

    with ddp_launch_scope():  # a multirun runs its jobs in this process: each DDP job must start its own ranks
        train(cfg)


def _generate(cfg: DictConfig) -> None:
    from litdistill.pipeline.generate import generate

    generate(cfg)


# command -> (primary config name, function run with the composed config)
COMMANDS: dict[str, tuple[str, Callable[[DictConfig], None]]] = {
    "train": ("train", _train),
    "generate": ("generate", _generate),
}


def _new(argv: list[str]) -> None:
    from litdistill.cli.scaffold import main as new

    new(argv)


# Commands that are not Hydra apps (plain argparse), handled before Hydra: command -> function(argv)
PLAIN_COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "new": _new,  # litdistill new [--no-input] [key=value ...] [-o DIR]: a project from the cookiecutter template
}


def _group_deletions(argv: list[str]) -> list[str]:
    """``teacher=null`` (any config group set to null) means "no teacher": Hydra spells it ``~teacher``."""
    groups = {d.name for d in config_dir().iterdir() if d.is_dir()}
    return [f"~{arg.split('=')[0]}" if arg.endswith("=null") and arg.split("=")[0] in groups else arg for arg in argv]


def _launch_args(argv: list[str]) -> list[str]:
    """``run_dir=D`` is ``hydra.run.dir=D``. Ranks started by torchrun each run this CLI: one shared dir is required."""
    argv = [f"hydra.run.dir={arg.split('=', 1)[1]}" if arg.startswith("run_dir=") else arg for arg in argv]
    multirun = "-m" in argv or "--multirun" in argv
    if (
        int(os.environ.get("WORLD_SIZE", "1")) > 1
        and not multirun
        and not any(a.startswith("hydra.run.dir=") for a in argv)
    ):
        raise SystemExit(
            f"one of WORLD_SIZE={os.environ['WORLD_SIZE']} processes (torchrun?): give all ranks the same "
            "run directory with run_dir=<shared path> (see docs/scaling.md)"
        )
    return argv


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PLAIN_COMMANDS:
        return PLAIN_COMMANDS[argv[0]](argv[1:])
    refuse_secrets(argv)
    argv = _launch_args(_group_deletions(argv))
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    if command == "train":
        check_resume(argv)  # a resume with other settings is refused before Hydra writes the run's record
    config_name, run = COMMANDS[command]
    sys.argv = [f"litdistill {command}", *argv]
    try:
        hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(run)()
    except SystemExit as stop:  # Lightning's SIGTERMException: stopped on request, checkpoint written
        if type(stop).__name__ == "SIGTERMException":
            sys.exit(143)
        raise


if __name__ == "__main__":
    main()
