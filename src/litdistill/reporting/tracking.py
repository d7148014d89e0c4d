"""End-of-run experiment tracking: the resolved config, the report and the student in W&B.

Lightning's ``WandbLogger`` (``logger=wandb``) already streams the training metrics; at the end of
``train`` this adds, to every W&B run the trainer logs to:

- the resolved config (``run.config``; sweeps see their flat keys beside it) and the same config as
  the run file ``litdistill_config.yaml``,
- the report table as a ``wandb.Table`` (``report/table``) and its headline numbers in the run
  summary (``report/<model>/<metric>``, ``report/agreement``, ``report/speedup``...),
- the report figures (``report/figures/<name>``),
- with ``logger.wandb.log_model=true``: the exported student (Hugging Face folder, plus the ONNX
  and int8 files when exported) as a ``model`` artifact.

Works offline (``WANDB_MODE=offline``; ``wandb sync`` uploads later). Without a W&B logger it does
nothing and never imports wandb.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from litdistill.training.safe_logger import logger_failed

log = logging.getLogger(__name__)

CONFIG_FILE = "litdistill_config.yaml"
REPORT_FILE = "report.json"
TABLE_COLUMNS = ["model", "params_m", "size_mb", "disk_mb", "latency_ms", "throughput_per_s", "agreement"]


def wandb_runs(trainer: Any) -> list[Any]:
    """The W&B runs behind the trainer's working ``WandbLogger``s (none when W&B is not configured).

    A logger that failed during the fit is skipped, and one whose run cannot be started now is reported
    and skipped: ``lg.experiment`` would call ``wandb.init`` (up to ~90 s each) and raise after the
    report is already written.
    """
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return []

    runs = []
    for lg in getattr(trainer, "loggers", None) or []:
        if not isinstance(lg, WandbLogger) or logger_failed(lg):
            continue
        try:
            runs.append(lg.experiment)
        except Exception as e:  # noqa: BLE001 - W&B trouble must not fail a finished run
            log.warning("W&B is unreachable (%s: %s); the report is not logged to W&B", type(e).__name__, e)
    return runs


def report_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The report's model table as columns and rows (metrics after the fixed columns)."""
    models = report.get("models", {})
    metrics = sorted({m for row in models.values() for m in row.get("metrics", {})})
    columns = TABLE_COLUMNS + metrics
    rows = [
        [name] + [row.get(c) for c in TABLE_COLUMNS[1:]] + [row.get("metrics", {}).get(m) for m in metrics]
        for name, row in models.items()
    ]
    for fmt, row in ((report.get("exports") or {}).get("formats") or {}).items():
        if fmt != "pytorch":
            rows.append(
                [f"student ({fmt})", None, None, row.get("size_mb"), row.get("latency_ms"), None, row.get("agreement")]
                + [None] * len(metrics)
            )
    return columns, rows


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers for the run summary (what sweeps and run tables compare)."""
    summary: dict[str, Any] = {}
    for name, row in report.get("models", {}).items():
        for metric, value in row.get("metrics", {}).items():
            summary[f"report/{name}/{metric}"] = value
        for key in ("params_m", "size_mb", "disk_mb", "latency_ms", "throughput_per_s"):
            if row.get(key) is not None:
                summary[f"report/{name}/{key}"] = row[key]
    for key in ("agreement", "retained_pct", "speedup", "throughput_ratio", "compression"):
        if report.get(key) is not None:
            summary[f"report/{key}"] = report[key]
    for fmt, row in ((report.get("exports") or {}).get("formats") or {}).items():
        for key, value in row.items():
            if isinstance(value, (int, float)):
                summary[f"report/export/{fmt}/{key}"] = value
    return summary


def log_model_enabled(value: Any) -> bool:
    """``logger.wandb.log_model`` as a flag (W&B also takes ``"all"``; ``"false"`` is off)."""
    return bool(value) and str(value).lower() != "false"


def log_run(
    trainer: Any, report: dict[str, Any], out_dir: str | Path, config: dict[str, Any], log_model: Any = False
) -> int:
    """Log config, report, figures (and, with ``log_model``, the student) to each W&B run of ``trainer``'s
    loggers; returns how many runs. ``config``: the run's resolved config as plain containers."""
    runs = wandb_runs(trainer)
    if not runs:
        return 0
    import wandb

    out_dir = Path(out_dir)
    columns, rows = report_rows(report)
    logged = 0
    for run in runs:
        try:
            _log_one(run, wandb, config, log_model_enabled(log_model), report, out_dir, columns, rows)
            logged += 1
        except Exception as e:  # noqa: BLE001 - the report is written already; W&B trouble must not fail the run
            log.warning("could not log the report to W&B run %s: %s", getattr(run, "id", "?"), e)
    try:
        wandb.finish()  # one run per train(): the next one in this process (multirun, sweeps) starts fresh
    except Exception as e:  # noqa: BLE001 - uploading the last data failed; the report and export are written
        log.warning("could not finish the W&B run (%s: %s); `wandb sync` its directory later", type(e).__name__, e)
    return logged


def _log_one(
    run: Any,
    wandb: Any,
    config: Any,
    log_model: bool,
    report: dict[str, Any],
    out_dir: Path,
    columns: list[str],
    rows: list[list[Any]],
) -> None:
    """Config, report table, figures, summary and (with log_model) the student, to one run."""
    run.config.update(config, allow_val_change=True)
    if getattr(run, "dir", None):  # the composed config as a run file too (W&B writes its own config.yaml only online)
        (Path(run.dir) / CONFIG_FILE).write_text(OmegaConf.to_yaml(config), encoding="utf-8")
        run.save(str(Path(run.dir) / CONFIG_FILE), base_path=run.dir, policy="now")
        if (out_dir / REPORT_FILE).is_file():  # with the config: `litdistill rank` reads a W&B run folder
            (Path(run.dir) / REPORT_FILE).write_text((out_dir / REPORT_FILE).read_text(encoding="utf-8"), "utf-8")
            run.save(str(Path(run.dir) / REPORT_FILE), base_path=run.dir, policy="now")
    payload: dict[str, Any] = {"report/table": wandb.Table(columns=columns, data=rows)}
    for name, file in (report.get("figures") or {}).items():
        if (out_dir / file).is_file():
            payload[f"report/figures/{name}"] = wandb.Image(str(out_dir / file))
    run.log(payload)
    run.summary.update(report_summary(report))
    if log_model and (out_dir / "student").is_dir():
        artifact = wandb.Artifact(
            f"student-{run.id}", type="model", metadata={"task": report.get("task"), "report": report_summary(report)}
        )
        artifact.add_dir(str(out_dir / "student"), name="student")
        for fmt, row in ((report.get("exports") or {}).get("formats") or {}).items():
            file = out_dir / str(row.get("file") or "")
            if fmt != "pytorch" and file.is_file():
                artifact.add_file(str(file), name=file.name)
        run.log_artifact(artifact)
    log.info("logged config, report%s to W&B run %s", " and student artifact" if log_model else "", run.id)
