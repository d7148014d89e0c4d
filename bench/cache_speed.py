"""Teacher cache: epoch time online vs cached, bytes per token, and the student's quality from top-k.

    python -m bench.cache_speed            # full: about 14-16 minutes on 2 cores
    python -m bench.cache_speed --quick    # small sizes, about a minute
    python -m bench.cache_speed --smoke    # tiny sizes (plumbing; python -m bench --smoke)

Everything runs side by side in one process, ``torch.set_num_threads(--threads)``, default 1: the
ratios are what is measured, both sides get the same threads, and on a shared 2-core machine
OpenMP barriers make 2-thread timings of small ops erratic (a 5x spread between repetitions).

Speed: two rows per recipe (three causal), all with a teacher of 3x the student's depth
--------------------------------------------------------------------------------------
* **classification** (the default experiment's models): the packaged all-MiniLM-L6-v2 teacher (6
  layers, hidden 384), SoftTargetKL(T=2) + HardCE on the project's drug-event sentences, batch 32;
  cached = full logits (float16).

  - *layer subset*: a 2-layer student from the teacher's layers 0 and 3
    (``student_from_teacher(every=3)``, the default experiment's shape): same width, 1/3 depth.
  - *narrower*: a fresh 2-layer BERT student of hidden 192 (6 heads of 32, the teacher's head size;
    FFN 768 = 4x hidden, as MiniLM), built like ``student=scaled`` from the teacher's config with
    the teacher's tokenizer and vocabulary.

* **causal LM** (the tiny causal recipe): Llama models on the packaged 30,522-token vocabulary,
  ForwardKL + HardCE on the response tokens of the generated drug-safety Q&A, batch 8; cached =
  top-k (k = 64, raw).

  - *layer subset*: the recipe's 6-layer teacher (hidden 64, FFN 128) fine-tuned on the data, and a
    2-layer student from its layers 0 and 3 (the quality runs below give these epochs).
  - *narrower*: a 6-layer teacher of hidden 128 (8 heads, 4 KV heads, FFN 256) and the
    ``student=tiny_llama`` student (2 layers, hidden 64, 4 heads, 2 KV heads, FFN 128, seed 1).
    Randomly initialised and not fine-tuned: the weights do not change what an epoch costs.
  - *LLM-like head share*: the two rows above keep the packaged 30,522-token vocabulary at hidden
    64-128, so the LM head is 80-96% of each model's forward FLOPs; in real LLM distillation it is
    about 7% (Llama-3.1-8B: 32 x 218 M layer parameters against a 128,256 x 4,096 head) to 21%
    (Llama-3.2-1B: 16 x 61 M against 128,256 x 2,048). This row changes the vocabulary and widths
    only: a byte-level BPE tokenizer trained with ``tokenizers`` on the benchmark's own generated
    training text (prompts and responses of the 240 training examples; before any timing), wrapped
    as a ``PreTrainedTokenizerFast`` with ``<pad>`` and ``<eos>`` and saved to a scratch folder
    (``SFTDataModule`` takes a path). The text has only ~90 distinct words, so BPE stops after ~680
    entries (256 bytes, 2 specials, merges up to whole words); the vocabulary is filled with
    reserved tokens to ``LM_SMALL_VOCAB`` = 2,048, so the head, the log-softmax and the KL are 2,048
    wide (a real vocabulary also holds many tokens a given SFT set never produces). Same examples,
    ``max_length`` and batch 8 as the other causal rows; the responses end in ``<eos>`` here.
    Teacher: 6 layers x 256 hidden, 8 heads of 32, 2 KV heads, FFN 896 (3.5x, as 8B: 14,336 /
    4,096); student: fresh, 2 layers x 128, 4 heads of 32, 1 KV head, FFN 512 (4x, as 1B: 8,192 /
    2,048); GQA 4:1 as both. 3x depth, 2x narrower: the 8B->1B width ratio. Random init, k = 64 raw.
    Why 2,048: the smallest vocabulary of the range first considered (2,048-4,096). It puts the
    teacher's head share at 9% (inside 7-21%) and the student's at 35%; a 2-layer student has 1/8 of
    the 1B's depth, so its head weighs more, and bringing it to ~20% would need ~1,000 tokens
    (teacher 5%), while 4,096 gives 17% / 52%. Teacher : student forward FLOPs per token is 7.6
    (8B : 1B by the same count: 15.0 / 2.47 GFLOPs = 6.1), so the FLOP-only bound is 3.5x (8B->1B:
    3.0x). The shapes and the vocabulary were fixed from these counts before any timing.

The narrower rows take the issue's condition literally (3x depth) with the width ratio of real
recipes: 2x, as Llama-3.1-8B (hidden 4096) to Llama-3.2-1B (hidden 2048). The shapes were fixed
from that rule before any timing; they are not tuned to reach 2x.

The output states, for each model, the forward FLOPs per token of the transformer layers
(``2 x layer parameters + 4 x seq x hidden`` per layer for attention) and of the head
(LM head: ``2 x V x hidden``; classification: pooler + classifier per example, over the mean
sequence length), the head's share, and the FLOP-only bound of the speed-up,
``(teacher forward + student step) / student step`` with a step = 3 forwards (forward + backward).
On the causal recipe the 30,522-way head dominates at these widths (it also brings the
full-vocabulary log-softmax, CE and KL, which are memory-bound and not in these FLOPs).

*Epoch time* is the wall time of the training epoch (Lightning's ``on_train_epoch_start`` to
``on_train_epoch_end``: data loading, both forwards, loss, backward, optimizer), validation off.
Online and cached epochs alternate (online, cached, online, cached, ...) so machine noise hits
both alike; the speed-up is the median of the per-pair ratios. The store is built once before the
cached epochs ("build"); with ``cache=auto`` a run's first epoch costs build + one cached epoch and
every later epoch (and every later run or sweep trial) one cached epoch. The teacher's forward
alone over the same batches is timed too: the cache can remove no more than that (plus, for top-k,
the teacher's full-vocabulary log-softmax and KL), so ``online / (online - teacher forward)`` bounds
its speed-up, and ``cached / (online - teacher forward)`` <= 1 shows the cached path adds nothing.

*Bytes per token*: the store's total shard bytes (headers and offsets included) over the number of
stored rows (real response tokens), for k = 64 and 128, codecs ``raw`` (uint16 ids + float16
log-probs, the default) and ``packed`` (8-bit log-prob codes, sorted id gaps, zlib); and the share
of rows with empty slots (``packed`` folds entries > 15.9 nats below the top-1 into the tail).

Quality (the causal layer-subset recipe)
----------------------------------------
The teacher is fine-tuned with CE for ``lm_finetune_epochs`` (full: 10 epochs of the 240 training
examples, lr 3e-3): a fixed setting of the recipe, chosen once from the *teacher's* perplexity on
a 100-example validation split, which stops improving there (1.30 after 9 epochs, 1.27 after 10,
1.27 after 11 and 12; after 1 epoch, the old setting, the teacher was at 13% token accuracy,
perplexity 92: no teacher to distil from). The teacher's own token accuracy and perplexity on the test split are
reported,
with two baselines from the training responses: the majority token (accuracy) and an add-one
unigram model (perplexity).

The student is trained for ``lm_epochs`` (3) online (full teacher logits) and from the cache
(top-k, k = 64 raw; k = 128 packed) with 5 seeds each (data order; seed s of every variant sees
the same batches), then scored on ``lm_test`` (500) held-out examples: token accuracy and
perplexity on the gold responses. Loss: ForwardKL (weight 0.5) + HardCE (weight 0.5).

That pair has little power on this recipe: the labels carry the task (a labels-only student
scores above the online KD + CE one), so "cached = online" there says little about the teacher
signal. Two more sets of rows, with ``lm_extra_seeds`` (full: seeds 0, 1, 2; 3 rather than 5 to
keep the full run under ~16 minutes on 2 cores), same test set, same bootstrap:

* **KD only**: online and cached (k = 64 raw) students trained with ForwardKL (weight 1) alone, no
  CE: the student learns only from the teacher's distribution, so what the top-k truncation loses
  shows. Compared cached - online, with the same targets as the KD + CE pair.
* **labels only** (HardCE, no teacher): a reference, no target; its delta is against the online
  KD + CE student on the same seeds (the gap the teacher signal makes), and against the online KD-
  only student (in the JSON and the note under the table).

The difference cached - online in token accuracy comes with a **paired bootstrap** 95% CI (2,000
resamples, percentile): each resample draws the seeds with replacement (the same seeds for both
variants: paired by seed) and the test examples with replacement (the same examples for both:
paired by example) and recomputes both pooled token accuracies from per-example correct-token
counts. Resampling the examples alone (the CI over per-example counts summed over seeds, also
reported) treats the 5 training runs as fixed and misses the seed-to-seed noise; the two-way
resampling includes it, so the judgement uses the two-way CI. Perplexity: the ratio cached /
online with the same two-way CI (from per-example NLL sums).

* **within noise**: the 95% CI of the delta contains 0;
* **non-inferior**: the CI's lower bound is >= -0.5 point of token accuracy (-0.005).

Results: ``bench/results/cache_speed.json`` (``_quick``/``_smoke`` suffixes) and ``cache_speed.md``.
Run directly (``python -m bench.cache_speed``), it also replaces this section in the summary of the
same mode (``bench/results/bench.json``), so ``python -m bench --render`` puts it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, log, machine_info, quiet, result_path, write_json

SIZES = {
    "full": dict(
        cls_train=320,
        cls_reps=3,
        lm_train=240,
        lm_test=500,
        lm_epochs=3,
        lm_seeds=(0, 1, 2, 3, 4),
        lm_finetune_epochs=10,
        lm_variants=("online", "cached_k64_raw", "cached_k128_packed"),
        narrow_reps=3,
        lm_extra_seeds=(0, 1, 2),
        bootstrap=2000,
    ),
    "quick": dict(
        cls_train=64,
        cls_reps=2,
        lm_train=64,
        lm_test=100,
        lm_epochs=1,
        lm_seeds=(0, 1),
        lm_finetune_epochs=3,
        lm_variants=("online", "cached_k64_raw"),
        narrow_reps=2,
        lm_extra_seeds=(0, 1),
        bootstrap=1000,
    ),
    "smoke": dict(
        cls_train=32,
        cls_reps=1,
        lm_train=32,
        lm_test=16,
        lm_epochs=1,
        lm_seeds=(0,),
        lm_finetune_epochs=1,
        lm_variants=("online", "cached_k64_raw"),
        narrow_reps=1,
        lm_extra_seeds=(0,),
        bootstrap=200,
    ),
}
# the quality variants: (loss, teacher signal); signal "online" = the teacher's full logits, (k, codec) = a top-k store
VARIANTS = {
    "online": ("kd_ce", "online"),
    "cached_k64_raw": ("kd_ce", (64, "raw")),
    "cached_k128_packed": ("kd_ce", (128, "packed")),
    "online_kd_only": ("kd_only", "online"),
    "cached_k64_raw_kd_only": ("kd_only", (64, "raw")),
    "labels_only": ("labels", None),
}
EXTRA_VARIANTS = ("online_kd_only", "cached_k64_raw_kd_only", "labels_only")  # run with lm_extra_seeds
REFERENCE = {
    "cached_k64_raw": "online",
    "cached_k128_packed": "online",
    "cached_k64_raw_kd_only": "online_kd_only",
    "labels_only": "online",
}  # delta = variant - reference, on the seeds both have
NO_TARGET = {"labels_only"}  # a reference row: the gap the teacher signal makes
VARIANT_NAMES = {
    "online": "KD + CE, online (full teacher logits)",
    "cached_k64_raw": "KD + CE, cached_k64_raw",
    "cached_k128_packed": "KD + CE, cached_k128_packed",
    "online_kd_only": "KD only, online (full teacher logits)",
    "cached_k64_raw_kd_only": "KD only, cached_k64_raw",
    "labels_only": "labels only (HardCE, no teacher)",
}
NON_INFERIORITY = -0.005  # token accuracy: the CI's lower bound must be at least this
FINETUNE_LR = 3e-3
CLS_NARROW = {"num_hidden_layers": 2, "hidden_size": 192, "num_attention_heads": 6, "intermediate_size": 768}
LM_TEACHER = {
    "model_type": "llama",
    "vocab_size": 30522,
    "hidden_size": 64,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "pad_token_id": 0,
}
LM_WIDE_TEACHER = {
    **LM_TEACHER,
    "hidden_size": 128,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "intermediate_size": 256,
}
LM_TINY_STUDENT = {**LM_TEACHER, "num_hidden_layers": 2}  # conf/student/tiny_llama.yaml (seed 1)
LM_SMALL_VOCAB = 2048  # the LLM-like row: BPE trained on the benchmark's text, filled with reserved tokens to this size
LM_LLM_TEACHER = {
    "model_type": "llama",
    "vocab_size": LM_SMALL_VOCAB,
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 896,
    "max_position_embeddings": 256,
}
LM_LLM_STUDENT = {
    **LM_LLM_TEACHER,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "intermediate_size": 512,
}


# ---- helpers -------------------------------------------------------------------------------------
def _timer():
    import lightning as L

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def _fit(module, datamodule, epochs: int) -> list[float]:
    import lightning as L

    timer = _timer()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.seconds


def _teacher_pass(teacher, datamodule, task: str = "classification") -> float:
    """Seconds of the teacher's forward alone over one epoch of training batches (what the cache removes)."""
    import torch

    from litdistill.core.forward import run_model

    batches = list(datamodule.train_dataloader())  # loading is not the teacher's: the online epoch keeps it
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            run_model(teacher, batch, frozenset({"logits"}), task)
    return time.perf_counter() - start


