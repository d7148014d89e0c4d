"""W&B sweep files (``conf/sweep/*.yaml``): validate, draw suggestions, render overrides.

The sweep files are W&B sweep configs, not Hydra configs. Their parameters are flat dotted Hydra keys
(``loss.kd.temperature``) and their command is ``[${env}, ${interpreter}, -m, litdistill,
${args_no_hyphens}]``, so the W&B agent runs ``python -m litdistill key=value ...`` and Hydra applies
each suggestion as overrides on top of the config defaults.

Suggestions come from W&B's own ``sweeps`` package when it is installed and works (the agent's
server-side logic), else from a small equivalent here: the full grid for ``grid``, independent
draws from each parameter's distribution for ``random``, and for ``bayes`` (which needs finished
runs to model) random draws too. Offline preview::

    python -m litdistill.cli.sweeping conf/sweep/kd_temperature.yaml -n 4
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

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
    from litdistill.core.conf import config_dir

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
    except Exception:  # noqa: BLE001 - any import failure means "use the fallback"
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


def validate_sweep(sweep: dict[str, Any], check_command: bool = True, use_package: bool = True) -> list[str]:
    """Problems with a sweep config (empty when valid): method, metric, parameters, command; plus
    W&B's own schema check when the ``sweeps`` package is importable and ``use_package``."""
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
    package = _sweeps_package() if use_package else None
    if package is not None and not problems:
        problems += [str(v) for v in package.schema_violations_from_proposed_config(sweep)]
    return problems


# ---- suggestions ---------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """numpy scalars to Python (``str`` of them must read as plain numbers on the command line)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def _draw(spec: dict[str, Any], rng: random.Random) -> Any:
    dist = _distribution(spec)
    lo, hi = spec.get("min"), spec.get("max")
    q = spec.get("q", 1)
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        weights = spec.get("probabilities")
        return rng.choices(spec["values"], weights=weights)[0]
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist in ("uniform", "q_uniform"):
        value = rng.uniform(lo, hi)
    elif dist in ("log_uniform", "q_log_uniform"):  # min/max are natural logs of the bounds
        value = math.exp(rng.uniform(lo, hi))
    elif dist in ("log_uniform_values", "q_log_uniform_values"):
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    elif dist == "inv_log_uniform":
        value = math.exp(-rng.uniform(lo, hi))
    elif dist == "inv_log_uniform_values":
        value = 1.0 / math.exp(rng.uniform(math.log(1.0 / hi), math.log(1.0 / lo)))
    elif dist in ("normal", "q_normal"):
        value = rng.gauss(spec.get("mu", 0.0), spec.get("sigma", 1.0))
    elif dist in ("log_normal", "q_log_normal"):
        value = math.exp(rng.gauss(spec.get("mu", 0.0), spec.get("sigma", 1.0)))
    elif dist in ("beta", "q_beta"):
        value = rng.betavariate(spec.get("a", 1.0), spec.get("b", 1.0))
    else:  # pragma: no cover - validate_sweep refuses it first
        raise ValueError(f"unknown distribution {dist!r}")
    if dist.startswith("q_"):
        value = round(value / q) * q
    return value


def grid(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a grid sweep's values, in W&B's order (last parameter varies fastest)."""
    keys = list(sweep["parameters"])
    choices = []
    for key in keys:
        spec = sweep["parameters"][key]
        dist = _distribution(spec)
        if dist == "constant":
            choices.append([spec["value"]])
        elif dist == "categorical":
            choices.append(list(spec["values"]))
        elif "q" in spec:  # a quantised range is a finite grid
            n = int(round((spec["max"] - spec["min"]) / spec["q"]))
            choices.append([spec["min"] + i * spec["q"] for i in range(n + 1)])
        else:
            raise ValueError(f"parameter {key}: a grid sweep needs value/values, not a continuous {dist}")
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


def _suggest_builtin(sweep: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    if sweep["method"] == "grid":
        return grid(sweep)[:n]
    rng = random.Random(seed)
    return [{key: _draw(spec, rng) for key, spec in sweep["parameters"].items()} for _ in range(n)]


def _suggest_package(package: Any, sweep: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    import numpy as np

    state = np.random.get_state()
    np.random.seed(seed)
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
    return out


def suggest(sweep: dict[str, Any], n: int = 1, seed: int = 0, backend: str = "auto") -> list[dict[str, Any]]:
    """Up to ``n`` parameter suggestions (``{hydra key: value}``) as the W&B agent would receive them.

    ``backend``: ``"sweeps"`` (W&B's package), ``"builtin"`` (the fallback here), ``"auto"`` (the
    package when it imports, else the fallback).
    """
    problems = validate_sweep(sweep, check_command=False, use_package=backend != "builtin")
    if problems:
        raise ValueError("invalid sweep: " + "; ".join(problems))
    package = _sweeps_package() if backend in ("auto", "sweeps") else None
    if backend == "sweeps" and package is None:
        raise ImportError("the sweeps package is not importable; use backend='builtin'")
    if package is not None:
        return _suggest_package(package, sweep, n, seed)
    return _suggest_builtin(sweep, n, seed)


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
    parser.add_argument("--backend", choices=("auto", "sweeps", "builtin"), default="auto")
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        sweep = load_sweep(path)
        problems = validate_sweep(sweep)
        if problems:
            failed = True
            print(f"{path}: INVALID\n  " + "\n  ".join(problems))
            continue
        print(
            f"{path}: {sweep['method']} sweep on {sweep['metric']['name']} ({sweep['metric'].get('goal', 'minimize')})"
        )
        for params in suggest(sweep, args.n, args.seed, args.backend):
            print("  litdistill " + " ".join(render_overrides(params)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
