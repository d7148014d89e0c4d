"""Teacher cache: epoch time online vs cached, bytes per token, and the student's quality from top-k.

    python -m bench.cache_speed            # full: about 3-4 minutes on 2 cores
    python -m bench.cache_speed --quick    # small sizes, ~30 s
    python -m bench.cache_speed --smoke    # tiny sizes (plumbing; python -m bench --smoke)

Two recipes, side by side in one process, ``torch.set_num_threads(--threads)``, default 1: the
ratio is what is measured, both sides get the same threads, and on a shared 2-core machine
OpenMP barriers make 2-thread timings of small ops erratic (a 5x spread between repetitions).

* **classification** (the default experiment's models): the packaged all-MiniLM-L6-v2 teacher
  (6 layers) and a 2-layer student from its layers 0 and 3 (``student_from_teacher(every=3)``,
  the teacher has 3x its depth), SoftTargetKL(T=2) + HardCE on the project's drug-event sentences,
  batch 32. Cached = full logits (float16).
* **causal LM** (the tiny causal recipe): a 6-layer Llama (hidden 64, the packaged 30,522-token
  vocabulary) fine-tuned on the generated drug-safety Q&A for one epoch, a 2-layer student from its
  layers 0 and 3 (the teacher has 3x its depth), ForwardKL + HardCE on the response tokens, batch 8. Cached = top-k log-probs + tail.

*Epoch time* is the wall time of the training epoch (Lightning's ``on_train_epoch_start`` to
``on_train_epoch_end``: data loading, both forwards, loss, backward, optimizer), validation off.
Online and cached epochs alternate (online, cached, online, cached, ...) so machine noise hits
both alike; the speed-up is the median of the per-pair ratios. The store is built once before the
cached epochs ("build"); with ``cache=auto`` a run's first epoch costs build + one cached epoch and
every later epoch (and every later run or sweep trial) one cached epoch.

The classification recipe also times the teacher's forward alone over the same batches: the cache
can remove no more than that, so ``online / (online - teacher forward)`` bounds its speed-up.

*Bytes per token*: the store's total shard bytes (headers and offsets included) over the number of
stored rows (real response tokens), for k = 64 and 128, codecs ``raw`` (uint16 ids + float16
log-probs, the default) and ``packed`` (8-bit log-prob codes, sorted id gaps, zlib).

*Quality*: the causal student trained for the same epochs online (full teacher logits) and from the
cache (top-k, k = 64 raw; and k = 128 packed), each with two seeds (data order); token accuracy and
perplexity on the held-out test split. "Within noise": the cached mean differs from the online mean
by no more than the larger seed-to-seed spread (floor 0.5 point of token accuracy).

Results: ``bench/results/cache_speed.json`` (``_quick``/``_smoke`` suffixes) and ``cache_speed.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, log, machine_info, quiet, result_path, write_json

SIZES = {
    "full": dict(cls_train=320, cls_reps=3, lm_train=240, lm_epochs=3, lm_seeds=(0, 1), lm_finetune_epochs=1,
                 lm_variants=("online", "cached_k64_raw", "cached_k128_packed")),
    "quick": dict(cls_train=64, cls_reps=2, lm_train=64, lm_epochs=1, lm_seeds=(0,), lm_finetune_epochs=1,
                  lm_variants=("online", "cached_k64_raw")),
    "smoke": dict(cls_train=32, cls_reps=1, lm_train=32, lm_epochs=1, lm_seeds=(0,), lm_finetune_epochs=1,
                  lm_variants=("online", "cached_k64_raw")),
}
CACHED = {"cached_k64_raw": (64, "raw"), "cached_k128_packed": (128, "packed")}
NOISE_FLOOR = 0.005  # token accuracy


# ---- helpers -------------------------------------------------------------------------------------
def _timer():
    import lightning as L

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self._start = self._cpu = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start, self._cpu = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds.append(time.perf_counter() - self._start)
            self.cpu_seconds.append(time.process_time() - self._cpu)

    return EpochTimer()


def _fit(module, datamodule, epochs: int) -> list[float]:
    import lightning as L

    timer = _timer()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[timer], gradient_clip_val=1.0)
    trainer.fit(module, datamodule=datamodule)
    return timer.seconds


def _teacher_pass(teacher, datamodule, task: str = "classification") -> float:
    """Seconds of the teacher's forward alone over one epoch of training batches (what the cache removes)."""
    import torch

    from litdistill.forward import run_model

    start = time.perf_counter()
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            run_model(teacher, batch, frozenset({"logits"}), task)
    return time.perf_counter() - start


