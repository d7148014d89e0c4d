"""W&B sweep files (``conf/sweep/*.yaml``): validate, draw suggestions, render overrides.

The sweep files are W&B sweep configs, not Hydra configs. Their parameters are flat dotted Hydra keys
(``loss.kd.temperature``) and their command is ``[${env}, ${interpreter}, -m, litdistill,
${args_no_hyphens}]``, so the W&B agent runs ``python -m litdistill key=value ...`` and Hydra applies
each suggestion as overrides on top of the config defaults.

Suggestions come from W&B's own ``sweeps`` package (the agent's server-side logic: grid, random,
bayes), so an offline preview draws what an agent would. It pins numpy<2 and works on numpy 2, so it is
installed without its pins: ``pip install --no-deps sweeps==0.3.0`` (``scripts/install.sh --dev``
does). Every swept key is checked against the composed training config, so a misspelt key
(``loss.kd.temprature``) is refused before any agent starts. Offline preview::

    python -m litdistill.cli.sweeping conf/sweep/kd_temperature.yaml -n 4
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml

from litdistill.core.conf import config_dir

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
COMMAND = ["${env}", "${interpreter}", "-m", "litdistill", "${args_no_hyphens}"]
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "q_log_uniform",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "beta",
    "q_beta",
)


def sweeps_dir() -> Path:
    """``conf/sweep/``: W&B sweep files beside the Hydra groups they set (shipped in the wheel too).
    They are W&B's format, not Hydra configs: no primary config lists the ``sweep`` group."""
    return config_dir() / "sweep"


