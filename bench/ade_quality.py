"""Quality on real data: the ADE corpus, MiniLM-L6 teacher vs distilled 2-layer student vs labels-only student.

    # full: ~20 min on 2 cores with the teacher cached, +8 min to fine-tune it once
    python -m bench.ade_quality
    python -m bench.ade_quality --quick    # a few minutes: fewer steps, a fixed 1,000-sentence test sample
    python -m bench.ade_quality --labels [--quick]  # distilled - labels-only at 10% / 100% labels, 5 seeds

It runs the real command line, ``python -m litdistill experiment=ade_minilm ...`` (the raw corpus files
in ``$ADE_CORPUS_DIR``, default ``../shared/data/ade_corpus_v2``; de-duplicated, split without sentence
leakage with a fixed seed), in a subprocess, and reads its ``report.json``:

1. the teacher: the packaged all-MiniLM-L6-v2 fine-tuned on the labels by litdistill itself
   (``teacher_finetune``: ``DistillationModule(teacher, None, {"ce": HardCE()})``, cached by its config);
2. the student: 2 layers copied from the fine-tuned teacher (``student.layers``), distilled with
   ``SoftTargetKL(T=2)`` + ``HardCE`` (0.5 each);
3. the baseline: the same student, same steps, same seed, trained on the labels alone (``baseline=true``).

All three are scored on the held-out test split (F1 of the positive class, accuracy), with the
majority-class rate, the student's retained % of the teacher's F1, and the CPU speed-up at batch 1
(``litdistill.reporting.evaluation`` timing: the median-length test sentence unpadded, same threads, repetitions
interleaved across the
models). Two more runs add a feature term to the same recipe at equal steps (the teacher comes from
the cache): a hidden-state cosine (``loss=[kd_ce,hidden_cosine]``) and an attention KL
(``loss=[kd_ce,attention_kl]``), for the "logits only vs logits + features" rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, log, machine_info, result_path, write_json

NAME = "ade_quality"
SIZES = {
    # Batch 16 at <= 64 tokens on 2 cores: ~1 s per teacher fine-tuning step, ~0.45 s per distillation step,
    # ~0.3 s per labels-only step. The teacher is cached by its settings, so only the first run pays for it.
    # Student lr 5e-4 (not 2e-4) was picked on the validation split, never on the test split.
    # Full mode: students train one epoch over the train split (student_steps=None). A 600-step run
    # (2026-12-04, 2 cores) kept 96.5% of the teacher's F1 and beat labels-only by 2.6 points.
    "full": dict(
        teacher_steps=500,
        teacher_lr=1e-4,
        student_steps=None,
        student_epochs=1,
        batch=16,
        max_length=64,
        eval_batch=128,
        max_examples=None,
        max_eval=None,
        layers=[0, 5],
        lr=5e-4,
        repeats=30,
        threads=2,
    ),
    "quick": dict(
        teacher_steps=120,
        teacher_lr=2e-4,
        student_steps=100,
        batch=16,
        max_length=64,
        eval_batch=128,
        max_examples=None,
        max_eval=1000,
        layers=[0, 5],
        lr=5e-4,
        repeats=10,
        threads=2,
    ),
    "smoke": dict(
        teacher_steps=2,
        teacher_lr=1e-4,
        student_steps=2,
        batch=8,
        max_length=32,
        eval_batch=64,
        max_examples=300,
        max_eval=None,
        layers=[0, 5],
        lr=5e-4,
        repeats=2,
        threads=1,
    ),
}
TARGETS = [
    ("retained_pct", ">=", 97.0, "ADE: distilled student keeps >= 97% of the teacher's F1"),
    ("speedup", ">=", 2.5, "ADE: distilled student >= 2.5x the teacher's CPU speed (batch 1)"),
    ("student_minus_baseline_f1", ">", 0.0, "ADE: distilled student beats the labels-only student (F1)"),
]


def corpus_dir() -> Path:
    return Path(os.environ.get("ADE_CORPUS_DIR") or ROOT.parent / "shared" / "data" / "ade_corpus_v2").resolve()


def cache_dir(mode: str) -> Path:
    """The litdistill cache of the benchmark runs, one per mode (data CSVs and fine-tuned teachers)."""
    base = os.environ.get("LITDISTILL_CACHE") or os.path.join(os.environ.get("HOME", "."), ".cache", "litdistill")
    return Path(base) / "bench" / mode


# Feature-transfer rows: the same recipe plus one feature term, at equal steps (teacher from the cache).
FEATURE_RUNS = {
    "logits + hidden cosine": ["baseline=false", "loss=[kd_ce,hidden_cosine]"],
    "logits + attention KL": ["baseline=false", "loss=[kd_ce,attention_kl]"],
}


def overrides(sizes: dict[str, Any], corpus_ok: bool, extra: list[str] | None = None) -> list[str]:
    s = sizes
    data = ["experiment=ade_minilm"] if corpus_ok else ["data=drug_events"]
    keys = [
        f"data.max_length={s['max_length']}",
        f"data.batch_size={s['batch']}",
        f"data.eval_batch_size={s['eval_batch']}",
        f"teacher_finetune.max_steps={s['teacher_steps']}",
        f"teacher_finetune.lr={s['teacher_lr']}",
        *student_length(s),
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "student.every=null",
        f"student.layers=[{','.join(map(str, s['layers']))}]",
        f"optimizer.lr={s['lr']}",
        f"report.threads={s['threads']}",
        f"report.repeats={s['repeats']}",
        "report.plots=false",
        "seed=42",
    ]
    if corpus_ok and s.get("max_examples"):
        keys.append(f"data.data_files.max_examples={s['max_examples']}")
    if s.get("max_eval"):
        keys.append(f"data.max_eval_examples={s['max_eval']}")
    # "++key=value" sets a key whether or not the composed config already has it.
    args = data + ["callbacks=null", "logger=null"] + ["++" + k for k in keys]
    return args + (extra or [])


def student_length(sizes: dict[str, Any]) -> list[str]:
    """Trainer overrides for the students: ``student_steps`` optimizer steps, or ``student_epochs`` epochs."""
    if sizes.get("student_steps") is None:
        return ["trainer.max_steps=-1", f"trainer.max_epochs={sizes['student_epochs']}"]
    return [f"trainer.max_steps={sizes['student_steps']}", "trainer.max_epochs=-1"]


def run_cli(args: list[str], work: Path, tag: str, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``python -m litdistill <args>`` in a subprocess; returns (report.json, run info)."""
    outputs = work / tag
    cache = cache_dir(mode)
    teachers_before = set((cache / "teachers").glob("*")) if (cache / "teachers").is_dir() else set()
    env = {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(outputs),
        "LITDISTILL_CACHE": str(cache),
        "ADE_CORPUS_DIR": str(corpus_dir()),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    }
    cmd = [sys.executable, "-m", "litdistill", *args]
    log(f"ade_quality [{tag}]: {shlex.join(['python', '-m', 'litdistill', *args])}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=4 * 3600, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"litdistill run {tag} failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
        )
    reports = sorted(outputs.glob("*/runs/*/report.json"))
    if len(reports) != 1:
        raise RuntimeError(f"expected one report.json under {outputs}, found {reports}")
    teachers_after = set((cache / "teachers").glob("*")) if (cache / "teachers").is_dir() else set()
    new_teacher = sorted(teachers_after - teachers_before)
    text = proc.stdout + proc.stderr
    info = {
        "command": shlex.join(["python", "-m", "litdistill", *args]),
        "wall_s": wall,
        "run_dir": str(reports[0].parent),
        "student_dir": str(reports[0].parent / "student"),
        "teacher_source": "fine-tuned in this run"
        if new_teacher or "fine-tuning the teacher" in text
        else "loaded from the cache (fine-tuned by an earlier run with the same settings)",
    }
    cached = [p for p in teachers_after if (p / "config.json").is_file()]
    if new_teacher:
        info["teacher_dir"] = str(new_teacher[0])
    elif cached:
        info["teacher_dir"] = str(max(cached, key=lambda p: (p / "config.json").stat().st_mtime))
    return json.loads(reports[0].read_text()), info


