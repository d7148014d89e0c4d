"""The run report: teacher vs student vs no-KD baseline, as report.json and report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from litdistill.core.io import atomic_write_text
from litdistill.models.multi_teacher import MultiTeacher, teachers_memory
from litdistill.reporting.evaluation import RELIABLE_SPREAD

COLUMNS = [
    ("model", "model"),
    ("params_m", "params (M)"),
    ("size_mb", "in memory (MB)"),
    ("disk_mb", "on disk (MB)"),
    ("latency_ms", "CPU ms/example (b=1)"),
    ("throughput_per_s", "CPU examples/s (b=32)"),
]


def summarize(
    rows: dict[str, dict[str, Any]],
    metric: str,
    agreement: float | None,
    threads: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add the derived comparisons: per row (student, baseline) its retained % of the teacher's metric,
    CPU speed-up and agreement with the teacher; the student's also as the report's headline numbers."""
    report: dict[str, Any] = {"metric": metric, "threads": threads, "models": rows, "agreement": agreement}
    teacher, student = rows.get("teacher"), rows.get("student")
    if student is not None and agreement is not None:
        student["agreement"] = agreement
    for name, row in rows.items():
        if teacher and name != "teacher":
            row.update(versus_teacher(row, teacher, metric))
    if teacher and student:
        report.update({k: student[k] for k in ("retained_pct", "speedup") if k in student})
        if teacher.get("latency_ms") and student.get("latency_ms"):
            report["throughput_ratio"] = student["throughput_per_s"] / teacher["throughput_per_s"]
        if teacher.get("params_m") and student.get("params_m"):  # an LLM known only by its labels has none
            report["compression"] = teacher["params_m"] / student["params_m"]
    baseline = rows.get("baseline")
    if student and baseline and metric in student.get("metrics", {}) and metric in baseline.get("metrics", {}):
        report["student_minus_baseline"] = {
            "metric": metric,
            "difference": student["metrics"][metric] - baseline["metrics"][metric],
            "seeds": 1,
        }
    spreads = {name: row["latency_spread_pct"] for name, row in rows.items() if "latency_spread_pct" in row}
    if spreads:  # the timing's own verdict: a busy machine makes every latency and ratio unreliable
        report["timing_spread_pct"] = max(spreads.values())
        report["timing_reliable"] = max(spreads.values()) <= 100 * RELIABLE_SPREAD
    report.update(extra or {})
    return report