def _optimizer(lr: float):
    """litdistill's default optimizer (fused AdamW, weight decay 0.01), as the default experiment uses."""
    from litdistill.optim import adamw

    return adamw(lr)


def _build(store_dir: Path, key: dict, teacher, datamodule, task: str, outputs: str, k: int | None, codec: str,
           batch_size: int) -> tuple[Any, float, dict]:
    from litdistill.cache import StoreSpec, TeacherStore, build_store, split_sources

    spec = StoreSpec(task=task, outputs=outputs, k=k, dtype="float16", codec=codec, shard_size=256)
    store = TeacherStore(store_dir, {**key, "outputs": outputs, "k": k, "codec": codec})
    start = time.perf_counter()
    manifest = build_store(store, teacher, split_sources(datamodule, ["train", "validation"]), spec,
                           batch_size=batch_size, progress=False)
    return store, time.perf_counter() - start, manifest


def _ratios(online: list[float], cached: list[float]) -> dict[str, Any]:
    pairs = [a / b for a, b in zip(online, cached) if b > 0]
    return {"online_epoch_s": statistics.median(online), "cached_epoch_s": statistics.median(cached),
            "online_epochs_s": online, "cached_epochs_s": cached, "speedup": statistics.median(pairs) if pairs else None}


# ---- classification --------------------------------------------------------------------------------
def classification(sizes: dict, work: Path) -> dict[str, Any]:
    import lightning as L

    from litdistill.cache import CachedTeacher, CachedTeacherDataModule
    from litdistill.data import TextClassificationDataModule
    from litdistill.data.synthetic import make_drug_event_dataset
    from litdistill.layer_subset import student_from_teacher
    from litdistill.losses import HardCE, SoftTargetKL
    from litdistill.models import count_parameters, load_pretrained, packaged_minilm
    from litdistill.module import DistillationModule

    L.seed_everything(0, verbose=False)
    files = make_drug_event_dataset(str(work / "cls_data"), n_train=sizes["cls_train"], n_val=32, n_test=32, seed=0)
    dm = TextClassificationDataModule(tokenizer=packaged_minilm(), data_files=files, max_length=48, batch_size=32)
    dm.setup("fit")
    teacher = load_pretrained(packaged_minilm(), task="classification", num_labels=2).eval()
    student = student_from_teacher(teacher, every=3)
    losses = lambda: {"kd": SoftTargetKL(temperature=2.0, weight=0.5), "ce": HardCE(weight=0.5)}  # noqa: E731
    store, build_s, manifest = _build(work / "cls_store", {"recipe": "cls"}, teacher, dm, "classification", "logits",
                                      None, "raw", 64)
    cached_dm = CachedTeacherDataModule(dm, store, "classification")
    online_student, cached_student = copy.deepcopy(student), copy.deepcopy(student)
    online = DistillationModule(online_student, teacher, losses(), optimizer=_optimizer(5e-5))
    cached = DistillationModule(cached_student, CachedTeacher(manifest), losses(), optimizer=_optimizer(5e-5))
    on_s, ca_s, teacher_s = [], [], []
    for rep in range(sizes["cls_reps"]):  # alternate, so load on the machine hits both alike
        log(f"classification rep {rep + 1}/{sizes['cls_reps']}")
        on_s += _fit(online, dm, 1)
        ca_s += _fit(cached, cached_dm, 1)
        teacher_s.append(_teacher_pass(teacher, dm))
    n_batches = len(dm.train_dataloader())
    teacher_fwd = statistics.median(teacher_s)
    return {"teacher": "all-MiniLM-L6-v2 (packaged), 6 layers", "student": "2 layers (teacher layers 0, 3)",
            "teacher_params_m": count_parameters(teacher) / 1e6, "student_params_m": count_parameters(student) / 1e6,
            "train_examples": sizes["cls_train"], "batches_per_epoch": n_batches, "batch_size": 32,
            "build_s": build_s, "bytes_per_example": manifest["bytes_per_row"], "store_bytes": manifest["bytes"],
            "teacher_forward_s_per_epoch": teacher_fwd, **_ratios(on_s, ca_s),
            "speedup_bound": statistics.median(on_s) / max(statistics.median(on_s) - teacher_fwd, 1e-9)}