def _row(report: dict[str, Any], name: str) -> dict[str, Any]:
    row = report["models"].get(name) or {}
    metrics = row.get("metrics", {})
    return {
        "f1": metrics.get("f1"),
        "acc": metrics.get("acc"),
        "params_m": row.get("params_m"),
        "latency_ms": row.get("latency_ms"),
        "throughput_per_s": row.get("throughput_per_s"),
        "agreement": report.get("agreement") if name == "student" else row.get("agreement"),
    }


def run(mode: str = "full", results_dir=None, work_dir: Path | None = None) -> dict[str, Any]:
    sizes = SIZES[mode]
    corpus_ok = (corpus_dir() / "DRUG-AE.rel").is_file()
    start = time.perf_counter()
    own_tmp = None
    if work_dir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="litdistill-bench-ade-")
        work_dir = Path(own_tmp.name)
    try:
        main_args = overrides(sizes, corpus_ok)
        report, info = run_cli(main_args, Path(work_dir), "main", mode)
        rows = {name: _row(report, name) for name in ("teacher", "student", "baseline")}
        t_f1, s_f1, b_f1 = rows["teacher"]["f1"], rows["student"]["f1"], rows["baseline"]["f1"]
        summary = {
            "rows": rows,
            "majority_class_rate": report.get("majority_class_rate"),
            "retained_pct": report.get("retained_pct"),
            "baseline_retained_pct": 100.0 * b_f1 / t_f1 if t_f1 else None,
            "speedup": report.get("speedup"),
            "throughput_ratio": report.get("throughput_ratio"),
            "compression": report.get("compression"),
            "student_minus_baseline_f1": s_f1 - b_f1 if s_f1 is not None and b_f1 is not None else None,
        }
        runs = {"main": info}
        feature_rows: dict[str, Any] = {"logits only (kd + ce)": rows["student"]}
        skipped = None
        if mode == "smoke":
            feature_rows, skipped = {}, "skipped in smoke mode (more CLI runs; quick and full modes run them)"
        for label, extra in ({} if mode == "smoke" else FEATURE_RUNS).items():
            tag = label.split(" + ")[1].replace(" ", "_").lower()
            try:
                report_f, runs[tag] = run_cli(main_args + extra, Path(work_dir), tag, mode)
                feature_rows[label] = _row(report_f, "student")
            except Exception as exc:  # noqa: BLE001  (reported, the rest of the benchmark stands)
                skipped = f"{label} run failed: {str(exc)[-600:]}"
        for row in feature_rows.values():
            row["retained_pct"] = 100.0 * row["f1"] / t_f1 if t_f1 and row["f1"] is not None else None
            row["minus_logits_only_f1"] = row["f1"] - s_f1 if row["f1"] is not None and s_f1 is not None else None
        result = {
            "benchmark": NAME,
            "mode": mode,
            "sizes": sizes,
            "data": "ADE corpus v2 (raw files)"
            if corpus_ok
            else f"synthetic drug-event sentences (no ADE corpus at {corpus_dir()})",
            "corpus_dir": str(corpus_dir()) if corpus_ok else None,
            "test_examples": test_examples(sizes, corpus_ok, mode),
            "train_examples": split_rows("train", corpus_ok, mode),
            "summary": summary,
            "feature_rows": feature_rows,
            "feature_rows_skipped": skipped,
            "targets": evaluate_targets(summary),
            "runs": runs,
            "report": report,
            "machine": machine_info(),
            "wall_s": time.perf_counter() - start,
            "command": "python -m bench.ade_quality" + ("" if mode == "full" else f" --{mode}"),
        }
        if not corpus_ok:
            for t in result["targets"]:
                t["met"] = None
                t["note"] = "synthetic data: not the ADE target"
        write_json(result_path(NAME, mode, results_dir), result)
        return result
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()