def _optimizer(lr: float):
    """litdistill's default optimizer (fused AdamW, weight decay 0.01), as the default experiment uses."""
    from litdistill.training.optim import adamw

    return adamw(lr)


def _build(
    store_dir: Path, key: dict, teacher, datamodule, task: str, outputs: str, k: int | None, codec: str, batch_size: int
) -> tuple[Any, float, dict]:
    from litdistill.cache import StoreSpec, TeacherStore, build_store, split_sources

    spec = StoreSpec(task=task, outputs=outputs, k=k, dtype="float16", codec=codec, shard_size=256)
    store = TeacherStore(store_dir, {**key, "outputs": outputs, "k": k, "codec": codec})
    start = time.perf_counter()
    manifest = build_store(
        store, teacher, split_sources(datamodule, ["train", "validation"]), spec, batch_size=batch_size, progress=False
    )
    return store, time.perf_counter() - start, manifest


def _ratios(online: list[float], cached: list[float], teacher_fwd: float) -> dict[str, Any]:
    pairs = [a / b for a, b in zip(online, cached) if b > 0]
    on, ca = statistics.median(online), statistics.median(cached)
    rest = on - teacher_fwd  # the online epoch without its teacher; <= 0 only from noise on tiny (smoke) sizes
    return {
        "online_epoch_s": on,
        "cached_epoch_s": ca,
        "online_epochs_s": online,
        "cached_epochs_s": cached,
        "speedup": statistics.median(pairs) if pairs else None,
        "teacher_forward_s_per_epoch": teacher_fwd,
        "speedup_bound": on / rest if rest > 0 else None,
        "cached_vs_online_minus_teacher": ca / rest if rest > 0 else None,
    }


