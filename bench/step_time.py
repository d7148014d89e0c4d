"""Training step time and peak memory: litdistill under Lightning vs a hand-written loop vs TRL's GKDTrainer.

    python -m bench.step_time            # full (a few minutes on 2 cores)
    python -m bench.step_time --quick    # fewer steps and repetitions

Two recipes, each with the same models, batch, sequence length, loss and optimizer in every variant:

* ``causal``: a Llama-family teacher (LlamaConfig, vocab 32,000, 4 layers, hidden 256) and a 2-layer
  student made from its layers 0 and 3 (``student_from_teacher``); random token sequences of 128
  tokens, batch 4; token-level forward KL (T=1) on every next-token position.
  Variants: ``lightning`` (``DistillationModule`` with ``litdistill.losses.ForwardKL``, task
  ``causal_lm``, trained by ``L.Trainer(max_steps=...)``), ``lightning_chunked`` (the same with
  ``ChunkedDivergence("forward_kl", chunk_size=128)``, litdistill's memory-lean loss),
  ``lightning_fused`` (``FusedLinearKD``: the LM heads applied chunk by chunk, so neither model's
  [tokens x vocab] logits exist; litdistill's loss for large vocabularies), ``plain`` (a hand-written PyTorch
  loop: same forward, same ``ForwardKL``, same
  AdamW) and ``trl`` (``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0``, ``seq_kd=False``,
  ``beta=0``: its generalized-JSD loss is then exactly the forward KL, on the same batches).
* ``classification``: the packaged all-MiniLM-L6-v2 as teacher (``load_pretrained``, 2 labels) and a
  2-layer student from its layers 0 and 3; random token ids, 64 tokens, batch 16; ``SoftTargetKL(T=2)``
  + ``HardCE`` (0.5 each). Variants: ``lightning`` and ``plain``.

Settings shared by all variants: fused AdamW (torch's single-kernel AdamW, the default of litdistill's
``conf/optimizer/adamw.yaml`` and of Hugging Face's Trainer; lr 1e-4, weight decay 0, no scheduler, no gradient
clipping), fp32, ``use_cache=False``, no gradient checkpointing (TRL's ``SFTConfig`` turns it on
and bf16 on by default; both are switched off so all variants run the same computation), no
progress bars or loggers, the same number of CPU threads.

Timing: the wall time between consecutive optimizer-step ends (Lightning ``on_train_batch_end``,
TRL ``on_step_end``, the loop's own end of iteration), so each step includes data loading and all
framework overhead. The first ``warmup`` steps are dropped; the median of the rest is the run's step
time. Each run is one fresh process; repetitions are interleaved (one run of every variant per
repetition, the order rotated each repetition) and the medians over repetitions are reported, with
ratios taken per repetition (variants side by side) and then the median.

Memory: see ``bench/common.py``: added peak RSS = VmHWM (reset after imports, models and data exist)
minus the RSS at that point, i.e. what training (framework objects, optimizer state, activations,
logits, gradients) adds on top of the models and data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.common import PeakMemory, log, machine_info, median, quiet, result_path, run_worker, write_json

NAME = "step_time"
CAUSAL = dict(
    vocab=32000,
    hidden=256,
    intermediate=768,
    heads=4,
    teacher_layers=4,
    student_layers=[0, 3],
    seq=128,
    batch=4,
    lr=1e-4,
    chunk_size=128,
)
CLASSIFICATION = dict(seq=64, batch=16, lr=1e-4, student_layers=[0, 3], temperature=2.0)
SIZES = {
    "full": dict(
        causal=dict(CAUSAL, steps=20, warmup=3),
        classification=dict(CLASSIFICATION, steps=15, warmup=3),
        reps=4,
        subprocess=True,
    ),
    "quick": dict(
        causal=dict(CAUSAL, steps=6, warmup=2),
        classification=dict(CLASSIFICATION, steps=4, warmup=2),
        reps=2,
        subprocess=True,
    ),
    "smoke": dict(
        causal=dict(
            CAUSAL, vocab=512, hidden=32, intermediate=64, heads=2, seq=16, batch=2, chunk_size=8, steps=2, warmup=1
        ),
        classification=dict(CLASSIFICATION, seq=16, batch=2, steps=2, warmup=1),
        reps=1,
        subprocess=False,
    ),
}
VARIANTS = {
    "causal": ("lightning", "lightning_chunked", "lightning_fused", "plain", "trl"),
    "classification": ("lightning", "plain"),
}
TARGETS = [  # (recipe, variant, reference, quantity, bound, description)
    ("causal", "lightning", "plain", "step_s", 1.05, "causal LM: Lightning step time <= 1.05x hand-written loop"),
    (
        "classification",
        "lightning",
        "plain",
        "step_s",
        1.05,
        "classification: Lightning step time <= 1.05x hand-written loop",
    ),
    ("causal", "lightning", "trl", "step_s", 0.8, "causal LM (vocab 32k), ForwardKL: step time <= 0.8x TRL GKDTrainer"),
    (
        "causal",
        "lightning",
        "trl",
        "added_peak_mib",
        0.5,
        "causal LM (vocab 32k), ForwardKL: peak memory <= 0.5x TRL GKDTrainer",
    ),
    # The same forward KL through litdistill's memory-lean losses (each judged; all rows are in the table).
    (
        "causal",
        "lightning_chunked",
        "trl",
        "step_s",
        0.8,
        "causal LM (vocab 32k), ChunkedDivergence: step time <= 0.8x TRL GKDTrainer",
    ),
    (
        "causal",
        "lightning_chunked",
        "trl",
        "added_peak_mib",
        0.5,
        "causal LM (vocab 32k), ChunkedDivergence: peak memory <= 0.5x TRL GKDTrainer",
    ),
    (
        "causal",
        "lightning_fused",
        "trl",
        "step_s",
        0.8,
        "causal LM (vocab 32k), FusedLinearKD: step time <= 0.8x TRL GKDTrainer",
    ),
    (
        "causal",
        "lightning_fused",
        "trl",
        "added_peak_mib",
        0.5,
        "causal LM (vocab 32k), FusedLinearKD: peak memory <= 0.5x TRL GKDTrainer",
    ),
]


# ---- models and data -------------------------------------------------------------------------------
def build_models(recipe: str, cfg: dict[str, Any]):
    import torch

    from litdistill.models.layer_subset import student_from_teacher

    torch.manual_seed(0)
    if recipe == "causal":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=cfg["vocab"],
            hidden_size=cfg["hidden"],
            intermediate_size=cfg["intermediate"],
            num_hidden_layers=cfg["teacher_layers"],
            num_attention_heads=cfg["heads"],
            num_key_value_heads=cfg["heads"],
            max_position_embeddings=max(256, cfg["seq"]),
            tie_word_embeddings=False,
            use_cache=False,
            pad_token_id=0,
        )
        teacher = LlamaForCausalLM(config)
    else:
        from litdistill.models.loading import load_pretrained, packaged_minilm

        teacher = load_pretrained(packaged_minilm(), task="classification", num_labels=2)
        teacher.config.use_cache = False
    student = student_from_teacher(teacher, layers=cfg["student_layers"])
    teacher.requires_grad_(False).eval()
    return teacher, student


def make_examples(recipe: str, cfg: dict[str, Any], n_batches: int) -> list[dict[str, Any]]:
    """Fixed-shape random examples (lists of ints), the same in every variant."""
    import torch

    g = torch.Generator().manual_seed(1234)
    n, t = n_batches * cfg["batch"], cfg["seq"]
    if recipe == "causal":
        ids = torch.randint(3, cfg["vocab"], (n, t), generator=g)
        return [{"input_ids": row.tolist(), "attention_mask": [1] * t, "labels": row.tolist()} for row in ids]
    ids = torch.randint(1000, 30000, (n, t), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    labels = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": r.tolist(), "attention_mask": [1] * t, "labels": int(y)} for r, y in zip(ids, labels)]


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {k: torch.tensor([e[k] for e in examples]) for k in examples[0]}


def build_losses(recipe: str, cfg: dict[str, Any], variant: str = "plain") -> dict[str, Any]:
    from litdistill.losses import ChunkedDivergence, ForwardKL, FusedLinearKD, HardCE, SoftTargetKL

    if recipe == "causal":
        if variant == "lightning_chunked":
            return {"kd": ChunkedDivergence("forward_kl", chunk_size=cfg["chunk_size"])}
        if variant == "lightning_fused":  # student and teacher logits are never built whole
            return {"kd": FusedLinearKD("forward_kl", chunk_size=cfg["chunk_size"], ce_weight=0.0)}
        return {"kd": ForwardKL()}
    return {"kd": SoftTargetKL(temperature=cfg["temperature"], weight=0.5), "ce": HardCE(weight=0.5)}


def task_of(recipe: str) -> str:
    return "causal_lm" if recipe == "causal" else "classification"


# ---- the variants ----------------------------------------------------------------------------------
def run_lightning(recipe, cfg, teacher, student, examples, stamps, variant="lightning"):

    import lightning as L
    from torch.utils.data import DataLoader

    from litdistill import DistillationModule
    from litdistill.training.optim import adamw

    class Stamp(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            stamps.append((time.perf_counter(), time.process_time()))

    module = DistillationModule(
        student,
        teacher,
        build_losses(recipe, cfg, variant),
        optimizer=adamw(cfg["lr"], weight_decay=0.0),  # fused AdamW, as the plain loop and TRL
        task=task_of(recipe),
    )
    loader = DataLoader(examples, batch_size=cfg["batch"], shuffle=False, collate_fn=collate)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(loader),
        max_epochs=1,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Stamp()],
    )
    stamps.append((time.perf_counter(), time.process_time()))
    trainer.fit(module, train_dataloaders=loader)
    return float(trainer.callback_metrics.get("train/loss_step", float("nan")))


def run_plain(recipe, cfg, teacher, student, examples, stamps):
    """The hand-written baseline: the only training loop in the benchmarks that is not the library's."""
    import torch
    from torch.utils.data import DataLoader

    from litdistill.core.outputs import ModelOutputs

    losses = build_losses(recipe, cfg)
    loader = DataLoader(examples, batch_size=cfg["batch"], shuffle=False, collate_fn=collate)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg["lr"], weight_decay=0.0, fused=True)
    student.train()
    teacher.eval()
    loss = torch.zeros(())
    stamps.append((time.perf_counter(), time.process_time()))
    for batch in loader:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        s_logits = student(**inputs).logits
        with torch.no_grad():
            t_logits = teacher(**inputs).logits
        labels = batch["labels"]
        extra = {}
        if recipe == "causal":
            s_logits, t_logits, labels = s_logits[:, :-1], t_logits[:, :-1], labels[:, 1:]
            extra["token_mask"] = labels != -100
        targets = {"labels": labels, **extra}
        loss = sum(
            fn.weight * fn(ModelOutputs(logits=s_logits), ModelOutputs(logits=t_logits), targets)
            for fn in losses.values()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append((time.perf_counter(), time.process_time()))
    return float(loss.detach())


def run_trl(recipe, cfg, teacher, student, examples, stamps, out_dir):
    if recipe != "causal":
        raise ValueError("TRL's GKDTrainer is a causal-LM trainer")
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from litdistill.models.loading import packaged_minilm

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append((time.perf_counter(), time.process_time()))

    # GKDTrainer wants a tokenizer (for the pad id of its generation config); the batches are already token ids.
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm())
    args = GKDConfig(
        output_dir=out_dir,
        lmbda=0.0,
        seq_kd=False,
        beta=0.0,
        temperature=1.0,
        per_device_train_batch_size=cfg["batch"],
        max_steps=len(examples) // cfg["batch"],
        learning_rate=cfg["lr"],
        weight_decay=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        optim="adamw_torch_fused",
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        max_length=cfg["seq"],
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=0,
    )
    dataset = Dataset.from_list(examples)
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collate,
        callbacks=[Stamp()],
    )
    stamps.append((time.perf_counter(), time.process_time()))
    result = trainer.train()
    return float(result.training_loss)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of one variant in this process: per-step times and added peak memory."""
    import tempfile

    quiet()
    import torch

    torch.set_num_threads(spec["threads"])
    recipe, variant, cfg = spec["recipe"], spec["variant"], spec["cfg"]
    if variant.startswith("lightning"):
        import lightning  # noqa: F401  (framework imports happen before the memory baseline)

        import litdistill.training.module  # noqa: F401
    elif variant == "trl":
        import trl.experimental.gkd  # noqa: F401
    teacher, student = build_models(recipe, cfg)
    examples = make_examples(recipe, cfg, cfg["warmup"] + cfg["steps"])
    stamps: list[float] = []
    memory = PeakMemory().start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if variant.startswith("lightning"):
            loss = run_lightning(recipe, cfg, teacher, student, examples, stamps, variant)
        elif variant == "plain":
            loss = run_plain(recipe, cfg, teacher, student, examples, stamps)
        elif variant == "trl":
            loss = run_trl(recipe, cfg, teacher, student, examples, stamps, tmp)
        else:
            raise ValueError(f"unknown variant {variant!r}")
    wall = time.perf_counter() - t0
    mem = memory.stop()
    steps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    cpu_steps = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    expected = cfg["warmup"] + cfg["steps"]
    if len(steps) != expected:
        raise RuntimeError(f"{recipe}/{variant}: recorded {len(steps)} steps, expected {expected}")
    return {
        "recipe": recipe,
        "variant": variant,
        "step_s": median(steps[cfg["warmup"] :]),
        "cpu_step_s": median(cpu_steps[cfg["warmup"] :]),
        "steps_s": steps,
        "cpu_steps_s": cpu_steps,
        "warmup": cfg["warmup"],
        "final_loss": loss,
        "wall_s": wall,
        "threads": torch.get_num_threads(),
        **mem,
    }


# ---- driver ----------------------------------------------------------------------------------------
def _available(variant: str) -> str | None:
    if variant != "trl":
        return None
    try:
        import trl.experimental.gkd  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"trl.experimental.gkd not importable: {exc}"
    return None


def run(mode: str = "full", threads: int = 2, results_dir=None, recipes: list[str] | None = None) -> dict[str, Any]:
    sizes = SIZES[mode]
    recipes = recipes or list(VARIANTS)
    start = time.perf_counter()
    runs: dict[str, dict[str, list[dict]]] = {r: {v: [] for v in VARIANTS[r]} for r in recipes}
    skipped: dict[str, str] = {}
    for rep in range(sizes["reps"]):
        for recipe in recipes:
            variants = [v for v in VARIANTS[recipe] if not _available(v)]
            for v in VARIANTS[recipe]:
                if _available(v):
                    skipped[f"{recipe}/{v}"] = _available(v)
            k = rep % len(variants)
            for variant in variants[k:] + variants[:k]:  # rotated order: drift hits every variant alike
                spec = {"recipe": recipe, "variant": variant, "cfg": sizes[recipe], "threads": threads}
                r = run_worker("bench.step_time", spec) if sizes["subprocess"] else measure(spec)
                runs[recipe][variant].append(r)
                log(
                    f"step_time rep {rep + 1}/{sizes['reps']} {recipe:14s} {variant:17s} "
                    f"{1000 * r['step_s']:8.1f} ms/step  +{r['added_peak_mib']:7.0f} MiB"
                )
    summary = summarize(runs)
    result = {
        "benchmark": NAME,
        "mode": mode,
        "threads": threads,
        "sizes": sizes,
        "summary": summary,
        "targets": evaluate_targets(summary),
        "skipped": skipped,
        "runs": runs,
        "process": "fresh subprocess per run" if sizes["subprocess"] else "in-process (smoke)",
        "memory_method": next((r["memory_method"] for rr in runs.values() for v in rr.values() for r in v), None),
        "machine": machine_info(),
        "wall_s": time.perf_counter() - start,
        "command": "python -m bench.step_time" + ("" if mode == "full" else f" --{mode}"),
    }
    write_json(result_path(NAME, mode, results_dir), result)
    return result


def summarize(runs: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Median over repetitions, and per-repetition ratios to every other variant of the recipe."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for recipe, by_variant in runs.items():
        rows = {}
        for variant, rs in by_variant.items():
            if not rs:
                continue
            rows[variant] = {
                "step_ms": 1000 * median(r["step_s"] for r in rs),
                "cpu_step_ms": 1000 * median(r["cpu_step_s"] for r in rs),
                "added_peak_mib": median(r["added_peak_mib"] for r in rs),
                "peak_rss_mib": median(r["peak_rss_mib"] for r in rs),
                "final_loss": rs[-1]["final_loss"],
                "reps": len(rs),
            }
        for variant, row in rows.items():
            for ref in rows:
                if ref == variant:
                    continue
                pairs = list(zip(by_variant[variant], by_variant[ref]))
                row[f"step_ratio_vs_{ref}"] = median(a["step_s"] / b["step_s"] for a, b in pairs)
                row[f"cpu_ratio_vs_{ref}"] = median(a["cpu_step_s"] / b["cpu_step_s"] for a, b in pairs)
                row[f"mem_ratio_vs_{ref}"] = median(
                    a["added_peak_mib"] / b["added_peak_mib"] for a, b in pairs if b["added_peak_mib"] > 0
                )
        summary[recipe] = rows
    return summary


def evaluate_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for recipe, variant, ref, quantity, bound, description in TARGETS:
        row = summary.get(recipe, {}).get(variant, {})
        key = ("step_ratio_vs_" if quantity == "step_s" else "mem_ratio_vs_") + ref
        value = row.get(key)
        out.append(
            {
                "target": description,
                "bound": bound,
                "measured": value,
                "unit": "x",
                "met": None if value is None or value != value else bool(value <= bound),
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    g.add_argument("--smoke", action="store_true", help="tiny models, in-process; checks the plumbing only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recipes", default=",".join(VARIANTS), help="comma-separated: causal,classification")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return None
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    result = run(mode, args.threads, args.results_dir, [r for r in args.recipes.split(",") if r])
    print(json.dumps({"summary": result["summary"], "targets": result["targets"]}, indent=2), file=sys.stdout)
    return result


if __name__ == "__main__":
    main()
