"""Shared helpers of the benchmarks: machine and versions, JSON results, peak-memory probes, workers.

Peak memory on CPU: a benchmark variant runs in a fresh process (``run_worker``). After its imports,
models and data exist, the process resets the kernel's peak-RSS counter (``VmHWM``, by writing ``5``
to ``/proc/self/clear_refs``) and records ``VmRSS``; after training it reads ``VmHWM`` again.
"Added peak" = ``VmHWM - VmRSS(before)``: what training adds on top of the models and data, including
the framework's own objects, optimizer state, activations, logits and gradients. Where
``clear_refs`` is not writable the fallback is ``ru_maxrss`` minus the same baseline (an upper bound
that is exact when training is the process's high-water mark, which it is here: models and data are
built without large temporaries).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MiB = 1024 * 1024
MODES = ("smoke", "quick", "full")


# ---- results ---------------------------------------------------------------------------------------
def result_path(name: str, mode: str, results_dir: Path | None = None) -> Path:
    """``bench/results/<name>.json`` (full), ``<name>_quick.json`` or ``<name>_smoke.json``."""
    suffix = "" if mode == "full" else f"_{mode}"
    return Path(results_dir or RESULTS) / f"{name}{suffix}.json"


def write_json(path: Path, data: Any) -> Path:
    from litdistill.core.io import atomic_write_text

    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


# ---- machine and versions --------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS, load, and the versions the numbers were taken with."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "ram_gib": ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_avg_1_5_15": list(load) if load else None,
        "versions": {
            name: _version(dist)
            for name, dist in (
                ("torch", "torch"),
                ("lightning", "lightning"),
                ("transformers", "transformers"),
                ("trl", "trl"),
                ("litdistill", "litdistill"),
                ("onnxruntime", "onnxruntime"),
            )
        },
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---- memory probes ---------------------------------------------------------------------------------
def status_mib(key: str) -> float | None:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak RSS added by a block of code in this process (see the module docstring)."""

    def __init__(self) -> None:
        self.before = self.peak = None
        self.method = None

    def start(self) -> PeakMemory:
        import gc

        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "ru_maxrss"
        self.before = status_mib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self

    def stop(self) -> dict[str, float | str]:
        if self.method == "VmHWM after clear_refs":
            peak = status_mib("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.peak = peak
        return {
            "rss_before_mib": self.before,
            "peak_rss_mib": peak,
            "added_peak_mib": peak - self.before,
            "memory_method": self.method,
        }


# ---- workers in fresh processes --------------------------------------------------------------------
def run_worker(module: str, spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """``python -m <module> --worker '<json spec>'`` in a fresh interpreter; returns its last JSON line."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {module} {spec.get('variant')} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def quiet() -> None:
    """Silence the libraries' progress bars, warnings and info logs in benchmark processes."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    warnings.filterwarnings("ignore")
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "pytorch_lightning",
        "transformers",
        "trl",
        "accelerate",
        "datasets",
        "litdistill",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