def _mean_seq_len(datamodule) -> float:
    lengths = [int(b["input_ids"].shape[1]) for b in datamodule.train_dataloader()]
    return sum(lengths) / len(lengths)


def _shape(model, task: str, seq_len: float) -> dict[str, Any]:
    """Parameters and forward FLOPs per token of the layer stack and of the head (see the module docstring)."""
    from litdistill.models.layer_subset import layer_stack
    from litdistill.models.loading import count_parameters

    _, stack = layer_stack(model)
    cfg = model.config
    layer_params = sum(p.numel() for p in stack.parameters())
    total = count_parameters(model)
    if task == "causal_lm":
        head_params = model.get_output_embeddings().weight.numel()
        head_flops = 2.0 * head_params  # every position's logits
        embed_params = model.get_input_embeddings().weight.numel()
    else:
        embeddings = getattr(model.base_model, "embeddings", None)
        embed_params = (
            sum(p.numel() for p in embeddings.parameters())
            if embeddings is not None
            else model.get_input_embeddings().weight.numel()
        )
        head_params = total - layer_params - embed_params  # pooler + classifier
        head_flops = 2.0 * head_params / seq_len  # once per example
    layer_flops = 2.0 * layer_params + len(stack) * 4.0 * seq_len * cfg.hidden_size
    return {
        "layers": len(stack),
        "hidden": cfg.hidden_size,
        "params_m": total / 1e6,
        "embedding_params_m": embed_params / 1e6,
        "layer_params_m": layer_params / 1e6,
        "head_params_m": head_params / 1e6,
        "layer_mflops_per_token": layer_flops / 1e6,
        "head_mflops_per_token": head_flops / 1e6,
        "head_share": head_flops / (head_flops + layer_flops),
    }


def _flop_bound(teacher: dict[str, Any], student: dict[str, Any]) -> float:
    t = teacher["layer_mflops_per_token"] + teacher["head_mflops_per_token"]
    s = 3.0 * (student["layer_mflops_per_token"] + student["head_mflops_per_token"])
    return (t + s) / s


def _speed(
    pairs: list[tuple[str, Any, Any, Any, Any]], teacher, dm, task: str, reps: int
) -> dict[str, dict[str, list[float]]]:
    """Alternate one online and one cached epoch per row, then the teacher's forward, ``reps`` times."""
    times: dict[str, dict[str, list[float]]] = {name: {"online": [], "cached": []} for name, *_ in pairs}
    teacher_s = []
    for rep in range(reps):
        log(f"{task}: speed rep {rep + 1}/{reps}")
        for name, online, online_dm, cached, cached_dm in pairs:
            times[name]["online"] += _fit(online, online_dm, 1)
            times[name]["cached"] += _fit(cached, cached_dm, 1)
        teacher_s.append(_teacher_pass(teacher, dm, task))
    for row in times.values():
        row["teacher"] = teacher_s
    return times


# ---- classification --------------------------------------------------------------------------------
def classification(sizes: dict, work: Path) -> dict[str, Any]:
    import lightning as L

    from litdistill.cache import CachedTeacher, CachedTeacherDataModule
    from litdistill.data import TextClassificationDataModule
    from litdistill.data.synthetic import make_drug_event_dataset
    from litdistill.losses import HardCE, SoftTargetKL
    from litdistill.models.layer_subset import student_from_teacher
    from litdistill.models.loading import from_config, load_pretrained, packaged_minilm
    from litdistill.training.module import DistillationModule

    L.seed_everything(0, verbose=False)
    files = make_drug_event_dataset(str(work / "cls_data"), n_train=sizes["cls_train"], n_val=32, n_test=32, seed=0)
    dm = TextClassificationDataModule(tokenizer=packaged_minilm(), data_files=files, max_length=48, batch_size=32)
    dm.setup("fit")
    teacher = load_pretrained(packaged_minilm(), task="classification", num_labels=2).eval()
    students = {
        "layer_subset": student_from_teacher(teacher, every=3),
        "narrow": from_config(CLS_NARROW, base=packaged_minilm(), task="classification", num_labels=2, seed=0),
    }
    losses = lambda: {"kd": SoftTargetKL(temperature=2.0, weight=0.5), "ce": HardCE(weight=0.5)}  # noqa: E731
    store, build_s, manifest = _build(
        work / "cls_store", {"recipe": "cls"}, teacher, dm, "classification", "logits", None, "raw", 64
    )
    cached_dm = CachedTeacherDataModule(dm, store, "classification")
    pairs = []
    for name, student in students.items():
        online = DistillationModule(copy.deepcopy(student), teacher, losses(), optimizer=_optimizer(5e-5))
        cached = DistillationModule(
            copy.deepcopy(student), CachedTeacher(manifest), losses(), optimizer=_optimizer(5e-5)
        )
        pairs.append((name, online, dm, cached, cached_dm))
    times = _speed(pairs, teacher, dm, "classification", sizes["cls_reps"])
    seq = _mean_seq_len(dm)
    t_shape = _shape(teacher, "classification", seq)
    rows = {}
    labels = {
        "layer_subset": "2 layers, hidden 384 (teacher layers 0, 3)",
        "narrow": "2 layers, hidden 192, 6 heads, FFN 768 (fresh, teacher's config and vocabulary)",
    }
    for name, student in students.items():
        s_shape = _shape(student, "classification", seq)
        rows[name] = {
            "student": labels[name],
            "student_shape": s_shape,
            "flop_bound": _flop_bound(t_shape, s_shape),
            **_ratios(times[name]["online"], times[name]["cached"], statistics.median(times[name]["teacher"])),
        }
    return {
        "teacher": "all-MiniLM-L6-v2 (packaged), 6 layers, hidden 384",
        "teacher_shape": t_shape,
        "mean_seq_len": seq,
        "train_examples": sizes["cls_train"],
        "batches_per_epoch": len(dm.train_dataloader()),
        "batch_size": 32,
        "build_s": build_s,
        "bytes_per_example": manifest["bytes_per_row"],
        "store_bytes": manifest["bytes"],
        "rows": rows,
    }