def versus_teacher(row: dict[str, Any], teacher: dict[str, Any], metric: str) -> dict[str, float]:
    """A model's retained % of the teacher's metric and its CPU speed-up over the teacher (b=1)."""
    out: dict[str, float] = {}
    t_metric, r_metric = teacher.get("metrics", {}).get(metric), row.get("metrics", {}).get(metric)
    if t_metric and r_metric is not None:
        out["retained_pct"] = 100.0 * r_metric / t_metric
    if teacher.get("latency_ms") and row.get("latency_ms"):
        out["speedup"] = teacher["latency_ms"] / row["latency_ms"]
    return out


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def to_markdown(report: dict[str, Any]) -> str:
    metric_names = sorted({k for row in report["models"].values() for k in row.get("metrics", {})})
    versus = [
        ("agreement", "agreement w/ teacher"),
        ("retained_pct", f"% of teacher {report['metric']}"),
        ("speedup", "speed-up (b=1)"),
    ]
    header = [title for _, title in COLUMNS] + metric_names + [title for _, title in versus]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in report["models"].items():
        cells = [name] + [cell(row.get(key)) for key, _ in COLUMNS[1:]]
        cells += [cell(row.get("metrics", {}).get(m)) for m in metric_names]
        cells += [cell(row.get(key)) for key, _ in versus]
        lines.append("| " + " | ".join(cells) + " |")
    summary = [
        ("teacher-student agreement", report.get("agreement")),
        (f"retained % of teacher {report['metric']}", report.get("retained_pct")),
        ("CPU speed-up (b=1)", report.get("speedup")),
        ("throughput ratio (b=32)", report.get("throughput_ratio")),
        ("compression (params)", report.get("compression")),
    ]
    lines += ["", f"Threads: {report['threads']}. Metrics on the held-out test split."]
    if report.get("timing_reliable") is False:
        lines += [
            f"- **timings not reliable**: the repetitions of a model spread by {report['timing_spread_pct']:.0f}% "
            f"(interquartile range over median, over {100 * RELIABLE_SPREAD:.0f}%): the machine was busy. "
            "Rerun on an idle machine, or raise report.timing_budget_s"
        ]
    elif report.get("timing_reliable"):
        lines += [f"- timings: interleaved, spread at most {report['timing_spread_pct']:.1f}% (reliable)"]
    teacher = report["models"].get("teacher") or {}
    if teacher.get("source"):  # an LLM known by its labels: scored on gold, no weights to time or count
        lines += [
            f"- teacher: {teacher['source']}; labelled {100 * teacher.get('labelled_fraction', 1):.1f}% of the "
            "test sentences (a sentence it failed to label counts as wrong)"
        ]
    if report.get("majority_class_rate") is not None:
        lines += [f"- majority-class rate (test): {cell(report['majority_class_rate'])}"]
        lines += competence_markdown(report)
    lines += [f"- {label}: {cell(value)}" for label, value in summary if value is not None]
    lines += margin_markdown(report)
    if report.get("student_weights"):
        lines += [f"- student scored and exported (student/): {report['student_weights']} (export.checkpoint)"]
    lines += stages_markdown(report)
    lines += teachers_memory_markdown(report)
    lines += exports_markdown(report)
    return "\n".join(lines) + "\n"


def stages_markdown(report: dict[str, Any]) -> list[str]:
    """The teacher's validation score (printed when it was ready) and each stage's wall time."""
    lines = []
    validation = report.get("teacher_validation")
    if validation:
        scores = ", ".join(f"{k} {cell(v)}" for k, v in validation.items() if k != "majority_class_rate")
        lines.append(f"- teacher on the validation split, when it was ready: {scores}")
    stages = report.get("stage_seconds")
    if stages:
        total = sum(stages.values())
        lines.append(
            f"- wall time {total:,.0f} s: " + ", ".join(f"{name} {seconds:,.0f} s" for name, seconds in stages.items())
        )
    return lines


COMPETENCE_MARGIN = 0.05  # a teacher within this of the majority-class rate has learnt (next to) nothing


def competence_markdown(report: dict[str, Any]) -> list[str]:
    """A warning when the teacher's accuracy is not clearly above the majority-class rate: then no number
    in the report says anything about distillation (a plumbing check such as experiment=tiny, or a
    teacher that was never trained on the task)."""
    acc = ((report["models"].get("teacher") or {}).get("metrics") or {}).get("acc")
    majority = report["majority_class_rate"]
    if acc is None or acc > majority + COMPETENCE_MARGIN:
        return []
    return [
        f"- **the teacher is not competent** (accuracy {acc:.3f}, majority class {majority:.3f}): this run "
        "checks the plumbing only; no comparison here says anything about distillation (fine-tune the "
        "teacher longer, teacher_finetune.max_steps, or use a trained one)"
    ]


