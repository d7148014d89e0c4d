"""``resume=true`` continues a run only with the settings it was started with, checked before Hydra runs.

Hydra writes the job's record (``<run_dir>/.hydra/``) and the logger opens a new version as soon as
the job starts, so a resume with other settings, or into another run's directory, is refused here,
before anything is touched: the run's recorded overrides and the new ones are composed into two
configs and compared key by key. Changes a user means to make (more epochs, say) are allowed by name:
``resume_allow=[trainer.max_epochs]``. A ``run_dir`` that does not exist is never created by
``resume=true`` (``resume=auto``, a requeued job's first start, may create it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from litdistill.core.conf import config_dir

# keys that may differ between the start and a resume of one run
ALWAYS_ALLOWED = ("resume", "resume_allow", "ckpt_path")


def _value(argv: list[str], key: str) -> str | None:
    found = [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].lstrip("+") == key]
    return found[-1] if found else None


def check_resume(argv: list[str]) -> None:
    """Exit (status 2, nothing written) when ``resume=true|auto`` would continue ``hydra.run.dir`` with
    settings other than its recorded ones, or when ``resume=true`` names a directory that does not exist."""
    resume, run_dir = _value(argv, "resume"), _value(argv, "hydra.run.dir")
    if str(resume).lower() not in ("true", "auto") or run_dir is None or "LOCAL_RANK" in os.environ:
        return
    if "-m" in argv or "--multirun" in argv:
        return
    run = Path(run_dir.strip("'\""))
    if not run.is_dir():
        if str(resume).lower() == "true":
            _refuse(
                f"resume=true, but run_dir={run} does not exist; resume continues a run in its own directory "
                "(check the path, or drop resume=true to start a new run there)"
            )
        return
    record = run / ".hydra" / "overrides.yaml"
    if not record.is_file():
        return  # no record to compare with (hydra.output_subdir=null): nothing to check against
    recorded = [o for o in yaml.safe_load(record.read_text(encoding="utf-8")) or [] if not _is_launch(o)]
    given = [o for o in argv if not _is_launch(o) and not o.startswith("-")]
    allowed = (*ALWAYS_ALLOWED, *_allowed(given))
    differences = [
        (key, old, new)
        for key, old, new in _differences(_composed(recorded), _composed(given))
        if not any(key == a or key.startswith(f"{a}.") for a in allowed)
    ]
    if differences:
        shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in differences[:12])
        keys = ",".join(sorted({key for key, _, _ in differences}))
        _refuse(
            f"resume into {run}: the settings differ from the run's record ({record}): {shown}. Resume with the "
            f"overrides the run was started with, or allow the changes by name: resume_allow=[{keys}]"
        )


def _is_launch(override: str) -> bool:
    return override.split("=", 1)[0].lstrip("+~").startswith(("hydra.", "hydra/"))


def _allowed(argv: list[str]) -> list[str]:
    value = _value(argv, "resume_allow")
    return [k.strip() for k in value.strip("[]").split(",") if k.strip()] if value else []


def _composed(overrides: list[str]) -> dict[str, Any]:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return OmegaConf.to_container(compose("train", overrides=overrides), resolve=False)
    finally:
        GlobalHydra.instance().clear()


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in [*old, *(k for k in new if k not in old)]:
            out += _differences(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _refuse(message: str) -> None:
    print(f"litdistill: refused, nothing was run or written: {message}", file=sys.stderr)
    sys.exit(2)