def load_sweep(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        sweep = yaml.safe_load(f)
    if not isinstance(sweep, dict):
        raise ValueError(f"{path}: a sweep file is a mapping with method, metric, parameters")
    return sweep


def _sweeps_package() -> Any | None:
    """W&B's ``sweeps`` package if importable (it pins numpy<2 but works with numpy 2.x here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sweeps
        return sweeps
    except Exception:  # noqa: BLE001 - any import failure: not installed (suggest says how to install it)
        return None


def _distribution(spec: dict[str, Any]) -> str:
    """The distribution W&B infers when a parameter does not name one."""
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "distribution" in spec:
        return spec["distribution"]
    if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int):
        return "int_uniform"
    return "uniform"


def validate_sweep(sweep: dict[str, Any], check_command: bool = True) -> list[str]:
    """Problems with a sweep config (empty when valid): method, metric, parameters, command; plus
    W&B's own schema check when the ``sweeps`` package is importable."""
    problems = []
    if sweep.get("method") not in METHODS:
        problems.append(f"method must be one of {list(METHODS)}, got {sweep.get('method')!r}")
    metric = sweep.get("metric")
    if not isinstance(metric, dict) or not metric.get("name"):
        problems.append("metric needs a name (the logged metric the sweep optimises, e.g. val/student/f1)")
    elif metric.get("goal", "minimize") not in GOALS:
        problems.append(f"metric.goal must be one of {list(GOALS)}, got {metric.get('goal')!r}")
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        problems.append("parameters must map at least one Hydra key to a value/values/distribution")
        params = {}
    for key, spec in params.items():
        if not isinstance(spec, dict):
            problems.append(f"parameter {key}: expected a mapping with value, values or distribution")
            continue
        dist = _distribution(spec)
        if dist not in DISTRIBUTIONS:
            problems.append(f"parameter {key}: unknown distribution {dist!r}")
        elif dist == "categorical" and not (isinstance(spec["values"], list) and spec["values"]):
            problems.append(f"parameter {key}: values must be a non-empty list")
        elif (
            dist not in ("constant", "categorical")
            and not {"min", "max"} <= set(spec)
            and dist not in ("normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta")
        ):
            problems.append(f"parameter {key}: distribution {dist} needs min and max")
        elif "min" in spec and "max" in spec and not spec["min"] < spec["max"]:
            problems.append(f"parameter {key}: min {spec['min']} must be below max {spec['max']}")
        if sweep.get("method") == "grid" and dist not in ("constant", "categorical") and "q" not in spec:
            problems.append(f"parameter {key}: a grid sweep needs value/values, not a continuous {dist}")
    if check_command and sweep.get("command") != COMMAND:
        problems.append(
            f"command must be {COMMAND} (the agent runs litdistill with Hydra overrides), got {sweep.get('command')}"
        )
    package = _sweeps_package()
    if package is not None and not problems:
        problems += [str(v) for v in package.schema_violations_from_proposed_config(sweep)]
    return problems


# ---- suggestions ---------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """numpy scalars to Python (``str`` of them must read as plain numbers on the command line)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def _suggest_package(package: Any, sweep: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    import numpy as np

    state, py_state = np.random.get_state(), random.getstate()  # sweeps draws from both global generators
    np.random.seed(seed)
    random.seed(seed)
    rng = random.Random(seed)
    goal_name = sweep["metric"]["name"]
    runs: list[Any] = []
    out = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(n):
                run = package.next_run(sweep, runs)
                if run is None:  # a finished grid
                    break
                out.append({key: _plain(spec["value"]) for key, spec in run.config.items()})
                run.state = package.RunState.finished
                run.summary_metrics = {goal_name: rng.random()}  # stand-in results, so bayes can propose
                runs.append(run)
    finally:
        np.random.set_state(state)
        random.setstate(py_state)
    return out


def suggest(sweep: dict[str, Any], n: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` parameter suggestions (``{hydra key: value}``) as the W&B agent would receive them,
    from W&B's ``sweeps`` package (seeded: the same ``seed`` gives the same suggestions)."""
    problems = validate_sweep(sweep, check_command=False)
    if problems:
        raise ValueError("invalid sweep: " + "; ".join(problems))
    package = _sweeps_package()
    if package is None:
        raise ImportError(
            "suggestions come from W&B's sweeps package, which is not importable; install it without its "
            "numpy<2 pin: pip install --no-deps sweeps==0.3.0 (scripts/install.sh --dev does)"
        )
    return _suggest_package(package, sweep, n, seed)


def unknown_keys(sweep: dict[str, Any], config: Any, groups: set[str]) -> list[str]:
    """Problems for swept keys that are neither a key of the composed ``config`` (a null value counts as
    present) nor a config group (``logger``, ``loss``: chosen by name)."""
    from omegaconf import OmegaConf

    absent = object()
    problems = []
    for key in sweep.get("parameters") or {}:
        if key in groups or OmegaConf.select(config, key, default=absent) is not absent:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(config, parent) if parent else config
        near = get_close_matches(leaf, list(node.keys()) if OmegaConf.is_dict(node) else [], n=3)
        hint = f"; did you mean {', '.join(f'{parent}.{m}' if parent else m for m in near)}?" if near else ""
        problems.append(f"parameter {key}: not a key of the training config{hint}")
    return problems


def _composed_train_config() -> tuple[Any, set[str]]:
    """The default training config, composed as ``litdistill`` composes it, and the config group names."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        config = compose("train")
    return config, {d.name for d in config_dir().iterdir() if d.is_dir()}


def render_overrides(params: dict[str, Any]) -> list[str]:
    """``${args_no_hyphens}`` of a suggestion: ``key=value`` strings, rendered the way the W&B agent
    renders them (so Hydra sees exactly what an agent run sees)."""
    args = {key: {"value": _plain(value)} for key, value in params.items()}
    try:
        from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

        return list(create_sweep_command_args({"args": args})["args_no_hyphens"])
    except ImportError:
        return [f"{key}={spec['value']}" for key, spec in args.items()]


def sweep_command(sweep: dict[str, Any], params: dict[str, Any], interpreter: str = sys.executable) -> list[str]:
    """The process the agent starts for one suggestion, macros expanded."""
    macros = {"${env}": "/usr/bin/env", "${interpreter}": interpreter, "${program}": str(sweep.get("program", ""))}
    command: list[str] = []
    for part in sweep.get("command", COMMAND):
        if part == "${args_no_hyphens}":
            command += render_overrides(params)
        else:
            command.append(macros.get(part, part))
    return command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m litdistill.cli.sweeping",
        description="Validate W&B sweep files and print suggestions as litdistill overrides.",
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("-n", type=int, default=3, help="suggestions per file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config, groups = _composed_train_config()
    failed = False
    for path in args.files:
        sweep = load_sweep(path)
        problems = validate_sweep(sweep) or unknown_keys(sweep, config, groups)
        if problems:
            failed = True
            print(f"{path}: INVALID\n  " + "\n  ".join(problems))
            continue
        print(
            f"{path}: {sweep['method']} sweep on {sweep['metric']['name']} ({sweep['metric'].get('goal', 'minimize')})"
        )
        for params in suggest(sweep, args.n, args.seed):
            print("  litdistill " + " ".join(render_overrides(params)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
