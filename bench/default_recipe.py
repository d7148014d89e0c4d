"""How the default run's label-scarce recipe was chosen: candidate settings scored on the VALIDATION split.

    python -m bench.default_recipe                      # the grid below, one seed each, then the pick
    python -m bench.default_recipe --seeds 3            # each candidate under report.seeds=3

The default run's own data (``make_drug_event_dataset``, seed 0) is written once; each candidate runs the
real CLI with ``data=files`` whose *test* file is the validation file, so every number here is a
validation number and the test split is never read. The candidate with the largest distilled-minus-baseline
difference on validation (ties: the cheaper one) becomes ``conf/data/drug_events.yaml``'s setting; the
results go to ``bench/results/default_recipe.json`` and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, log, machine_info, result_path, write_json

NAME = "default_recipe"
CANDIDATES: dict[str, list[str]] = {
    "all labels": ["data.label_fraction=1.0"],
    "10% labels": ["data.label_fraction=0.1"],
    "10% labels + neighbours x4": ["data.label_fraction=0.1", "augment=neighbours"],
    "5% labels": ["data.label_fraction=0.05"],
    "5% labels + neighbours x4": ["data.label_fraction=0.05", "augment=neighbours"],
    # then, at the picked fraction, the loss settings the default run had kept (T=2, 2 epochs, kd 0.5)
    "5% labels, T=1": ["data.label_fraction=0.05", "loss.kd.temperature=1"],
    "5% labels, T=4": ["data.label_fraction=0.05", "loss.kd.temperature=4"],
    "5% labels, kd weight 0.8": ["data.label_fraction=0.05", "loss.kd.weight=0.8", "loss.ce.weight=0.2"],
    "5% labels, 4 epochs": ["data.label_fraction=0.05", "trainer.max_epochs=4"],
}


def run_candidate(data_dir: Path, overrides: list[str], seeds: int, out_dir: Path) -> dict[str, Any]:
    """One CLI run scored on the validation split; its report's headline numbers."""
    files = [
        "data=files",
        f"data.data_files.train={data_dir / 'train.csv'}",
        f"data.data_files.validation={data_dir / 'validation.csv'}",
        f"data.data_files.test={data_dir / 'validation.csv'}",  # validation numbers only: the test split is not read
        "data.label_names=[no_ade,ade]",
        "data.max_length=48",
        "report.speed=false",
        "report.plots=false",
        f"report.seeds={seeds}",
        f"hydra.run.dir={out_dir}",
    ]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "litdistill", *files, *overrides], check=True, cwd=ROOT)
    report = json.loads((out_dir / "report.json").read_text())
    models = report["models"]
    return {
        "overrides": overrides,
        "wall_s": time.perf_counter() - start,
        "val_f1": {name: row["metrics"]["f1"] for name, row in models.items()},
        "student_minus_baseline": report.get("student_minus_baseline"),
        "train_rows": report.get("train_rows"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="candidate names (default: all)")
    args = parser.parse_args()
    from litdistill.data.synthetic import make_drug_event_dataset

    path = result_path(NAME, "full")
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    results = earlier.get("candidates", {}) if earlier.get("seeds") == args.seeds else {}  # --only: keep the rest
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        make_drug_event_dataset(str(data_dir), n_train=1200, n_val=300, n_test=500, seed=0)  # the default run's
        for name, overrides in CANDIDATES.items():
            if args.only and name not in args.only:
                continue
            log(f"{NAME}: {name}")
            run_dir = Path(tmp) / re.sub(r"[^A-Za-z0-9]+", "_", name)  # Hydra's override grammar: no "=" or ","
            results[name] = run_candidate(data_dir, overrides, args.seeds, run_dir)
            log(f"  {json.dumps(results[name])}")
            write_json(path, {"machine": machine_info(), "seeds": args.seeds, "candidates": results})  # after each


if __name__ == "__main__":
    main()