def margin_markdown(report: dict[str, Any]) -> list[str]:
    """What distillation bought: the student's metric minus the labels-only baseline's, with the rows each
    saw; an interval only where several seeds were run (``report.seeds``)."""
    lines = []
    rows = report.get("train_rows")
    if rows and rows["total"] > rows["labelled"]:
        lines.append(
            f"- train rows: {rows['labelled']} labelled (the baseline's and the teacher fine-tune's), "
            f"{rows['total'] - rows['labelled']} without a label for the teacher to teach "
            f"({rows['hidden_labels']} labels hidden, {rows['unlabeled']} unlabelled, {rows['augmented']} augmented)"
        )
    margin = report.get("student_minus_baseline")
    if margin:
        diff = 100 * margin["difference"]
        if margin.get("ci95"):
            low, high = (100 * v for v in margin["ci95"])
            verdict = "above zero" if low > 0 else "below zero" if high < 0 else "includes zero"
            lines.append(
                f"- **distilled student - labels-only baseline: {diff:+.2f} {margin['metric']} points**, mean of "
                f"{margin['seeds']} seeds, paired-bootstrap 95% interval [{low:+.2f}, {high:+.2f}] ({verdict})"
            )
        else:
            lines.append(
                f"- **distilled student - labels-only baseline: {diff:+.2f} {margin['metric']} points** "
                "(one seed: no interval; report.seeds=5 gives one)"
            )
    return lines


def multi_teacher_memory(teacher: Any) -> dict[str, Any]:
    """``{"teachers_memory": teachers_memory(teacher)}`` for a MultiTeacher (report extra), else ``{}``.

    Per teacher and in total, quantized weights at their packed size
    (:func:`litdistill.models.multi_teacher.teachers_memory`).
    """

    return {"teachers_memory": teachers_memory(teacher)} if isinstance(teacher, MultiTeacher) else {}


def teachers_memory_markdown(report: dict[str, Any]) -> list[str]:
    """The MultiTeacher members' memory (``teacher=multi``): one row per teacher and the total."""
    memory = report.get("teachers_memory") or {}
    if not memory.get("teachers"):
        return []
    lines = [
        "",
        "## Teachers' memory",
        "",
        "Parameters and buffers; quantized weights at their packed size.",
        "",
        "| teacher | quantization | dtype | params (M) | in memory (MB) |",
        "|---|---|---|---|---|",
    ]
    for name, row in memory["teachers"].items():
        lines.append(
            f"| {name} | {row.get('quantization') or '-'} | {row.get('dtype') or '-'} | {cell(row['params'] / 1e6)} | "
            f"{cell(row['mb'])} |"
        )
    lines.append(f"| total ({len(memory['teachers'])} teachers) | | | | {cell(memory['total_mb'])} |")
    return lines


def exports_markdown(report: dict[str, Any]) -> list[str]:
    """The exported student formats (``export.onnx`` / ``export.int8``): size, latency, fidelity."""
    exports = report.get("exports") or {}
    if not exports.get("formats"):
        return []
    lines = [
        "",
        "## Exported student",
        "",
        f"Same example, batch {exports.get('batch_size', 1)}, {exports.get('threads')} threads; "
        "agreement and max |logit diff| against the PyTorch student on held-out batches.",
        "",
        "| format | file | size (MB) | CPU ms/example (b=1) | agreement | max abs logit diff |",
        "|---|---|---|---|---|---|",
    ]
    for fmt, row in exports["formats"].items():
        diff = row.get("max_abs_diff")
        lines.append(
            f"| {fmt} | {row.get('file') or '-'} | {cell(row.get('size_mb'))} | {cell(row.get('latency_ms'))} | "
            f"{cell(row.get('agreement'))} | {'-' if diff is None else f'{diff:.2e}'} |"
        )
    return lines


FIGURE_TITLES = {
    "loss_curves": "Training losses",
    "training_curves": "Student and baseline over training: loss, validation metric, agreement",
    "comparison": "Teacher vs student vs baseline: quality, latency, size",
}


def figures_markdown(report: dict[str, Any]) -> str:
    figures = report.get("figures") or {}
    if not figures:
        return ""
    return "\n## Figures\n\n" + "".join(
        f"![{FIGURE_TITLES.get(name, name)}]({file})\n\n" for name, file in figures.items()
    )


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out_dir / "report.md", "# litdistill report\n\n" + to_markdown(report) + figures_markdown(report))
    return out_dir / "report.md"