# ---- causal LM: evaluation ------------------------------------------------------------------------------
def _per_example(model, loader) -> dict[str, list]:
    """Per test example: correct response tokens (argmax), response tokens, summed NLL of the gold tokens."""
    import torch
    import torch.nn.functional as F

    from litdistill.core.forward import align_labels, run_model

    was_training = model.training
    model.eval()
    correct, tokens, nll = [], [], []
    with torch.no_grad():
        for batch in loader:
            batch = align_labels({k: v for k, v in batch.items() if torch.is_tensor(v)}, "causal_lm")
            logits = run_model(model, batch, frozenset({"logits"}), "causal_lm").logits.float()  # [B, T-1, V]
            labels = batch["labels"]
            mask = labels != -100
            correct += ((logits.argmax(-1) == labels) & mask).sum(1).tolist()
            tokens += mask.sum(1).tolist()
            ce = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
            )
            nll += ce.view(labels.shape).sum(1).tolist()
    model.train(was_training)
    return {"correct": correct, "tokens": tokens, "nll": nll}


def _metrics(ex: dict[str, list]) -> dict[str, float]:
    n = sum(ex["tokens"])
    return {"token_acc": sum(ex["correct"]) / max(n, 1), "perplexity": math.exp(min(sum(ex["nll"]) / max(n, 1), 50.0))}


def _baselines(dm, vocab: int, test_tokens: int) -> dict[str, Any]:
    """Majority token (accuracy) and an add-one unigram model (perplexity), both from the training responses."""
    import torch

    counts = torch.zeros(vocab, dtype=torch.float64)
    for batch in dm.train_dataloader():
        labels = batch["labels"][:, 1:]
        counts += torch.bincount(labels[labels != -100], minlength=vocab).double()
    test = torch.cat([b["labels"][:, 1:][b["labels"][:, 1:] != -100] for b in dm.test_dataloader()])
    assert test.numel() == test_tokens
    majority = int(counts.argmax())
    logp = ((counts + 1) / (counts.sum() + vocab)).log()
    return {
        "majority_token_acc": float((test == majority).double().mean()),
        "unigram_perplexity": math.exp(float(-logp[test].mean())),
        "majority_token_id": majority,
    }


