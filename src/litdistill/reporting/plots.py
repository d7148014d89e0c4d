"""Report pictures, saved as PNG beside report.md: loss terms, the student's and the baseline's training
and validation curves with agreement over training, and teacher/student/baseline bars.

Drawn with matplotlib's object API on the Agg canvas, so no display is needed and the pyplot
backend of a notebook or script using litdistill is left alone.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

LOSS_CURVES = "loss_curves.png"
TRAINING_CURVES = "training_curves.png"
COMPARISON = "comparison.png"
BASELINE_LOG = "csv_baseline"  # the baseline's CSVLogger folder in the run directory
_LOSS_COLUMN = re.compile(r"^train/loss(?:/(?P<term>[^/]+?))?(?P<suffix>_step|_epoch)?$")
_SUFFIX_PRIORITY = {"_step": 0, "": 1, "_epoch": 2}  # step values, else unsuffixed, else epoch means
MODEL_COLORS = {"teacher": "#4c72b0", "student": "#dd8452", "baseline": "#8c8c8c", "onnx": "#55a868", "int8": "#c44e52"}


def agg_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def read_loss_curves(metrics_csv: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``{term: [(step, value), ...]}`` for ``train/loss`` and each ``train/loss/<term>`` of a
    Lightning CSVLogger ``metrics.csv`` (step-level values preferred over epoch means)."""
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    candidates: dict[str, list[tuple[int, str]]] = {}
    for column in rows[0]:
        match = _LOSS_COLUMN.match(column)
        if match:
            name = match.group("term") or "total"
            candidates.setdefault(name, []).append((_SUFFIX_PRIORITY[match.group("suffix") or ""], column))
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, options in candidates.items():
        points: list[tuple[float, float]] = []
        for _, column in sorted(options):
            points = _points(rows, column)
            if points:
                break
        if points:
            curves[name] = points
    return curves


def _points(rows: list[dict[str, str]], column: str) -> list[tuple[float, float]]:
    points = []
    for row in rows:
        value, step = row.get(column), row.get("step")
        if value not in (None, "") and step not in (None, ""):
            points.append((float(step), float(value)))
    return points


