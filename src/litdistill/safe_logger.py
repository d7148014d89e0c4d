"""Loggers that cannot kill training: W&B unreachable or a full disk costs log lines, not the run.

``guard_logger`` wraps the methods Lightning calls on a logger so an exception is logged as a warning
and training goes on. The logger keeps its class (``isinstance(lg, CSVLogger)`` still holds), so code
that looks for a particular logger keeps working.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)

GUARDED = ("log_metrics", "log_hyperparams", "log_graph", "save", "finalize", "after_save_checkpoint")


def guard_logger(logger: Logger) -> Logger:
    """Make ``logger``'s Lightning-facing methods warn instead of raise; returns the same object."""
    if getattr(logger, "_litdistill_guarded", False):
        return logger
    failures: dict[str, int] = {}
    for name in GUARDED:
        method = getattr(logger, name, None)
        if callable(method):
            setattr(logger, name, _guarded(logger, name, method, failures))
    logger._litdistill_guarded = True
    logger._litdistill_failures = failures
    return logger


def _guarded(logger: Logger, name: str, method: Callable[..., Any], failures: dict[str, int]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any logger failure, by design
            count = failures[name] = failures.get(name, 0) + 1
            if count == 1 or count % 100 == 0:
                log.warning("logger %s.%s failed (%s: %s); training continues without it (%d failure%s so far)",
                            type(logger).__name__, name, type(error).__name__, error, count, "s" * (count > 1))
            return None

    return call