def paired_bootstrap(
    online: dict[str, Any], cached: dict[str, Any], tokens: list[int], resamples: int, seed: int = 0
) -> dict[str, Any]:
    """Delta cached - online in pooled token accuracy (and the perplexity ratio) with 95% percentile CIs.

    ``online`` / ``cached``: ``correct`` and ``nll`` [seeds][examples], seeds paired by index. Two CIs:
    resampling the test examples (same draw for both variants) with the seeds fixed, and resampling
    seeds (paired) and examples together.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    c_on, c_ca = np.asarray(online["correct"], float), np.asarray(cached["correct"], float)  # [S, N]
    l_on, l_ca = np.asarray(online["nll"], float), np.asarray(cached["nll"], float)
    n_tok = np.asarray(tokens, float)  # [N]
    seeds, examples = c_on.shape
    d_c, d_l = c_ca - c_on, l_ca - l_on
    delta = d_c.sum() / (seeds * n_tok.sum())
    log_ratio = d_l.sum() / (seeds * n_tok.sum())
    w_ex = rng.multinomial(examples, np.full(examples, 1.0 / examples), size=resamples).astype(float)  # [B, N]
    w_seed = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=resamples).astype(float)  # [B, S]
    denom = seeds * (w_ex @ n_tok)  # [B]
    ex_only = (w_ex @ d_c.sum(0)) / denom
    two_way = ((w_seed @ d_c) * w_ex).sum(1) / denom
    two_way_ppl = ((w_seed @ d_l) * w_ex).sum(1) / denom

    def ci(x):
        lo, hi = np.percentile(x, [2.5, 97.5])
        return [float(lo), float(hi)]

    out = {
        "delta": float(delta),
        "ci95": ci(two_way),
        "ci95_examples_only": ci(ex_only),
        "perplexity_ratio": math.exp(log_ratio),
        "perplexity_ratio_ci95": [math.exp(v) for v in ci(two_way_ppl)],
        "resamples": resamples,
        "seeds": seeds,
        "examples": examples,
        "tokens_per_seed": int(n_tok.sum()),
    }
    out["within_noise"] = out["ci95"][0] <= 0.0 <= out["ci95"][1]
    out["non_inferior"] = out["ci95"][0] >= NON_INFERIORITY
    return out


def _empty_slot_share(store) -> float:
    reader = store.reader("train", verify=False)
    rows = empty = 0
    for i in range(len(reader)):
        ids = reader.example(i).ids
        rows += ids.shape[0]
        empty += int((ids < 0).any(-1).sum())
    return empty / max(rows, 1)


# ---- causal LM ----------------------------------------------------------------------------------------
def causal(sizes: dict, work: Path) -> dict[str, Any]:
    import lightning as L

    from litdistill.cache import CachedTeacher, CachedTeacherDataModule
    from litdistill.data.sft import SFTDataModule
    from litdistill.data.synthetic import make_sft_dataset
    from litdistill.losses import ForwardKL, HardCE
    from litdistill.models.layer_subset import student_from_teacher
    from litdistill.models.loading import from_config, packaged_minilm
    from litdistill.training.module import DistillationModule

    L.seed_everything(0, verbose=False)
    files = make_sft_dataset(
        str(work / "lm_data"), n_train=sizes["lm_train"], n_val=32, n_test=sizes["lm_test"], seed=0
    )
    dm = SFTDataModule(tokenizer=packaged_minilm(), data_files=files, max_length=64, batch_size=8)
    dm.setup("fit")
    teacher = from_config(dict(LM_TEACHER), task="causal_lm", seed=0)
    log(f"causal: fine-tuning the teacher for {sizes['lm_finetune_epochs']} epochs")
    start = time.perf_counter()
    _fit(
        DistillationModule(teacher, None, {"ce": HardCE()}, optimizer=_optimizer(FINETUNE_LR), task="causal_lm"),
        dm,
        sizes["lm_finetune_epochs"],
    )
    finetune_s = time.perf_counter() - start
    teacher.requires_grad_(False)
    teacher.eval()
    vocab = teacher.config.vocab_size
    teacher_ex = _per_example(teacher, dm.test_dataloader())
    test_tokens = teacher_ex["tokens"]
    baselines = _baselines(dm, vocab, sum(test_tokens))
    student0 = student_from_teacher(teacher, every=3)  # layers 0 and 3: the teacher has 3x its depth
    kd_losses = lambda: {"kd": ForwardKL(temperature=1.0, weight=0.5), "ce": HardCE(weight=0.5)}  # noqa: E731
    losses = {
        "kd_ce": kd_losses,
        "kd_only": lambda: {"kd": ForwardKL(temperature=1.0, weight=1.0)},
        "labels": lambda: {"ce": HardCE()},
    }

    # bytes per token, k = 64 / 128, raw / packed
    stores, storage = {}, []
    for k in (64, 128):
        for codec in ("raw", "packed"):
            store, build_s, manifest = _build(
                work / f"lm_store_k{k}_{codec}", {"recipe": "lm"}, teacher, dm, "causal_lm", "topk", k, codec, 16
            )
            stores[(k, codec)] = (store, manifest)
            split = manifest["splits"]["train"]
            storage.append(
                {
                    "k": k,
                    "codec": codec,
                    "bytes_per_token": split["bytes_per_row"],
                    "tokens": split["rows"],
                    "store_mib": manifest["bytes"] / 2**20,
                    "build_s": build_s,
                    "rows_with_empty_slots": _empty_slot_share(store),
                }
            )

    def train(variant: str, seed: int) -> tuple[dict[str, Any], dict[str, list]]:
        L.seed_everything(seed, verbose=False)
        dm.hparams.seed = seed  # the training order
        student = copy.deepcopy(student0)
        loss, signal = VARIANTS[variant]
        if signal is None:  # labels only
            source, data = None, dm
        elif signal == "online":
            source, data = teacher, dm
        else:
            store, manifest = stores[signal]
            source, data = CachedTeacher(manifest), CachedTeacherDataModule(dm, store, "causal_lm")
        module = DistillationModule(student, source, losses[loss](), optimizer=_optimizer(1e-3), task="causal_lm")
        seconds = _fit(module, data, sizes["lm_epochs"])
        ex = _per_example(student, dm.test_dataloader())
        assert ex["tokens"] == test_tokens
        return {"variant": variant, "seed": seed, "epochs_s": seconds, **_metrics(ex)}, ex

    variants = list(sizes["lm_variants"]) + list(EXTRA_VARIANTS)
    runs, per_example = [], {v: {"seeds": [], "correct": [], "nll": []} for v in variants}
    for seed in sorted(set(sizes["lm_seeds"]) | set(sizes["lm_extra_seeds"])):
        for variant in variants:
            if seed not in (sizes["lm_extra_seeds"] if variant in EXTRA_VARIANTS else sizes["lm_seeds"]):
                continue
            log(f"causal: {variant}, seed {seed}")
            run, ex = train(variant, seed)
            runs.append(run)
            for key, value in (("seeds", seed), ("correct", ex["correct"]), ("nll", ex["nll"])):
                per_example[variant][key].append(value)

    def compare(reference: str, variant: str) -> dict[str, Any]:
        """Paired bootstrap of variant - reference on the seeds both were trained with."""
        seeds = [s for s in per_example[variant]["seeds"] if s in per_example[reference]["seeds"]]

        def pick(v: str) -> dict[str, list[Any]]:
            return {k: [per_example[v][k][per_example[v]["seeds"].index(s)] for s in seeds] for k in ("correct", "nll")}

        return {
            **paired_bootstrap(pick(reference), pick(variant), test_tokens, sizes["bootstrap"]),
            "reference": reference,
            "seed_ids": seeds,
        }

    quality = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        accs = [r["token_acc"] for r in mine]
        q = {
            "loss": VARIANTS[variant][0],
            "seeds": [r["seed"] for r in mine],
            "token_acc_mean": statistics.mean(accs),
            "token_acc": accs,
            "token_acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "perplexity_mean": statistics.mean(r["perplexity"] for r in mine),
            "perplexity": [r["perplexity"] for r in mine],
        }
        if variant in REFERENCE:
            q["vs_online"] = compare(REFERENCE[variant], variant)
        if variant == "labels_only":
            q["vs_online_kd_only"] = compare("online_kd_only", variant)
        quality[variant] = q
    online_epochs = [s for r in runs if r["variant"] == "online" for s in r["epochs_s"]]
    cached_epochs = [s for r in runs if r["variant"] == "cached_k64_raw" for s in r["epochs_s"]]
    teacher_fwd = statistics.median(_teacher_pass(teacher, dm, "causal_lm") for _ in range(2))
    seq = _mean_seq_len(dm)
    t_shape, s_shape = _shape(teacher, "causal_lm", seq), _shape(student0, "causal_lm", seq)
    rows = {
        "layer_subset": {
            "teacher": "Llama 6 layers, hidden 64, FFN 128 (fine-tuned)",
            "teacher_shape": t_shape,
            "student": "2 layers, hidden 64 (teacher layers 0, 3)",
            "student_shape": s_shape,
            "flop_bound": _flop_bound(t_shape, s_shape),
            "build_s": storage[0]["build_s"],
            **_ratios(online_epochs, cached_epochs, teacher_fwd),
        }
    }
    rows["narrow"] = _causal_narrow(sizes, work, dm, seq, kd_losses)
    rows["llm_like"] = _causal_llm_like(sizes, work, files, kd_losses)
    return {
        "vocab": vocab,
        "mean_seq_len": seq,
        "train_examples": sizes["lm_train"],
        "test_examples": sizes["lm_test"],
        "test_tokens": sum(test_tokens),
        "train_tokens": stores[(64, "raw")][1]["splits"]["train"]["rows"],
        "epochs": sizes["lm_epochs"],
        "seeds": list(sizes["lm_seeds"]),
        "batches_per_epoch": len(dm.train_dataloader()),
        "teacher_finetune": {"epochs": sizes["lm_finetune_epochs"], "lr": FINETUNE_LR, "seconds": finetune_s},
        "teacher_quality": _metrics(teacher_ex),
        "baselines": baselines,
        "storage": storage,
        "runs": runs,
        "quality": quality,
        "rows": rows,
    }


def _causal_narrow(sizes: dict, work: Path, dm, seq: float, kd_losses) -> dict[str, Any]:
    """The wider 6-layer teacher vs the tiny_llama student: timing only (random weights, k = 64 raw)."""
    from litdistill.cache import CachedTeacher, CachedTeacherDataModule
    from litdistill.models.loading import from_config
    from litdistill.training.module import DistillationModule

    dm.hparams.seed = 0
    teacher = from_config(dict(LM_WIDE_TEACHER), task="causal_lm", seed=0).eval()
    teacher.requires_grad_(False)
    student = from_config(dict(LM_TINY_STUDENT), task="causal_lm", seed=1)
    store, build_s, manifest = _build(
        work / "lm_store_wide", {"recipe": "lm_wide"}, teacher, dm, "causal_lm", "topk", 64, "raw", 16
    )
    online = DistillationModule(
        copy.deepcopy(student), teacher, kd_losses(), optimizer=_optimizer(1e-3), task="causal_lm"
    )
    cached = DistillationModule(
        copy.deepcopy(student), CachedTeacher(manifest), kd_losses(), optimizer=_optimizer(1e-3), task="causal_lm"
    )
    times = _speed(
        [("narrow", online, dm, cached, CachedTeacherDataModule(dm, store, "causal_lm"))],
        teacher,
        dm,
        "causal_lm",
        sizes["narrow_reps"],
    )["narrow"]
    t_shape, s_shape = _shape(teacher, "causal_lm", seq), _shape(student, "causal_lm", seq)
    return {
        "teacher": "Llama 6 layers, hidden 128, 8 heads, FFN 256 (random init)",
        "teacher_shape": t_shape,
        "student": "tiny_llama: 2 layers, hidden 64, FFN 128 (fresh)",
        "student_shape": s_shape,
        "flop_bound": _flop_bound(t_shape, s_shape),
        "build_s": build_s,
        **_ratios(times["online"], times["cached"], statistics.median(times["teacher"])),
    }


def _train_tokenizer(train_file: str, vocab: int, out: Path) -> tuple[str, int]:
    """A byte-level BPE tokenizer trained on the training split's prompts and responses, filled with reserved
    tokens to ``vocab`` entries and saved as a ``PreTrainedTokenizerFast`` (``<pad>`` 0, ``<eos>`` 1) under ``out``.
    Returns the path and the number of entries BPE learned before the filling."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    with open(train_file, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    texts = [f"{r['prompt']}\n{r['response']}" for r in records]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<pad>", "<eos>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    learned = tok.get_vocab_size()
    if learned < vocab:
        tok.add_special_tokens([f"<reserved_{i}>" for i in range(vocab - learned)])
    assert tok.get_vocab_size() == vocab, (tok.get_vocab_size(), vocab)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(str(out))
    return str(out), learned


