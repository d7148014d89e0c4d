"""A leaderboard across runs: which distilled student to deploy.

``litdistill rank DIR...`` (and the end of every multirun) reads each run's ``report.json`` and resolved
config under the folders given (run folders, multirun folders, W&B run folders with ``files/report.json``),
and ranks the students on quality, speed and size:

- the config keys whose values differ between the runs are the leaderboard's first columns;
- the task metric comes with its bootstrap 95% interval when the run trained several seeds
  (``report.seeds``, from ``predictions.csv``);
- ``rank.by`` picks the column to sort by (best first); ``rank.max_latency_ms`` and the other limits in
  :data:`LIMITS` set runs that break them apart, below the ranked ones, with the reason;
- a run is on the Pareto front of quality against latency (or size) when no other run is at least as
  good on both and better on one. The PNG draws both fronts.

Energy per example needs hardware counters (RAPL, NVML); none is read here, so there is no energy column,
rather than an estimate.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from litdistill.core.io import atomic_write_text
from litdistill.reporting.intervals import METRICS, bootstrap_interval
from litdistill.reporting.plots import agg_figure
from litdistill.reporting.report import cell

BOARD_MD, BOARD_CSV, BOARD_PNG = "leaderboard.md", "leaderboard.csv", "leaderboard.png"
CONFIG_FILES = ("config.yaml", "litdistill_config.yaml")  # a run folder's; a W&B run folder's files/
IGNORED_PREFIXES = ("paths.", "hydra.", "logger.")  # where a run writes, not what it trains
# column -> (title, higher is better)
MEASURES: dict[str, tuple[str, bool]] = {
    "retained_pct": ("% of teacher", True),
    "speedup": ("speed-up (b=1)", True),
    "latency_ms": ("latency ms (b=1)", False),
    "params_m": ("params (M)", False),
    "disk_mb": ("on disk (MB)", False),
}
# rank.<limit>=value: the column it bounds, and whether the value is a maximum
LIMITS: dict[str, tuple[str, bool]] = {
    "max_latency_ms": ("latency_ms", True),
    "max_disk_mb": ("disk_mb", True),
    "max_params_m": ("params_m", True),
    "min_retained_pct": ("retained_pct", False),
    "min_speedup": ("speedup", False),
}


@dataclass
class Run:
    """One run's student: where it is, what was set, what it measured."""

    path: Path
    settings: dict[str, Any]  # the flattened resolved config
    values: dict[str, float | None]  # metric and measures
    interval: tuple[float, float] | None = None  # the metric's 95% interval, over seeds and test rows
    seeds: int = 1
    excluded: str | None = None  # why a limit set it apart
    pareto: list[str] = field(default_factory=list)  # "latency", "size": the fronts it is on


@dataclass
class Leaderboard:
    metric: str
    by: str
    keys: list[str]  # the settings that differ between runs
    ranked: list[Run]
    excluded: list[Run]
    limits: dict[str, float]
    root: Path  # runs are named by their path below it


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"loss.kd.temperature": 2.0, ...}``; lists are values."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def find_runs(dirs: Iterable[str | Path]) -> list[Path]:
    """Every folder under ``dirs`` holding a ``report.json`` (a run's, or a W&B run's ``files/``)."""
    found: dict[Path, None] = {}
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise FileNotFoundError(f"rank: {str(d)!r} is not a folder; give run, multirun or W&B run folders")
        for report in sorted(root.rglob("report.json")):
            found[report.parent.resolve()] = None
    return list(found)