# ---- causal LM ----------------------------------------------------------------------------------------
def causal(sizes: dict, work: Path) -> dict[str, Any]:
    import lightning as L

    from litdistill.cache import CachedTeacher, CachedTeacherDataModule
    from litdistill.data.sft import SFTDataModule
    from litdistill.data.synthetic import make_sft_dataset
    from litdistill.evaluation import predict, score
    from litdistill.layer_subset import student_from_teacher
    from litdistill.losses import ForwardKL, HardCE
    from litdistill.models import from_config, packaged_minilm
    from litdistill.module import DistillationModule

    L.seed_everything(0, verbose=False)
    files = make_sft_dataset(str(work / "lm_data"), n_train=sizes["lm_train"], n_val=32, n_test=50, seed=0)
    dm = SFTDataModule(tokenizer=packaged_minilm(), data_files=files, max_length=64, batch_size=8)
    dm.setup("fit")
    teacher = from_config({"model_type": "llama", "vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 6,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                           "max_position_embeddings": 256, "pad_token_id": 0}, task="causal_lm", seed=0)
    log("causal: fine-tuning the teacher")
    _fit(DistillationModule(teacher, None, {"ce": HardCE()}, optimizer=_optimizer(3e-3), task="causal_lm"), dm,
         sizes["lm_finetune_epochs"])
    teacher.requires_grad_(False)
    teacher.eval()
    student0 = student_from_teacher(teacher, every=3)  # layers 0 and 3: the teacher has 3x its depth
    vocab = teacher.config.vocab_size

    # bytes per token, k = 64 / 128, raw / packed
    stores, storage = {}, []
    for k in (64, 128):
        for codec in ("raw", "packed"):
            store, build_s, manifest = _build(work / f"lm_store_k{k}_{codec}", {"recipe": "lm"}, teacher, dm, "causal_lm",
                                              "topk", k, codec, 16)
            stores[(k, codec)] = (store, manifest)
            split = manifest["splits"]["train"]
            storage.append({"k": k, "codec": codec, "bytes_per_token": split["bytes_per_row"], "tokens": split["rows"],
                            "store_mib": manifest["bytes"] / 2**20, "build_s": build_s})

    def train(variant: str, seed: int) -> dict[str, Any]:
        L.seed_everything(seed, verbose=False)
        dm.hparams.seed = seed  # the training order
        student = copy.deepcopy(student0)
        losses = {"kd": ForwardKL(temperature=1.0, weight=0.5), "ce": HardCE(weight=0.5)}
        if variant == "online":
            module, data = DistillationModule(student, teacher, losses, optimizer=_optimizer(1e-3), task="causal_lm"), dm
        else:
            store, manifest = stores[CACHED[variant]]
            module = DistillationModule(student, CachedTeacher(manifest), losses, optimizer=_optimizer(1e-3), task="causal_lm")
            data = CachedTeacherDataModule(dm, store, "causal_lm")
        seconds = _fit(module, data, sizes["lm_epochs"])
        preds, labels, nll = predict(student, dm.test_dataloader(), "causal_lm")
        return {"variant": variant, "seed": seed, "epochs_s": seconds, **score(preds, labels, "causal_lm", vocab, nll)}

    runs = []
    for seed in sizes["lm_seeds"]:
        for variant in sizes["lm_variants"]:
            log(f"causal: {variant}, seed {seed}")
            runs.append(train(variant, seed))
    quality = {}
    for variant in sizes["lm_variants"]:
        mine = [r for r in runs if r["variant"] == variant]
        accs = [r["token_acc"] for r in mine]
        quality[variant] = {"token_acc_mean": statistics.mean(accs), "token_acc_spread": max(accs) - min(accs),
                            "perplexity_mean": statistics.mean(r["perplexity"] for r in mine), "token_acc": accs}
    online_q = quality["online"]
    for variant in sizes["lm_variants"]:
        if variant == "online":
            continue
        q = quality[variant]
        noise = max(online_q["token_acc_spread"], q["token_acc_spread"], NOISE_FLOOR)
        q["delta_vs_online"] = q["token_acc_mean"] - online_q["token_acc_mean"]
        q["noise"] = noise
        q["within_noise"] = abs(q["delta_vs_online"]) <= noise
    online_epochs = [s for r in runs if r["variant"] == "online" for s in r["epochs_s"]]
    cached_epochs = [s for r in runs if r["variant"] == "cached_k64_raw" for s in r["epochs_s"]]
    teacher_fwd = statistics.median(_teacher_pass(teacher, dm, "causal_lm") for _ in range(2))
    n_tokens = stores[(64, "raw")][1]["splits"]["train"]["rows"]
    return {"teacher": "Llama 6 layers, hidden 64, vocab 30,522 (fine-tuned 1 epoch)", "student": "2 layers (teacher layers 0, 3)",
            "train_examples": sizes["lm_train"], "train_tokens": n_tokens, "epochs": sizes["lm_epochs"],
            "batches_per_epoch": len(dm.train_dataloader()), "storage": storage, "runs": runs, "quality": quality,
            "build_s": next(s["build_s"] for s in storage if s["k"] == 64 and s["codec"] == "raw"),
            "teacher_forward_s_per_epoch": teacher_fwd, **_ratios(online_epochs, cached_epochs),
            "speedup_bound": statistics.median(online_epochs) / max(statistics.median(online_epochs) - teacher_fwd, 1e-9)}


# ---- report ---------------------------------------------------------------------------------------------
def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in ("classification", "causal_lm"):
        r = result[name]
        out.append({"target": f"{name}: epochs after the first >= 2x faster from the cache", "measured": r["speedup"],
                    "unit": "x", "bound": 2.0, "met": r["speedup"] is not None and r["speedup"] >= 2.0,
                    "note": f"the teacher's forward is {r['teacher_forward_s_per_epoch']:.2f} s of the {r['online_epoch_s']:.2f} s "
                            "online epoch: the student's own step dominates on this recipe"})
    storage = {(s["k"], s["codec"]): s["bytes_per_token"] for s in result["causal_lm"]["storage"]}
    best = min(storage[(128, "raw")], storage[(128, "packed")])
    out.append({"target": "<= 300 bytes/token at k=128 (codec packed; raw is the default layout)", "measured": best,
                "unit": "B", "bound": 300, "met": best <= 300,
                "note": f"raw {storage[(128, 'raw')]:.0f} B, packed {storage[(128, 'packed')]:.0f} B"})
    for variant, q in result["causal_lm"]["quality"].items():
        if variant == "online":
            continue
        out.append({"target": f"student token accuracy, {variant} vs online, within noise", "measured": q["delta_vs_online"],
                    "unit": "", "bound": q["noise"], "met": q["within_noise"],
                    "note": f"|delta| <= {q['noise']:.3f} (seed spread, floor {NOISE_FLOOR})"})
    return out


def markdown(result: dict[str, Any]) -> str:
    c, m = result["classification"], result["causal_lm"]
    lines = [f"Mode {result['mode']}, {result['threads']} threads. Epoch = one training epoch, validation off; "
             "online and cached epochs alternate; speed-up = median of the per-pair ratios.", "",
             "| recipe | teacher | student | batches/epoch | online s/epoch | cached s/epoch | speed-up | build s (once) | stored bytes per row |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|",
             f"| classification | {c['teacher']} | {c['student']} | {c['batches_per_epoch']} | {c['online_epoch_s']:.2f} | "
             f"{c['cached_epoch_s']:.2f} | {c['speedup']:.2f}x | {c['build_s']:.2f} | {c['bytes_per_example']:.1f} / example |",
             f"| causal LM | {m['teacher']} | {m['student']} | {m['batches_per_epoch']} | {m['online_epoch_s']:.2f} | "
             f"{m['cached_epoch_s']:.2f} | {m['speedup']:.2f}x | {m['build_s']:.2f} | (below) |", "",
             f"Classification: the teacher's forward alone takes {c['teacher_forward_s_per_epoch']:.2f} s of the "
             f"{c['online_epoch_s']:.2f} s online epoch; the rest (the student's forward, backward and AdamW step over its "
             f"{c['student_params_m']:.1f}M parameters, 11.7M of them the copied embedding matrix) stays: removing the "
             f"teacher's forward alone gives {c['speedup_bound']:.2f}x. Causal LM: the teacher's forward takes "
             f"{m['teacher_forward_s_per_epoch']:.2f} s of the {m['online_epoch_s']:.2f} s online epoch ({m['speedup_bound']:.2f}x "
             "from it alone); the cache also replaces the teacher's full-vocabulary log-softmax and KL by the k+1-bucket KL. "
             "The student's 30,522-way output layer, its full-vocabulary CE and their backward dominate the rest. "
             "The 2x target needs a teacher forward at least as costly as the student's whole training step.", "",
             f"Top-k store of the causal recipe ({m['train_tokens']} real train tokens):", "",
             "| k | codec | bytes / token | store (MiB) | build s |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {s['k']} | {s['codec']} | {s['bytes_per_token']:.1f} | {s['store_mib']:.3f} | {s['build_s']:.2f} |"
              for s in m["storage"]]
    lines += ["", f"Causal student after {m['epochs']} epochs, held-out test split (seeds: {len(result['causal_lm']['runs']) // max(len(m['quality']), 1)}):", "",
              "| teacher signal | token acc (mean) | seed spread | perplexity (mean) | delta vs online | within noise |",
              "|---|---:|---:|---:|---:|---|"]
    for variant, q in m["quality"].items():
        delta = "-" if variant == "online" else f"{q['delta_vs_online']:+.4f}"
        within = "-" if variant == "online" else ("yes" if q["within_noise"] else "no")
        lines.append(f"| {variant} | {q['token_acc_mean']:.4f} | {q['token_acc_spread']:.4f} | {q['perplexity_mean']:.2f} | {delta} | {within} |")
    lines += ["", "Targets:", ""]
    lines += [f"- {t['target']}: {t['measured']:.3g}{t.get('unit') if t.get('unit') == 'x' else ' ' + t.get('unit', '')} -> "
              f"{'met' if t['met'] else 'MISSED'}" + (f" ({t['note']})" if t.get("note") else "") for t in result["targets"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.cache_speed", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes, ~30 s")
    g.add_argument("--smoke", action="store_true", help="tiny sizes (plumbing)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: see the module docstring)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/cache_speed[_mode].json)")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    quiet()
    import torch

    torch.set_num_threads(args.threads)
    sizes = SIZES[mode]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="litdistill-cache-bench-") as tmp:
        log(f"cache_speed ({mode}): classification")
        cls = classification(sizes, Path(tmp))
        log(f"cache_speed ({mode}): causal LM")
        lm = causal(sizes, Path(tmp))
    result = {"mode": mode, "threads": args.threads, "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
              "classification": cls, "causal_lm": lm, "wall_s": time.perf_counter() - start, "machine": machine_info()}
    result["targets"] = targets(result)
    out = args.out or result_path("cache_speed", mode, RESULTS)
    write_json(out, result)
    from litdistill.io import atomic_write_text

    atomic_write_text(out.with_suffix(".md"), "# Teacher cache benchmark\n\n" + markdown(result))
    log(f"wrote {out} and {out.with_suffix('.md')} in {result['wall_s']:.0f} s")
    for t in result["targets"]:
        log(f"target {t['target']}: {t['measured']:.3g} -> {'met' if t['met'] else 'MISSED'}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