def _causal_llm_like(sizes: dict, work: Path, files: dict[str, str], kd_losses) -> dict[str, Any]:
    """The LLM-like head share: a 2,048-token BPE vocabulary, teacher 6 x 256, fresh student 2 x 128 (timing only,
    random weights, k = 64 raw; see the module docstring for the shapes)."""
    from litdistill.cache import CachedTeacher, CachedTeacherDataModule
    from litdistill.data.sft import SFTDataModule
    from litdistill.models.loading import from_config
    from litdistill.training.module import DistillationModule

    path, learned = _train_tokenizer(files["train"], LM_SMALL_VOCAB, work / "bpe_tokenizer")
    dm = SFTDataModule(tokenizer=path, data_files=files, max_length=64, batch_size=8, seed=0)
    dm.setup("fit")
    ids = {"pad_token_id": dm.tokenizer.pad_token_id, "eos_token_id": dm.tokenizer.eos_token_id}
    teacher = from_config({**LM_LLM_TEACHER, **ids}, task="causal_lm", seed=0).eval()
    teacher.requires_grad_(False)
    student = from_config({**LM_LLM_STUDENT, **ids}, task="causal_lm", seed=1)
    store, build_s, manifest = _build(
        work / "lm_store_llm_like", {"recipe": "lm_llm_like"}, teacher, dm, "causal_lm", "topk", 64, "raw", 16
    )
    online = DistillationModule(
        copy.deepcopy(student), teacher, kd_losses(), optimizer=_optimizer(1e-3), task="causal_lm"
    )
    cached = DistillationModule(
        copy.deepcopy(student), CachedTeacher(manifest), kd_losses(), optimizer=_optimizer(1e-3), task="causal_lm"
    )
    times = _speed(
        [("llm_like", online, dm, cached, CachedTeacherDataModule(dm, store, "causal_lm"))],
        teacher,
        dm,
        "causal_lm",
        sizes["narrow_reps"],
    )["llm_like"]
    seq = _mean_seq_len(dm)
    t_shape, s_shape = _shape(teacher, "causal_lm", seq), _shape(student, "causal_lm", seq)
    return {
        "teacher": f"Llama 6 layers, hidden 256, 8 heads (2 KV), FFN 896, vocab {LM_SMALL_VOCAB:,} BPE (random init)",
        "teacher_shape": t_shape,
        "student": f"2 layers, hidden 128, 4 heads (1 KV), FFN 512, vocab {LM_SMALL_VOCAB:,} (fresh)",
        "student_shape": s_shape,
        "flop_bound": _flop_bound(t_shape, s_shape),
        "build_s": build_s,
        "vocab": LM_SMALL_VOCAB,
        "bpe_learned_entries": learned,
        "mean_seq_len": seq,
        "train_tokens": manifest["splits"]["train"]["rows"],
        "batches_per_epoch": len(dm.train_dataloader()),
        **_ratios(times["online"], times["cached"], statistics.median(times["teacher"])),
    }