def plot_loss_curves(metrics_csv: str | Path, out_png: str | Path) -> Path | None:
    """Each loss term (unweighted) and the weighted total against the training step; None without data."""
    curves = read_loss_curves(metrics_csv)
    if not curves:
        return None
    fig = agg_figure(7, 4)
    ax = fig.add_subplot()
    for name, points in sorted(curves.items(), key=lambda kv: (kv[0] != "total", kv[0])):
        steps, values = zip(*points)
        ax.plot(
            steps,
            values,
            marker="." if len(points) < 30 else None,
            linewidth=2.2 if name == "total" else 1.4,
            color="black" if name == "total" else None,
            label=name,
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title("Training losses (terms unweighted, total weighted)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    return Path(out_png)


def _read_rows(metrics_csv: str | Path | None) -> list[dict[str, str]]:
    if metrics_csv is None or not Path(metrics_csv).is_file():
        return []
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _first_points(rows: list[dict[str, str]], *columns: str) -> list[tuple[float, float]]:
    """The points of the first of ``columns`` that has any."""
    for column in columns:
        points = _points(rows, column) if rows and column in rows[0] else []
        if points:
            return points
    return []


def read_training_curves(
    student_csv: str | Path | None, baseline_csv: str | Path | None, metric: str
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{panel: {model: [(step, value), ...]}}`` from the student's and the baseline's ``metrics.csv``:
    the training loss (step values), the validation ``metric`` (the teacher's too) and the student's
    agreement with the teacher. Empty series are left out."""
    student, baseline = _read_rows(student_csv), _read_rows(baseline_csv)
    panels = {
        "training loss": {
            "student": _first_points(student, "train/loss_step", "train/loss"),
            "baseline": _first_points(baseline, "train/loss_step", "train/loss"),
        },
        f"validation {metric}": {
            "teacher": _first_points(student, f"val/teacher/{metric}"),
            "student": _first_points(student, f"val/student/{metric}"),
            "baseline": _first_points(baseline, f"val/student/{metric}"),  # the baseline is its module's student
        },
        "agreement with the teacher (validation)": {"student": _first_points(student, "val/agreement")},
    }
    return {name: {m: p for m, p in series.items() if p} for name, series in panels.items() if any(series.values())}


def plot_training_curves(curves: dict[str, dict[str, list[tuple[float, float]]]], out_png: str | Path) -> Any:
    """One panel per entry of :func:`read_training_curves`, the models in their report colours; returns the
    figure (its lines hold the data drawn)."""
    fig = agg_figure(5 * len(curves), 4)
    for i, (panel, series) in enumerate(curves.items()):
        ax = fig.add_subplot(1, len(curves), i + 1)
        for model, points in series.items():
            steps, values = zip(*points)
            ax.plot(steps, values, marker="." if len(points) < 30 else None, color=MODEL_COLORS[model], label=model)
        ax.set_xlabel("optimizer step")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    return fig


def _bars(ax: Any, values: dict[str, float | None], title: str, ylabel: str) -> None:
    shown = {k: v for k, v in values.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    ax.set_title(title)
    if not shown:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    names = list(shown)
    bars = ax.bar(names, [shown[n] for n in names], color=[MODEL_COLORS.get(n.split()[-1], "#937860") for n in names])
    for bar, name in zip(bars, names):
        ax.annotate(
            f"{shown[name]:.3g}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(axis="y", alpha=0.3)


def plot_comparison(report: dict[str, Any], out_png: str | Path) -> Path:
    """Quality (the report metric), CPU latency at batch 1 and size of teacher, student, baseline,
    plus the exported ONNX / int8 students when the run exported them."""
    models = report.get("models", {})
    metric = report.get("metric", "f1")
    quality = {name: row.get("metrics", {}).get(metric) for name, row in models.items()}
    latency = {name: row.get("latency_ms") for name, row in models.items()}
    size = {name: row.get("size_mb") for name, row in models.items()}
    for fmt, row in ((report.get("exports") or {}).get("formats") or {}).items():
        if fmt == "pytorch":
            continue
        latency[f"student {fmt}"] = row.get("latency_ms")
        size[f"student {fmt}"] = row.get("size_mb")
    fig = agg_figure(12, 4)
    axes = fig.subplots(1, 3)
    _bars(axes[0], quality, f"Quality ({metric}, test split)", metric)
    _bars(axes[1], latency, f"CPU latency, batch 1, {report.get('threads', '?')} threads", "ms / example")
    _bars(axes[2], size, "Size", "MB")
    fig.tight_layout()
    fig.savefig(out_png)
    return Path(out_png)


def csv_metrics_file(trainer: Any) -> Path | None:
    """``metrics.csv`` of the trainer's CSVLogger, if it has one."""
    from lightning.pytorch.loggers import CSVLogger

    for logger in getattr(trainer, "loggers", []) or []:
        if isinstance(logger, CSVLogger):
            path = Path(logger.log_dir) / "metrics.csv"
            if path.is_file():
                return path
    return None


def report_figures(
    report: dict[str, Any], out_dir: str | Path, trainer: Any = None, metrics_csv: str | Path | None = None
) -> dict[str, str]:
    """Write the report's PNGs into ``out_dir``; returns ``{figure: file name}`` for report.md links."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    metrics_csv = metrics_csv or (csv_metrics_file(trainer) if trainer is not None else None)
    if metrics_csv and plot_loss_curves(metrics_csv, out_dir / LOSS_CURVES):
        figures["loss_curves"] = LOSS_CURVES
    curves = read_training_curves(metrics_csv, out_dir / BASELINE_LOG / "metrics.csv", report.get("metric", "f1"))
    if curves:
        plot_training_curves(curves, out_dir / TRAINING_CURVES)
        figures["training_curves"] = TRAINING_CURVES
    if report.get("models"):
        plot_comparison(report, out_dir / COMPARISON)
        figures["comparison"] = COMPARISON
    return figures
