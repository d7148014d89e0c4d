"""CPU inference of the exported student vs the teacher: PyTorch, ONNX Runtime and dynamic int8.

    python -m bench.inference            # full
    python -m bench.inference --quick    # fewer repetitions
    python -m bench.inference --student-dir DIR --teacher-dir DIR   # given Hugging Face folders

The student is the plain Hugging Face folder ``litdistill.models.saving.export_student`` writes (by default the
2-layer ADE student of ``bench.ade_quality`` when the runner passes it; standalone, a 2-layer student
made from the packaged MiniLM-L6 with ``student_from_teacher`` and exported the same way); it is
loaded back with ``AutoModelForSequenceClassification.from_pretrained`` like a user would. ONNX and
int8 come from ``litdistill.models.export_formats`` (``export_onnx`` + ``onnx_session``, ``quantize_int8`` +
``save_int8``/``load_int8``) when the package has them.

Inputs: real ADE test sentences. Batch 1: the median-length sentence; batch 32: 32 fixed sentences,
padded to the longest. Same inputs and thread count for every model and format; repetitions
interleaved across them (one call of each per round), medians reported. Each student format is also
checked against the PyTorch student (argmax agreement, largest logit difference) on held-out batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import log, machine_info, quiet, result_path, write_json

NAME = "inference"
SIZES = {
    "full": dict(repeats=40, batch=32, threads=2, check_batches=8),
    "quick": dict(repeats=12, batch=32, threads=2, check_batches=4),
    "smoke": dict(repeats=2, batch=4, threads=1, check_batches=1),
}


def sentences(n: int = 600) -> tuple[list[str], str]:
    """Held-out ADE sentences (the test split of ``prepare_ade_splits``'s order), or synthetic ones."""
    from bench.ade_quality import corpus_dir

    root = corpus_dir()
    if (root / "DRUG-AE.rel").is_file():
        import random

        from litdistill.data.ade import read_ade_corpus

        rows = read_ade_corpus(str(root))
        random.Random(13).shuffle(rows)  # prepare_ade_splits' order: the test split comes first
        test = rows[: int(len(rows) * 0.2)]
        return [text for text, _ in test[:n]], "ADE test split"
    from litdistill.data.synthetic import POSITIVE

    fill = {"drug": "amiodarone", "cond": "pneumonitis", "ind": "atrial fibrillation", "age": 63}
    texts = [POSITIVE[i % len(POSITIVE)].format(**fill) for i in range(n)]
    return texts, "synthetic drug-event sentences (no ADE corpus)"


def build_default_models(work: Path, layers: list[int]) -> tuple[str, str]:
    """Teacher folder = the packaged MiniLM; student = its layers, exported with ``export_student``."""
    from litdistill.models.layer_subset import student_from_teacher
    from litdistill.models.loading import load_pretrained, load_tokenizer, packaged_minilm
    from litdistill.models.saving import export_student

    teacher = load_pretrained(packaged_minilm(), task="classification", num_labels=2)
    student = student_from_teacher(teacher, layers=layers)
    export_student(student, load_tokenizer(packaged_minilm()), work / "student")
    export_student(teacher, load_tokenizer(packaged_minilm()), work / "teacher")
    return str(work / "teacher"), str(work / "student")


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, one call of each per round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def run(
    mode: str = "full",
    results_dir=None,
    teacher_dir: str | None = None,
    student_dir: str | None = None,
    layers: list[int] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    quiet()
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from litdistill.models.loading import count_parameters
    from litdistill.models.saving import directory_size_mb

    sizes = SIZES[mode]
    threads = sizes["threads"]
    start = time.perf_counter()
    texts, data_name = sentences()
    with tempfile.TemporaryDirectory(prefix="litdistill-bench-inf-") as tmp:
        work = Path(tmp)
        if not (teacher_dir and student_dir):
            teacher_dir, student_dir = build_default_models(work, layers or [0, 5])
            source = "packaged MiniLM-L6 and a 2-layer student from its layers (untrained head; speed only)"
        tokenizer = AutoTokenizer.from_pretrained(student_dir)
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
        student = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()

        lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        one = dict(tokenizer([texts[order[len(order) // 2]]], return_tensors="pt"))
        many = dict(
            tokenizer(texts[: sizes["batch"]], padding=True, truncation=True, max_length=128, return_tensors="pt")
        )
        check = [
            dict(
                tokenizer(
                    texts[i * 32 : (i + 1) * 32], padding=True, truncation=True, max_length=128, return_tensors="pt"
                )
            )
            for i in range(sizes["check_batches"])
        ]

        from litdistill.models import export_formats as ef

        def torch_logits(model, b):
            return ef.torch_logits(model, b, "classification")

        runners: dict[str, Callable[[dict], Any]] = {
            "teacher (PyTorch)": lambda b: torch_logits(teacher, b),
            "student (PyTorch)": lambda b: torch_logits(student, b),
        }
        files = {
            "teacher (PyTorch)": directory_size_mb(teacher_dir),
            "student (PyTorch)": directory_size_mb(student_dir),
        }
        torch.set_num_threads(threads)
        path = ef.export_onnx(student, check[0], work / "student.onnx", task="classification")
        session = ef.onnx_session(path, threads=threads)
        runners["student (ONNX Runtime)"] = lambda b: ef.onnx_logits(session, b)
        files["student (ONNX Runtime)"] = ef.file_size_mb(path)
        path = ef.save_int8(ef.quantize_int8(student), work / "student_int8.pt")
        quantized = ef.load_int8(student_dir, path, task="classification")
        runners["student (int8 dynamic)"] = lambda b: torch_logits(quantized, b)
        files["student (int8 dynamic)"] = path.stat().st_size / 2**20

        fidelity = {}
        with torch.no_grad():
            reference = [runners["student (PyTorch)"](b).float() for b in check]
            for name, fn in runners.items():
                if not name.startswith("student"):
                    continue
                got = [fn(b).float() for b in check]
                fidelity[name] = {
                    "agreement": sum(int((r.argmax(-1) == g.argmax(-1)).sum()) for r, g in zip(reference, got))
                    / sum(r.shape[0] for r in reference),
                    "max_abs_diff": max(float((r - g).abs().max()) for r, g in zip(reference, got)),
                }
            single = interleaved({k: (lambda fn=fn: fn(one)) for k, fn in runners.items()}, sizes["repeats"])
            batched = interleaved(
                {k: (lambda fn=fn: fn(many)) for k, fn in runners.items()}, max(3, sizes["repeats"] // 3)
            )
        params = {
            "teacher (PyTorch)": count_parameters(teacher) / 1e6,
            "student (PyTorch)": count_parameters(student) / 1e6,
        }
        ref1, ref32 = single["teacher (PyTorch)"], batched["teacher (PyTorch)"]
        rows = {}
        for name in runners:
            rows[name] = {
                "latency_ms_b1": 1000 * single[name],
                "throughput_per_s_b32": many["input_ids"].shape[0] / batched[name],
                "speedup_b1_vs_teacher": ref1 / single[name],
                "throughput_ratio_vs_teacher": ref32 / batched[name],
                "size_mb": files.get(name),
                "params_m": params.get(name, params["student (PyTorch)"]),
                **fidelity.get(name, {}),
            }
        torch.set_num_threads(threads)
    result = {
        "benchmark": NAME,
        "mode": mode,
        "sizes": sizes,
        "threads": threads,
        "models_source": source,
        "teacher_dir": teacher_dir,
        "student_dir": student_dir,
        "data": data_name,
        "inputs": {"b1_tokens": int(one["input_ids"].shape[1]), "b32_shape": list(many["input_ids"].shape)},
        "rows": rows,
        "machine": machine_info(),
        "wall_s": time.perf_counter() - start,
        "command": "python -m bench.inference" + ("" if mode == "full" else f" --{mode}"),
    }
    write_json(result_path(NAME, mode, results_dir), result)
    for name, row in rows.items():
        log(
            f"inference {name:24s} {row['latency_ms_b1']:7.2f} ms (b=1)  {row['throughput_per_s_b32']:7.1f} ex/s "
            f"(b={many['input_ids'].shape[0]})"
        )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--smoke", action="store_true")
    p.add_argument("--teacher-dir", default=None)
    p.add_argument("--student-dir", default=None)
    p.add_argument("--results-dir", default=None)
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    result = run(
        mode, args.results_dir, args.teacher_dir, args.student_dir, source="given folders" if args.student_dir else None
    )
    print(json.dumps(result["rows"], indent=2), file=sys.stdout)
    return result


if __name__ == "__main__":
    main()