# ---- report ---------------------------------------------------------------------------------------------
ROW_NAMES = {
    "layer_subset": "student = teacher's layers 0, 3 (same width)",
    "narrow": "fresh student, 2x narrower",
    "llm_like": f"fresh student, 2x narrower, {LM_SMALL_VOCAB:,}-token BPE vocabulary (LLM-like head share)",
}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for recipe in ("classification", "causal_lm"):
        for name, r in result[recipe]["rows"].items():
            out.append(
                {
                    "target": f"{recipe}: epochs after the first >= 2x faster, teacher 3x the student's depth, "
                    f"{ROW_NAMES[name]}",
                    "measured": r["speedup"],
                    "unit": "x",
                    "bound": 2.0,
                    "met": r["speedup"] is not None and r["speedup"] >= 2.0,
                    "note": f"teacher forward {r['teacher_forward_s_per_epoch']:.2f} s of the "
                    f"{r['online_epoch_s']:.2f} s online epoch: "
                    f"at most {_x(r['speedup_bound'])} from removing it; FLOP-only bound {r['flop_bound']:.2f}x",
                }
            )
    storage = {(s["k"], s["codec"]): s["bytes_per_token"] for s in result["causal_lm"]["storage"]}
    best = min(storage[(128, "raw")], storage[(128, "packed")])
    out.append(
        {
            "target": "<= 300 bytes/token at k=128 (codec packed; raw is the default layout)",
            "measured": best,
            "unit": "B",
            "bound": 300,
            "met": best <= 300,
            "note": f"raw {storage[(128, 'raw')]:.0f} B, packed {storage[(128, 'packed')]:.0f} B",
        }
    )
    for variant, q in result["causal_lm"]["quality"].items():
        if "vs_online" not in q or variant in NO_TARGET:
            continue
        b = q["vs_online"]
        ci = (
            f"95% CI [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}], "
            f"paired bootstrap over {b['seeds']} seeds x {b['examples']} test examples"
        )
        what = (
            f"{variant} vs online"
            if q.get("loss", "kd_ce") == "kd_ce"
            else f"KD only (ForwardKL weight 1, no CE), {variant.removesuffix('_kd_only')} vs "
            f"{b['reference'].removesuffix('_kd_only')}"
        )
        out.append(
            {
                "target": f"student token accuracy, {what}, within noise (CI contains 0)",
                "measured": b["delta"],
                "unit": "",
                "bound": 0.0,
                "met": b["within_noise"],
                "note": ci,
            }
        )
        out.append(
            {
                "target": f"student token accuracy, {what}, non-inferior (CI lower bound >= -0.005)",
                "measured": b["ci95"][0],
                "unit": "",
                "bound": NON_INFERIORITY,
                "met": b["non_inferior"],
                "note": ci,
            }
        )
    return out


