"""Stage 9, report: report.md/report.json, the figures, the resolved config, and W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from litdistill.core.io import atomic_write_text
from litdistill.reporting.plots import report_figures
from litdistill.reporting.report import to_markdown, write_report


def write_outputs(
    report: dict[str, Any], out_dir: Path, trainer: L.Trainer, resolved_yaml: str, plots: bool = True
) -> dict[str, Any]:
    """Write the report (with its figures when ``plots``) and ``config.yaml``, print the table.

    ``resolved_yaml``: the run's config with every ``${...}`` resolved (real paths and directories;
    Hydra's own ``.hydra/config.yaml`` keeps the interpolations).
    """
    if plots:
        report["figures"] = report_figures(report, out_dir, trainer)
    write_report(report, out_dir)
    atomic_write_text(out_dir / "config.yaml", resolved_yaml)
    print(to_markdown(report))
    return report
