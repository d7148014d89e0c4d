"""Every benchmark in one command; JSON under bench/results/ and the generated table in BENCHMARKS.md.

    python -m bench              # full: about an hour on 2 CPU cores (empty cache)
    python -m bench --quick      # a few minutes: fewer steps, repetitions and test sentences
    python -m bench --smoke      # under a minute: tiny sizes, checks the plumbing (CI)
    python -m bench --render     # rebuild BENCHMARKS.md from the JSON already in bench/results/

Sections, in order: ``default_run`` (the README's `litdistill` on a fresh cache), ``step_time`` (litdistill vs
hand-written loop vs TRL), ``loss_memory`` (plain vs
chunked vs fused loss), ``cache_speed`` (teacher cache), ``ade_quality`` (real data), ``inference``
(exported student on CPU; it times the ADE student of the same run when there is one). A section
whose module is missing is reported as not run; a section that fails is reported with its error and
the others still run (the exit status is then 1).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, log, machine_info, result_path, write_json
from bench.markdown import render, update_file

ORDER = ["default_run", "step_time", "loss_memory", "cache_speed", "ade_quality", "inference"]
OURS = {"step_time", "ade_quality", "inference"}  # written for this runner; the others are called through main(argv)
INTRO = ROOT / "bench" / "INTRO.md"


def _external_argv(module: Any, mode: str, out: Path | None) -> list[str]:
    """argv for a benchmark that exposes ``main(argv)``: its own --quick/--smoke, and --out where it takes one."""
    source = inspect.getsource(module)
    argv: list[str] = []
    if mode == "smoke":
        argv = ["--smoke"] if '"--smoke"' in source else ["--quick"]
        if '"--smoke"' not in source:  # shrink further where the benchmark lets us
            for flag, value in (("--tokens", "128"), ("--vocab", "2048"), ("--hidden", "32"), ("--reps", "1")):
                if f'"{flag}"' in source:
                    argv += [flag, value]
    elif mode == "quick":
        argv = ["--quick"]
    if out is not None and '"--out"' in source:
        argv += ["--out", str(out)]
    return argv


def run_section(
    name: str, mode: str, results_dir: Path, work: Path, state: dict[str, Any], threads: int
) -> dict[str, Any]:
    cmd_suffix = "" if mode == "full" else f" --{mode}"
    info: dict[str, Any] = {"command": f"python -m bench.{name}{cmd_suffix}"}
    if importlib.util.find_spec(f"bench.{name}") is None:
        return {**info, "status": "not run", "reason": f"bench/{name}.py is not in this checkout"}
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        if name == "step_time":
            result = module.run(mode, threads=threads, results_dir=results_dir)
        elif name == "ade_quality":
            result = module.run(mode, results_dir=results_dir, work_dir=work)
            state["ade"] = result
        elif name == "inference":
            ade = state.get("ade")
            main_run = (ade or {}).get("runs", {}).get("main", {})
            if main_run.get("teacher_dir") and Path(main_run.get("student_dir", "")).is_dir():
                result = module.run(
                    mode,
                    results_dir=results_dir,
                    teacher_dir=main_run["teacher_dir"],
                    student_dir=main_run["student_dir"],
                    source="the ADE teacher and distilled student of section 4 (student layers "
                    f"{ade['sizes']['layers']})",
                )
            else:
                result = module.run(mode, results_dir=results_dir)
        else:
            default_out = result_path(name, mode)
            out = result_path(name, mode, results_dir) if results_dir != RESULTS or mode == "smoke" else None
            argv = _external_argv(module, mode, out)
            shown = [a for i, a in enumerate(argv) if not (a == "--out" or (i and argv[i - 1] == "--out"))]
            info["command"] = " ".join([f"python -m bench.{name}", *shown])
            returned = module.main(argv)
            path = out if out is not None and out.is_file() else default_out
            result = (
                returned if isinstance(returned, dict) else (json.loads(path.read_text()) if path.is_file() else None)
            )
            if result is None:
                raise RuntimeError(f"bench.{name}.main returned nothing and {path} does not exist")
            for fn_name in ("markdown", "to_markdown"):
                fn = getattr(module, fn_name, None)
                if callable(fn):
                    with contextlib.suppress(Exception):
                        info["markdown"] = fn(result)
                    break
        info.update(status="ok", result=result)
    except Exception as exc:  # noqa: BLE001  (reported in the summary and the markdown)
        info.update(status="failed", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}")
        log(f"section {name} FAILED: {exc}")
    info["wall_s"] = time.perf_counter() - start
    return info


def collect_targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for name in ORDER:
        info = sections.get(name, {})
        result = info.get("result") or {}
        for t in result.get("targets", []) if isinstance(result, dict) else []:
            targets.append({"section": name, **t})
    return targets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a few minutes")
    g.add_argument("--smoke", action="store_true", help="under a minute, tiny sizes (CI)")
    p.add_argument(
        "--render", action="store_true", help="only rebuild the markdown from bench/results/bench[_mode].json"
    )
    p.add_argument("--only", default=None, help=f"comma-separated subset of {ORDER}")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the step-time runs")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    summary_path = result_path("bench", mode, args.results_dir)

    if args.render:
        summary = json.loads(summary_path.read_text())
    else:
        only = [s for s in (args.only.split(",") if args.only else ORDER) if s]
        unknown = set(only) - set(ORDER)
        if unknown:
            p.error(f"unknown sections {sorted(unknown)}; valid: {ORDER}")
        start = time.perf_counter()
        sections: dict[str, Any] = {}
        state: dict[str, Any] = {}
        earlier = json.loads(summary_path.read_text()) if args.only and summary_path.is_file() else None
        if earlier and "ade_quality" not in only and "inference" in only:  # inference reuses section 4's models
            state["ade"] = earlier["sections"].get("ade_quality", {}).get("result")
        with tempfile.TemporaryDirectory(prefix="litdistill-bench-") as tmp:
            for name in ORDER:
                if name not in only:  # a section not rerun keeps its last result of this mode
                    kept = (earlier or {}).get("sections", {}).get(name)
                    sections[name] = kept or {"status": "not run", "reason": "not requested (--only)"}
                    continue
                log(f"=== {name} ({mode}) ===")
                sections[name] = run_section(name, mode, args.results_dir, Path(tmp), state, args.threads)
                log(f"=== {name}: {sections[name]['status']} in {sections[name]['wall_s']:.0f} s ===")
        flag = "" if mode == "full" else f" --{mode}"
        commands = [f"python -m bench{flag}   # everything below, then this file"]
        commands += [sections[n]["command"] for n in ORDER if sections[n].get("command")]
        wall = time.perf_counter() - start
        if earlier:
            wall += sum(s.get("wall_s", 0.0) for n, s in sections.items() if n not in only)
        summary = {
            "mode": mode,
            "machine": machine_info(),
            "wall_s": wall,
            "rerun": only if earlier else None,
            "commands": commands,
            "sections": sections,
            "targets": collect_targets(sections),
        }
        write_json(summary_path, summary)
    generated = render(summary)
    intro = INTRO.read_text() if INTRO.is_file() else "# Benchmarks\n"
    update_file(args.markdown, generated, intro)
    log(f"wrote {summary_path} and {args.markdown}")
    for t in summary["targets"]:
        log(
            f"target [{t['section']}] {t['target']}: {t.get('measured')} -> "
            f"{'met' if t.get('met') else 'MISSED' if t.get('met') is False else 'n/a'}"
        )
    failed = [n for n, s in summary["sections"].items() if s.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