def _x(value: float | None, suffix: str = "x") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def _mf(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def markdown(result: dict[str, Any]) -> str:
    c, m = result["classification"], result["causal_lm"]
    lines = [
        f"Mode {result['mode']}, {result['threads']} thread(s) each side. Epoch = one training epoch, validation off; "
        "online and cached epochs alternate; speed-up = median of the per-pair ratios. Every row's teacher has 3x its "
        "student's depth.",
        "",
        "**Shapes** (forward MFLOPs per token: layers / head; a student step counts 3 forwards):",
        "",
        "| recipe | model | layers x hidden | params (M) | embedding (M) | MFLOPs layers | MFLOPs head | head share |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def shape_row(recipe: str, who: str, s: dict[str, Any]) -> str:
        return (
            f"| {recipe} | {who} | {s['layers']} x {s['hidden']} | {s['params_m']:.2f} | "
            f"{s['embedding_params_m']:.2f} | "
            f"{_mf(s['layer_mflops_per_token'])} | {_mf(s['head_mflops_per_token'])} | {s['head_share']:.0%} |"
        )

    lines.append(shape_row("classification", "teacher: MiniLM-L6", c["teacher_shape"]))
    for name, r in c["rows"].items():
        lines.append(shape_row("classification", f"student ({name}): {r['student']}", r["student_shape"]))
    for name, r in m["rows"].items():
        lines.append(shape_row("causal LM", f"teacher ({name}): {r['teacher']}", r["teacher_shape"]))
        lines.append(shape_row("causal LM", f"student ({name}): {r['student']}", r["student_shape"]))
    lines += [
        "",
        "**Epoch time**:",
        "",
        "| recipe | row | batches/epoch | online s/epoch | cached s/epoch | speed-up | teacher fwd s | online / "
        "(online - teacher fwd) | "
        "FLOP-only bound | cached / (online - teacher fwd) | build s (once) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe, res in (("classification", c), ("causal LM", m)):
        for name, r in res["rows"].items():
            build = r.get("build_s", res.get("build_s"))
            lines.append(
                f"| {recipe} | {ROW_NAMES[name]} | {r.get('batches_per_epoch', res['batches_per_epoch'])} | "
                f"{r['online_epoch_s']:.2f} | "
                f"{r['cached_epoch_s']:.2f} | {r['speedup']:.2f}x | {r['teacher_forward_s_per_epoch']:.2f} | "
                f"{_x(r['speedup_bound'])} | {r['flop_bound']:.2f}x | {_x(r['cached_vs_online_minus_teacher'], '')} "
                f"| {build:.2f} |"
            )
    lines += [
        "",
        "Teacher fwd = the teacher's forward alone over the epoch's batches (loaded beforehand). Classification "
        "caches full logits and computes the same loss on both sides, so online / (online - teacher fwd) bounds its "
        "speed-up. On the causal recipe the cache also removes the teacher's full-vocabulary log-softmax and the dense "
        "KL (replaced by the k+1-bucket KL), so the speed-up can exceed that ratio; the FLOP-only bound counts matmul "
        "FLOPs only (not the memory-bound log-softmax, CE, KL and AdamW over the embedding matrices). "
        "cached / (online - teacher fwd): what the cached path costs against the online one without its teacher "
        "(above 1: reading and joining the cache costs more than the rest of what it removes, or noise).",
        "",
    ]
    llm = m["rows"].get("llm_like")
    if llm:
        lines += [
            f"LLM-like row: byte-level BPE trained on the {m['train_examples']} training prompts + responses learned "
            f"{llm['bpe_learned_entries']} entries (256 bytes, 2 specials, merges), filled with reserved tokens to "
            f"{llm['vocab']:,}, so head, log-softmax and KL are {llm['vocab']:,} wide; mean padded batch length "
            f"{llm['mean_seq_len']:.1f} tokens (packaged vocabulary: {m['mean_seq_len']:.1f}), {llm['train_tokens']} "
            f"real train response tokens (packaged: {m['train_tokens']}; responses end in <eos> here). Head share "
            f"{llm['teacher_shape']['head_share']:.0%} (teacher) / {llm['student_shape']['head_share']:.0%} (student); "
            "Llama-3.1-8B / 3.2-1B by the same count: 7% / 21%, FLOP-only bound of 8B->1B 3.0x.",
            "",
        ]
    lines += [
        f"Classification stores {c['bytes_per_example']:.1f} bytes per example (float16 logits). Causal LM: a top-k "
        f"store of {m['train_tokens']} real train tokens:",
        "",
        "| k | codec | bytes / token | store (MiB) | build s | rows with empty slots |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s['k']} | {s['codec']} | {s['bytes_per_token']:.1f} | {s['store_mib']:.3f} | {s['build_s']:.2f} | "
        f"{s['rows_with_empty_slots']:.1%} |"
        for s in m["storage"]
    ]
    tq, bl, ft = m["teacher_quality"], m["baselines"], m["teacher_finetune"]
    extra = [q for v, q in m["quality"].items() if q.get("loss", "kd_ce") != "kd_ce"]
    extra_seeds = (
        f"; KD-only and labels-only rows: {len(extra[0]['seeds'])} seeds ({', '.join(map(str, extra[0]['seeds']))})"
        if extra
        else ""
    )
    lines += [
        "",
        f"**Quality** of the causal student (layer subset) after {m['epochs']} epochs, {len(m['seeds'])} seeds "
        f"(KD + CE rows: ForwardKL 0.5 + HardCE 0.5{extra_seeds}; KD only: ForwardKL weight 1, no CE), "
        f"{m['test_examples']} held-out test examples ({m['test_tokens']} response tokens). Delta = the row minus its "
        "reference (cached - online of the same loss; labels only - online KD + CE) in pooled token accuracy, on the "
        "seeds both have; 95% CI from a paired bootstrap (seeds and test examples resampled together, "
        f"{next((q['vs_online']['resamples'] for q in m['quality'].values() if 'vs_online' in q), 0)} resamples; "
        "the examples-only CI treats the seeds as fixed). Within noise = the CI contains 0; non-inferior = its lower "
        "bound >= -0.005. The labels-only row is a reference, with no target.",
        "",
        "| model / teacher signal | token acc (mean) | per seed | perplexity (mean) | delta vs reference | 95% CI | "
        "CI, examples only | perplexity ratio [95% CI] | within noise | non-inferior |",
        "|---|---:|---|---:|---:|---|---|---|---|---|",
        f"| teacher (fine-tuned {ft['epochs']} epochs) | {tq['token_acc']:.4f} | - | {tq['perplexity']:.2f} | | | | "
        "| | |",
        f"| majority token (train) | {bl['majority_token_acc']:.4f} | - | - | | | | | | |",
        f"| unigram, add-one (train) | - | - | {bl['unigram_perplexity']:.1f} | | | | | | |",
    ]
    for variant, q in m["quality"].items():
        per_seed = ", ".join(f"{a:.3f}" for a in q["token_acc"])
        name = VARIANT_NAMES.get(variant, variant)
        if "vs_online" not in q:
            lines.append(
                f"| student, {name} | {q['token_acc_mean']:.4f} | {per_seed} | {q['perplexity_mean']:.3f} "
                "| - | | | | | |"
            )
            continue
        b = q["vs_online"]
        judged = (
            ("-", "-")
            if variant in NO_TARGET
            else tuple("yes" if b[k] else "no" for k in ("within_noise", "non_inferior"))
        )
        lines.append(
            f"| student, {name} (vs {VARIANT_NAMES[b['reference']].split(' (')[0]}) | {q['token_acc_mean']:.4f} | "
            f"{per_seed} | {q['perplexity_mean']:.3f} | "
            f"{b['delta']:+.4f} | [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}] | "
            f"[{b['ci95_examples_only'][0]:+.4f}, {b['ci95_examples_only'][1]:+.4f}] | {b['perplexity_ratio']:.3f} "
            f"[{b['perplexity_ratio_ci95'][0]:.3f}, {b['perplexity_ratio_ci95'][1]:.3f}] | {judged[0]} | {judged[1]} |"
        )
    lab = m["quality"].get("labels_only", {})
    if "vs_online" in lab and "vs_online_kd_only" in lab:
        a, k = lab["vs_online"], lab["vs_online_kd_only"]
        lines += [
            "",
            f"Labels only vs online KD + CE: {a['delta']:+.4f} [{a['ci95'][0]:+.4f}, {a['ci95'][1]:+.4f}]; labels "
            "only vs "
            f"online KD only: {k['delta']:+.4f} [{k['ci95'][0]:+.4f}, {k['ci95'][1]:+.4f}] (seeds "
            f"{', '.join(map(str, k['seed_ids']))}). A KD-only student learns only the teacher's distribution "
            f"(teacher token accuracy {tq['token_acc']:.4f}), so the KD-only cached - online pair is the one where "
            "what "
            "the top-k truncation loses can show.",
        ]
    lines += ["", "Targets:", ""]
    lines += [
        f"- {t['target']}: {t['measured']:.3g}{t.get('unit') if t.get('unit') == 'x' else ' ' + t.get('unit', '')} -> "
        f"{'met' if t['met'] else 'MISSED'}" + (f" ({t['note']})" if t.get("note") else "")
        for t in result["targets"]
    ]
    return "\n".join(lines) + "\n"


def update_summary(result: dict[str, Any], out: Path) -> Path | None:
    """Put this result into the summary of the same mode next to ``out`` (``bench.json``), if there is one,
    so that ``python -m bench --render`` shows it; the other sections are kept as they are."""
    from bench.__main__ import collect_targets

    path = result_path("bench", result["mode"], out.parent)
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    old = summary.get("sections", {}).get("cache_speed", {})
    flag = "" if result["mode"] == "full" else f" --{result['mode']}"
    summary["sections"]["cache_speed"] = {
        "command": f"python -m bench.cache_speed{flag}",
        "status": "ok",
        "result": result,
        "markdown": markdown(result),
        "wall_s": result["wall_s"],
    }
    summary["targets"] = collect_targets(summary["sections"])
    summary["wall_s"] = summary.get("wall_s", 0.0) - old.get("wall_s", 0.0) + result["wall_s"]
    summary["machine"], summary["rerun"] = result["machine"], ["cache_speed"]
    write_json(path, summary)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.cache_speed", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes, about a minute")
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
        lm_start = time.perf_counter()
        lm = causal(sizes, Path(tmp))
        lm["wall_s"] = time.perf_counter() - lm_start
    result = {
        "mode": mode,
        "threads": args.threads,
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "classification": cls,
        "causal_lm": lm,
        "wall_s": time.perf_counter() - start,
        "machine": machine_info(),
    }
    result["targets"] = targets(result)
    out = args.out or result_path("cache_speed", mode, RESULTS)
    result["out"] = str(out)
    write_json(out, result)
    from litdistill.core.io import atomic_write_text

    atomic_write_text(out.with_suffix(".md"), "# Teacher cache benchmark\n\n" + markdown(result))
    log(f"wrote {out} and {out.with_suffix('.md')} in {result['wall_s']:.0f} s (causal part {lm['wall_s']:.0f} s)")
    for t in result["targets"]:
        log(f"target {t['target']}: {t['measured']:.3g} -> {'met' if t['met'] else 'MISSED'}")
    return result


if __name__ == "__main__":
    result = main(sys.argv[1:])
    summary = update_summary(result, Path(result["out"]))
    if summary is not None:
        log(f"updated the cache_speed section of {summary} (python -m bench --render rebuilds BENCHMARKS.md from it)")
