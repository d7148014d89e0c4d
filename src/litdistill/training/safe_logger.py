"""Loggers that cannot kill training: W&B unreachable or a full disk costs log lines, not the run.

``guard_logger`` guards what Lightning calls on a logger: its ``experiment`` (Lightning creates it
before ``setup``; for W&B that is ``wandb.init``) and the methods in ``GUARDED``. The first exception is
reported once, as a warning, and switches the logger off for the rest of the run: every later call
returns at once and ``experiment`` is a no-op object. (A ``WandbLogger`` whose ``wandb.init`` failed
would otherwise try ``wandb.init`` again on every ``log_metrics`` call, each of which can block for
about 90 s when W&B is unreachable.) The guarded logger is an instance of a subclass of its class
(``isinstance(lg, CSVLogger)`` still holds, under the same class name), so code that looks for a
particular logger keeps working; ``logger_failed`` tells it whether the logger is still usable.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from lightning.fabric.loggers.logger import _DummyExperiment
from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)

GUARDED = ("log_metrics", "log_hyperparams", "log_graph", "save", "finalize", "after_save_checkpoint")


def guard_logger(logger: Logger) -> Logger:
    """Make ``logger`` warn once and then do nothing, instead of raising; returns the same object."""
    if not getattr(logger, "_litdistill_guarded", False):
        logger.__class__ = _guarded_class(type(logger))
    return logger


def logger_failed(logger: Logger) -> bool:
    """Whether a guarded ``logger`` has failed and is switched off: its run, if any, must not be touched again."""
    return bool(getattr(logger, "_litdistill_failed", False))


@functools.cache
def _guarded_class(cls: type[Logger]) -> type[Logger]:
    """``cls`` with its ``experiment`` and ``GUARDED`` methods guarded (one subclass per logger class)."""
    members: dict[str, Any] = {
        name: _guarded_method(name, getattr(cls, name)) for name in GUARDED if callable(getattr(cls, name, None))
    }
    experiment = getattr(cls, "experiment", None)
    if isinstance(experiment, property):
        members["experiment"] = property(_guarded_experiment(experiment.fget))
    return type(
        cls.__name__,
        (cls,),
        {
            **members,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_litdistill_guarded": True,
            "_litdistill_failed": False,
        },
    )


def _guarded_method(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` that, once its logger has failed (anywhere), does nothing."""

    @functools.wraps(method)
    def call(self: Logger, *args: Any, **kwargs: Any) -> Any:
        if self._litdistill_failed:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any logger failure, by design
            _switch_off(self, name, error)
            return None

    return call


def _guarded_experiment(get: Callable[[Logger], Any]) -> Callable[[Logger], Any]:
    """The ``experiment`` getter that, once its logger has failed, hands out an object that ignores every call."""

    @functools.wraps(get)
    def experiment(self: Logger) -> Any:
        if self._litdistill_failed:
            return _DummyExperiment()
        try:
            return get(self)
        except Exception as error:  # noqa: BLE001 - any logger failure, by design
            _switch_off(self, "experiment", error)
            return _DummyExperiment()

    return experiment


def _switch_off(logger: Logger, name: str, error: Exception) -> None:
    """The one report of a logger's failure; from now on it is a no-op."""
    logger._litdistill_failed = True
    kind = type(logger).__name__
    log.warning(
        "logger %s.%s failed (%s: %s); %s is switched off for the rest of this run, training continues without it",
        kind,
        name,
        type(error).__name__,
        error,
        kind,
    )
