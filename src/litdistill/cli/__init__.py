"""``litdistill [command] [hydra overrides]``: train (default) or one of the other commands."""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from omegaconf import DictConfig

from litdistill.cli.help import help_text
from litdistill.cli.resume_guard import check_resume
from litdistill.cli.secret_overrides import refuse_secrets
from litdistill.core.conf import config_dir

log = logging.getLogger("litdistill")


# Errors a user fixes by changing the command (a bad value, a missing file): one clear line, no traceback
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)
DEBUG_ENV = "LITDISTILL_DEBUG"  # set to 1: tracebacks on the console too


def _train(cfg: DictConfig) -> None:
    from litdistill.pipeline.train import train
    from litdistill.training.ddp_launch import ddp_launch_scope

    # a multirun runs its jobs in this process: each DDP job starts its own ranks (ddp_launch_scope)
    with _reported(cfg), ddp_launch_scope():
        train(cfg)


def _generate(cfg: DictConfig) -> None:
    from litdistill.pipeline.generate import generate

    with _reported(cfg):
        generate(cfg)


class ConsoleFilter(logging.Filter):
    """The console shows the project's lines and any library's warnings or errors; a library's INFO chatter
    and its Python warnings go to the run's log only (cli.log), and adverts nowhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("litdistill"):
            return True
        if record.name == "py.warnings":  # warnings.warn, routed into logging by captureWarnings
            return f"{os.sep}litdistill{os.sep}" in record.getMessage()
        return record.levelno >= logging.WARNING


class AdvertFilter(logging.Filter):
    """Lightning's "Tip: ... litlogger" at every Trainer: printed nowhere, kept nowhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _readable_console() -> None:
    """One line per log event: Lightning's package logger brings its own console handler (each of its
    lines then printed twice, once by it and once by the run's); it goes, and the run's handlers (Hydra's
    console and cli.log) take every record, the console through :class:`ConsoleFilter`."""
    import lightning  # noqa: F401  (its import adds the handler removed here)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if not isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        filters = [AdvertFilter()] + ([] if isinstance(handler, logging.FileHandler) else [ConsoleFilter()])
        for f in filters:
            if not any(type(g) is type(f) for g in handler.filters):
                handler.addFilter(f)


@contextmanager
def _reported(cfg: DictConfig) -> Iterator[None]:
    """Say where the run writes, at its start and its end; on a failure, write the traceback into the run
    directory (``error.log``) and, for a user error, print its message alone and exit 1."""
    from hydra.core.hydra_config import HydraConfig

    _readable_console()
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    rank_zero = os.environ.get("LOCAL_RANK", "0") == "0"
    if run_dir is not None and rank_zero:
        log.info("run directory: %s", run_dir)
    try:
        yield
    except Exception as error:
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        where = f" (run directory: {run_dir}; the traceback is in error.log there)" if run_dir is not None else ""
        message = f"{type(error).__name__}: {error}{where}"
        _to_log_files(message)  # the run's own log (cli.log) records why it ended
        if isinstance(error, USER_ERRORS) and os.environ.get(DEBUG_ENV) != "1":
            print(f"litdistill: error: {message}", file=sys.stderr)
            sys.exit(1)  # the message says it all; LITDISTILL_DEBUG=1 shows the traceback
        raise
    if run_dir is not None and rank_zero:
        log.info("done; run directory: %s", run_dir)


def _to_log_files(message: str) -> None:
    """An ERROR record for the log files only (Hydra's job log): the console gets its own one line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


# command -> (primary config name, function run with the composed config)
COMMANDS: dict[str, tuple[str, Callable[[DictConfig], None]]] = {
    "train": ("train", _train),
    "generate": ("generate", _generate),
}


def _new(argv: list[str]) -> None:
    from litdistill.cli.scaffold import main as new

    new(argv)


def _rank(argv: list[str]) -> None:
    from litdistill.cli.rank import main as rank

    rank(argv)


# Commands that are not Hydra apps (plain argparse), handled before Hydra: command -> function(argv)
PLAIN_COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "new": _new,  # litdistill new [--no-input] [key=value ...] [-o DIR]: a project from the cookiecutter template
    "rank": _rank,  # litdistill rank DIR... [rank.by=f1] [rank.max_latency_ms=20]: a leaderboard of finished runs
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
    if argv[:1] in (["--help"], ["-h"], ["help"]):
        print(help_text(), end="")
        return None
    argv = ["--help" if a == "--hydra-help" else a for a in argv]  # Hydra's own help, one flag away
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
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM turned into one (generate): results kept, no traceback
        by_sigterm = str(stop) == f"signal {int(signal.SIGTERM)}"
        print(f"litdistill {command}: stopped by {'SIGTERM' if by_sigterm else 'Ctrl-C'}", file=sys.stderr)
        sys.exit(143 if by_sigterm else 130)


if __name__ == "__main__":
    main()