def read_run(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, flattened config) of a run folder."""
    report = json.loads((path / "report.json").read_text(encoding="utf-8"))
    config_file = next((path / name for name in CONFIG_FILES if (path / name).is_file()), None)
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file else {}
    return report, flatten(config or {})


def seed_interval(path: Path, metric: str, num_labels: int) -> tuple[float, tuple[float, float], int] | None:
    """The student's metric over its seeds (``student``, ``student_seed43``... in predictions.csv): the mean,
    its 95% interval and the number of seeds; None for a run of one seed."""
    table = path / "predictions.csv"
    if metric not in METRICS or not table.is_file():
        return None
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in (rows[0] if rows else {}) if c == "student" or c.startswith("student_seed")]
    if len(columns) < 2:
        return None
    preds = torch.tensor([[int(r[c]) for r in rows] for c in columns])  # [S, N]
    labels = torch.tensor([int(r["label"]) for r in rows])
    mean, interval = bootstrap_interval(preds, labels, metric, num_labels)
    return mean, interval, len(columns)


def load_runs(paths: list[Path]) -> tuple[list[Run], str]:
    """The runs' students, and the metric they share (the reports' ``metric``)."""
    runs, metrics = [], set()
    for path in paths:
        report, settings = read_run(path)
        metric = report.get("metric", "f1")
        metrics.add(metric)
        student = (report.get("models") or {}).get("student") or {}
        values: dict[str, float | None] = {metric: (student.get("metrics") or {}).get(metric)}
        values.update({"retained_pct": report.get("retained_pct"), "speedup": report.get("speedup")})
        values.update({key: student.get(key) for key in ("latency_ms", "params_m", "disk_mb")})
        run = Run(path, settings, values)
        seeds = seed_interval(path, metric, int(settings.get("data.num_labels") or 2))
        if seeds is not None:  # the mean over the seeds, with its interval
            values[metric], run.interval, run.seeds = seeds
        runs.append(run)
    if len(metrics) > 1:
        raise ValueError(f"rank: the runs report different metrics {sorted(metrics)}; rank runs of one task")
    return runs, metrics.pop() if metrics else "f1"


def differing_keys(runs: list[Run]) -> list[str]:
    """The settings whose values differ between the runs; where a run writes (``paths.*``, a value naming
    the run's own folder) is left out."""

    def own_folder(run: Run, value: Any) -> bool:
        return isinstance(value, str) and str(run.path) in str(Path(value).resolve())

    keys = sorted({k for run in runs for k in run.settings if not k.startswith(IGNORED_PREFIXES)})
    keys = [k for k in keys if not any(own_folder(run, run.settings.get(k)) for run in runs)]
    return [k for k in keys if len({json.dumps(run.settings.get(k), default=str) for run in runs}) > 1]


def higher_is_better(column: str, metric: str) -> bool:
    if column == metric or column in METRICS:
        return True
    return MEASURES[column][1]


RANKABLE = [*METRICS, "perplexity", *MEASURES]


def check_rank_options(by: str | None, limits: dict[str, float]) -> None:
    """``rank.by`` and the limits, checked before any run is read."""
    valid = RANKABLE
    if by is not None and by not in valid:
        raise ValueError(f"rank.by={by!r} is not a leaderboard column; valid: {valid}")
    for key, value in limits.items():
        if key not in LIMITS:
            raise ValueError(f"rank.{key}={value!r} is not a limit; valid: {['rank.' + k for k in LIMITS]}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"rank.{key}={value!r} must be a number")


def dominated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` (quality, cost) is dominated by ``b``: ``b`` at least as good on both, better on one."""
    return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])


def pareto_front(points: dict[int, tuple[float, float]]) -> set[int]:
    """The indices of the non-dominated (quality up, cost down) points."""
    return {i for i, p in points.items() if not any(dominated(p, q) for j, q in points.items() if j != i)}


def build_leaderboard(
    runs: list[Run], metric: str, root: Path, by: str | None = None, limits: dict[str, float] | None = None
) -> Leaderboard:
    by, limits = by or metric, dict(limits or {})
    check_rank_options(by, limits)
    if by not in MEASURES and by != metric:
        raise ValueError(f"rank.by={by!r}: these runs report {metric!r}; valid: {[metric, *MEASURES]}")
    for run in runs:
        broken = []
        for key, bound in limits.items():
            column, is_max = LIMITS[key]
            value = run.values.get(column)
            if value is None or (value > bound if is_max else value < bound):
                broken.append(f"{column} {'-' if value is None else f'{value:.4g}'} {'>' if is_max else '<'} {bound:g}")
        run.excluded = "; ".join(broken) or None
    for cost, name in (("latency_ms", "latency"), ("disk_mb", "size")):
        points = {
            i: (run.values[metric], run.values[cost])
            for i, run in enumerate(runs)
            if run.values.get(metric) is not None and run.values.get(cost) is not None
        }
        for i in pareto_front(points):
            runs[i].pareto.append(name)
    sign = -1.0 if higher_is_better(by, metric) else 1.0

    def order(run: Run) -> tuple[bool, float, float, float]:
        """By ``by``; ties by the faster, then the smaller student."""
        value = run.values.get(by)
        latency, size = run.values.get("latency_ms"), run.values.get("disk_mb")
        return (
            value is None,
            sign * value if value is not None else 0.0,
            latency if latency is not None else math.inf,
            size if size is not None else math.inf,
        )

    ranked = sorted((r for r in runs if r.excluded is None), key=order)
    excluded = sorted((r for r in runs if r.excluded is not None), key=order)
    return Leaderboard(metric, by, differing_keys(runs), ranked, excluded, limits, root)


def table_rows(board: Leaderboard) -> tuple[list[str], list[list[Any]]]:
    """Header and rows (ranked, then set apart), values unformatted."""
    metric = [board.metric, "ci95_low", "ci95_high", "seeds"]
    header = ["rank", "run", *board.keys, *metric, *MEASURES, "pareto", "excluded"]
    rows = []
    for place, run in enumerate([*board.ranked, *board.excluded], start=1):
        low, high = run.interval or (None, None)
        rows.append(
            [
                place if run.excluded is None else "-",
                _relative(run.path, board.root),
                *(run.settings.get(k) for k in board.keys),
                run.values.get(board.metric),
                low,
                high,
                run.seeds,
                *(run.values.get(k) for k in MEASURES),
                "+".join(run.pareto),
                run.excluded or "",
            ]
        )
    return header, rows


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def to_markdown(board: Leaderboard) -> str:
    header, rows = table_rows(board)
    metric_at = header.index(board.metric)
    titles = [MEASURES[h][0] if h in MEASURES else h for h in header]
    # the metric and its interval in one cell
    shown = [*titles[:metric_at], f"{board.metric} [95% CI]", *titles[metric_at + 4 :]]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        metric, low, high, seeds = row[metric_at : metric_at + 4]
        shown_metric = cell(metric) + (f" [{low:.4f}, {high:.4f}] ({seeds} seeds)" if low is not None else "")
        cells = [cell(v) for v in row[:metric_at]] + [shown_metric] + [cell(v) for v in row[metric_at + 4 :]]
        lines.append("| " + " | ".join(cells) + " |")
    order = "highest" if higher_is_better(board.by, board.metric) else "lowest"
    notes = [
        f"Ranked by {board.by}, {order} first (ties: the faster, then the smaller); "
        f"{len(board.ranked)} of {len(rows)} runs ranked."
    ]
    if board.limits:
        notes.append("Limits: " + ", ".join(f"rank.{k}={v:g}" for k, v in board.limits.items()) + ".")
    notes.append(
        "pareto: on the front of the student's "
        f"{board.metric} against its CPU latency (latency) or its size on disk (size): no other run is at "
        "least as good on both and better on one. Intervals: bootstrap over test rows and seeds "
        "(runs with report.seeds > 1)."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_leaderboard(board: Leaderboard, out_dir: Path) -> dict[str, Path]:
    """leaderboard.md, leaderboard.csv and leaderboard.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = table_rows(board)
    lines = [",".join(header)] + [",".join(_csv_cell(v) for v in row) for row in rows]
    files = {
        "markdown": atomic_write_text(out_dir / BOARD_MD, "# litdistill leaderboard\n\n" + to_markdown(board)),
        "csv": atomic_write_text(out_dir / BOARD_CSV, "\n".join(lines) + "\n"),
    }
    png = plot_fronts(board, out_dir / BOARD_PNG)
    if png is not None:
        files["png"] = png
    return files


def _csv_cell(value: Any) -> str:
    text = "" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def plot_fronts(board: Leaderboard, out_png: Path) -> Path | None:
    """Quality against latency and against size, every run a point, each Pareto front a line."""
    runs = [*board.ranked, *board.excluded]
    panels = [(cost, name) for cost, name in (("latency_ms", "latency"), ("disk_mb", "size")) if _has(runs, cost)]
    if not panels or not _has(runs, board.metric):
        return None
    fig = agg_figure(5.5 * len(panels), 4.2)
    for i, (cost, name) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        points = [(r.values[cost], r.values[board.metric], r) for r in runs if r.values.get(cost) is not None]
        for x, y, run in points:
            ax.scatter(x, y, color="#dd8452" if name in run.pareto else "#8c8c8c", zorder=3)
            ax.annotate(_relative(run.path, board.root), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((x, y) for x, y, run in points if name in run.pareto)
        ax.plot([x for x, _ in front], [y for _, y in front], color="#dd8452", lw=1.5, label="Pareto front")
        ax.set_xlabel(MEASURES[cost][0])
        ax.set_ylabel(f"student {board.metric}")
        ax.set_title(f"{board.metric} against {name}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png


def _has(runs: list[Run], column: str) -> bool:
    return any(r.values.get(column) is not None for r in runs)


def rank(
    dirs: list[str | Path], by: str | None = None, limits: dict[str, float] | None = None, out_dir: Path | None = None
) -> tuple[Leaderboard, dict[str, Path]]:
    """Find, read and rank the runs under ``dirs``; write the leaderboard to ``out_dir`` (default: the
    first folder). Refuses bad options before reading anything."""
    check_rank_options(by, dict(limits or {}))
    paths = find_runs(dirs)
    if not paths:
        raise FileNotFoundError(f"rank: no report.json under {[str(d) for d in dirs]}; has any run finished?")
    runs, metric = load_runs(paths)
    root = Path(dirs[0]).resolve() if len(dirs) == 1 else Path.cwd().resolve()
    board = build_leaderboard(runs, metric, root, by, limits)
    return board, write_leaderboard(board, Path(out_dir or dirs[0]))