# The transfer-set study (issue: the teacher teaches beyond the labels): the rest of the train split as
# unlabelled text plus embedding-neighbour augmentation, student and baseline under SEEDS seeds each.
SEEDS = 5
LABEL_SETTINGS = {
    "10% labels": ["data.label_fraction=0.1", "augment=neighbours", "augment.n=2"],
    "100% labels": ["data.label_fraction=1.0", "augment=neighbours", "augment.n=2"],
}
LABEL_TARGETS = {"10% labels": 0.03, "100% labels": 0.015}  # distilled - labels-only F1, interval above zero
# Full mode trains each of the 20 students (2 settings x 5 seeds x student/baseline) for a fixed 600 optimizer
# steps, the length of the 2026-12-04 ADE run, set before this study and not chosen on any score: an epoch
# over the 100% transfer set (2,730 steps) would take about 4 hours on 2 cores.
LABEL_STUDENT_STEPS = {"full": 600}


def run_label_study(mode: str = "full", results_dir=None) -> dict[str, Any]:
    """Distilled minus labels-only F1 at 10% and 100% of the train labels, ``report.seeds=SEEDS``."""
    sizes = SIZES[mode]
    if mode in LABEL_STUDENT_STEPS:
        sizes = {**sizes, "student_steps": LABEL_STUDENT_STEPS[mode]}
    corpus_ok = (corpus_dir() / "DRUG-AE.rel").is_file()
    start = time.perf_counter()
    settings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="litdistill-bench-ade-labels-") as work:
        for label, extra in LABEL_SETTINGS.items():
            args = overrides(sizes, corpus_ok, [*extra, f"report.seeds={SEEDS}"])
            report, info = run_cli(args, Path(work), label.split("%")[0] + "pct", mode)
            margin = report["student_minus_baseline"]
            bound = LABEL_TARGETS[label]
            settings[label] = {
                "rows": {name: _row(report, name) for name in ("teacher", "student", "baseline")},
                "train_rows": report.get("train_rows"),
                "student_minus_baseline": margin,
                "retained_pct": report.get("retained_pct"),  # seed 42's student F1 / the teacher's
                "speedup": report.get("speedup"),  # batch 1, CPU, interleaved with the teacher
                "target": f"distilled - labels-only >= +{100 * bound:.1f} F1 with the 95% interval above zero",
                "met": margin["difference"] >= bound and margin["ci95"][0] > 0,
                "run": info,
            }
    result = {
        "benchmark": NAME + "_labels",
        "mode": mode,
        "sizes": sizes,
        "seeds": SEEDS,
        "data": "ADE corpus v2 (raw files)" if corpus_ok else "synthetic drug-event sentences (no ADE corpus)",
        "test_examples": test_examples(sizes, corpus_ok, mode),
        "settings": settings,
        "machine": machine_info(),
        "wall_s": time.perf_counter() - start,
        "command": "python -m bench.ade_quality --labels" + ("" if mode == "full" else f" --{mode}"),
    }
    write_json(result_path(NAME + "_labels", mode, results_dir), result)
    return result


def split_rows(split: str, corpus_ok: bool, mode: str) -> int | None:
    """Sentences in a split the run wrote (``prepare_ade_splits`` into the cache)."""
    import csv

    path = cache_dir(mode) / "data" / "ade_raw" / f"{split}.csv"
    if not corpus_ok or not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def test_examples(sizes: dict[str, Any], corpus_ok: bool, mode: str) -> int | None:
    """Sentences in the test split, capped by max_eval."""
    n = split_rows("test", corpus_ok, mode)
    return min(n, sizes["max_eval"]) if n is not None and sizes.get("max_eval") else n


def evaluate_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, op, bound, description in TARGETS:
        value = summary.get(key)
        met = None if value is None else (value >= bound if op == ">=" else value > bound)
        out.append(
            {
                "target": description,
                "bound": bound,
                "measured": value,
                "unit": "%" if key.endswith("pct") else "x" if key == "speedup" else "F1 points",
                "met": met,
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--smoke", action="store_true")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--labels", action="store_true", help="the transfer-set study at 10%% and 100%% labels")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.labels:
        result = run_label_study(mode, args.results_dir)
        print(json.dumps({k: v["student_minus_baseline"] for k, v in result["settings"].items()}, indent=2))
        return result
    result = run(mode, args.results_dir)
    print(json.dumps({"summary": result["summary"], "targets": result["targets"]}, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
