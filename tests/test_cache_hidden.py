"""Offline teacher cache with the teacher's mapped hidden states (cache.hidden_states, docs/caching.md).

Tolerance: hidden states stored in float16 (relative rounding 2^-11) give every hidden-state loss term
and the total of a short fit within 1e-3 relative (+1e-5 absolute) of the online run's, step by step
(measured: 1e-5 relative for the hidden-state terms).
"""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from tests.test_cache import (
    built_widths,
    causal_examples,
    cls_data,  # noqa: F401  (a fixture: tests take it by name)
    recording_cli,
    store_files,
)
from torch.utils.data import DataLoader

from litdistill.cache import (
    CachedCollate,
    CachedTeacher,
    CachedTeacherDataModule,
    CacheKeyMismatch,
    CacheMissingError,
    IndexedDataset,
    SplitSource,
    StoreSpec,
    TeacherStore,
    build_store,
    split_sources,
)
from litdistill.cache.run import teacher_cache
from litdistill.core.outputs import ModelOutputs
from litdistill.data.sft import collate as sft_collate
from litdistill.losses import FeatureLoss, ForwardKL, HiddenStateLoss, SoftTargetKL
from litdistill.models.loading import from_config
from litdistill.pipeline.builders import build_losses, cache_request
from litdistill.training.module import DistillationModule

RTOL, ATOL = 1e-3, 1e-5  # float16 hidden states (and logits) against the online float32 teacher


def bert(layers: int, hidden: int, seed: int):
    return from_config(
        {
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "intermediate_size": 2 * hidden,
            "max_position_embeddings": 64,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        num_labels=2,
        seed=seed,
    )


def llama(layers: int, seed: int):
    return from_config(
        {
            "model_type": "llama",
            "vocab_size": 512,
            "hidden_size": 48,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 96,
            "max_position_embeddings": 64,
            "pad_token_id": 0,
        },
        task="causal_lm",
        seed=seed,
    )


def stored_layers(losses: dict, student_layers: int, teacher_layers: int) -> tuple[int, ...]:
    return tuple(
        sorted(
            {
                t
                for loss in losses.values()
                if isinstance(loss, HiddenStateLoss)
                for t in loss.teacher_layers(student_layers, teacher_layers)
            }
        )
    )


def fit_terms(module: DistillationModule, steps: int, **data) -> list[dict[str, float]]:
    """Every training step's loss terms and total over a short Lightning fit."""
    seen: list[dict[str, float]] = []
    inner = module.loss_terms

    def recording(batch):
        total, terms, out = inner(batch)
        seen.append({"total": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()}})
        return total, terms, out

    module.loss_terms = recording
    L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    ).fit(module, **data)
    return seen


def online_and_cached(
    student, teacher, losses: dict, manifest: dict, task: str
) -> tuple[DistillationModule, DistillationModule]:
    """Two modules starting from the same student and projections: one runs the teacher, one reads the store."""
    online = DistillationModule(student, teacher, losses, task=task)  # setup creates the projections
    cached = DistillationModule(
        copy.deepcopy(student), CachedTeacher(manifest), copy.deepcopy(losses), task=task
    )  # kept
    return online, cached


def assert_same_terms(cached: list[dict[str, float]], online: list[dict[str, float]], steps: int) -> None:
    assert len(cached) == len(online) == steps
    for a, b in zip(cached, online):
        assert a.keys() == b.keys()
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=RTOL, abs=ATOL), (name, a, b)


# ---- cache=use gives the online losses --------------------------------------------------------------------
def test_fit_from_hidden_state_cache_equals_online_classification_with_projection(tmp_path, cls_data):
    """4-layer BERT (hidden 64) -> 2-layer student of hidden 32: learned projections, logits alongside."""
    teacher, student = bert(4, 64, seed=0).eval(), bert(2, 32, seed=1)
    losses = {
        "kd": SoftTargetKL(temperature=2.0, weight=0.5),
        "hidden": HiddenStateLoss(layer_map="uniform", metric="mse"),  # teacher layers 2, 4
        "cos": HiddenStateLoss(layer_map="last", metric="cosine", include_embeddings=True, weight=0.5),
    }  # 0, 4
    layers = stored_layers(losses, 2, 4)
    assert layers == (0, 2, 4)
    spec = StoreSpec(task="classification", outputs="logits", shard_size=16, hidden_layers=layers)
    store = TeacherStore(tmp_path / "s", {"test": "cls-hidden"})
    manifest = build_store(
        store, teacher, split_sources(cls_data, ["train", "validation"]), spec, batch_size=8, progress=False
    )
    assert (manifest["hidden_layers"], manifest["hidden_size"], manifest["teacher_layers"]) == ([0, 2, 4], 64, 4)
    assert manifest["hidden_bytes_per_token"] == 2 * 64 * 3
    # bytes per example include the hidden states: 2 * 64 * 3 bytes for each of its real tokens
    train = manifest["splits"]["train"]
    assert train["bytes_per_row"] > 2 * 64 * 3 * 5 > manifest["splits"]["validation"]["bytes_per_row"]  # train only

    online, cached = online_and_cached(student, teacher, losses, manifest, "classification")
    assert set(cached.losses["hidden"].projections) == {"1_2", "2_4"}
    steps = 4
    want = fit_terms(online, steps, datamodule=cls_data)
    got = fit_terms(cached, steps, datamodule=CachedTeacherDataModule(cls_data, store, "classification"))
    assert_same_terms(got, want, steps)


def test_fit_from_hidden_state_cache_equals_online_causal_lm_with_topk(tmp_path):
    """4-layer Llama -> 2-layer student of the same width; top-k (k = V) and hidden states in one store."""
    teacher, student = llama(4, seed=0).eval(), llama(2, seed=1)
    losses = {"kd": ForwardKL(weight=0.5), "hidden": HiddenStateLoss(layer_map=[[1, 1], [2, 3]], metric="nmse")}
    examples, collate = causal_examples(24), partial(sft_collate, pad_id=0)
    spec = StoreSpec(task="causal_lm", outputs="topk", k=512, shard_size=8, hidden_layers=stored_layers(losses, 2, 4))
    store = TeacherStore(tmp_path / "s", {"test": "causal-hidden"})
    manifest = build_store(
        store, teacher, {"train": SplitSource(examples, collate)}, spec, batch_size=4, progress=False
    )
    assert manifest["hidden_layers"] == [1, 3]

    cached_collate = CachedCollate(collate, store.reader("train"), "causal_lm")
    batch = cached_collate([(i, examples[i]) for i in range(4)])
    real = batch["attention_mask"].bool()  # prompt tokens too: what the loss averages over
    assert sorted(batch["teacher_hidden_states"]) == [1, 3]
    with torch.no_grad():
        ref = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    for layer, states in batch["teacher_hidden_states"].items():
        assert states.dtype == torch.float16 and states.shape == (*real.shape, 48)
        torch.testing.assert_close(states[real].float(), ref.hidden_states[layer][real], rtol=2e-3, atol=2e-3)
        assert not states[~real].any()  # padding: zeros

    online, cached = online_and_cached(student, teacher, losses, manifest, "causal_lm")
    steps = 3
    want = fit_terms(online, steps, train_dataloaders=DataLoader(examples, batch_size=8, collate_fn=collate))
    cached_loader = DataLoader(IndexedDataset(examples), batch_size=8, collate_fn=cached_collate)
    got = fit_terms(cached, steps, train_dataloaders=cached_loader)
    assert_same_terms(got, want, steps)


def test_interrupted_hidden_state_build_resumes_to_the_same_bytes(tmp_path):
    teacher = llama(4, seed=0).eval()
    sources = {"train": SplitSource(causal_examples(12), partial(sft_collate, pad_id=0))}
    spec = StoreSpec(task="causal_lm", outputs="topk", k=8, shard_size=3, hidden_layers=(0, 2))
    build_store(TeacherStore(tmp_path / "whole", {"t": 1}), teacher, sources, spec, batch_size=2, progress=False)

    def interrupt(shard):
        if shard.index == 1:
            raise KeyboardInterrupt

    resumed = TeacherStore(tmp_path / "resumed", {"t": 1})
    with pytest.raises(KeyboardInterrupt):
        build_store(resumed, teacher, sources, spec, batch_size=2, progress=False, on_shard=interrupt)
    assert not (resumed.path / "manifest.json").exists()
    build_store(resumed, teacher, sources, spec, batch_size=2, progress=False)
    assert store_files(resumed.path) == store_files(tmp_path / "whole")


# ---- keys and refusals (from the configs, as the CLI does) --------------------------------------------
BASE = ["experiment=tiny", "student=tiny_bert", "teacher_finetune=null"]


def test_a_store_without_the_needed_hidden_states_is_never_used(compose_train, cls_data, tmp_path):
    def run(*overrides: str, losses: str = "hidden_mse"):
        cfg = compose_train([*BASE, f"loss={losses}", *overrides])
        return teacher_cache(cache_request(cfg), build_losses(cfg.loss), cls_data), cfg

    logits_only, cfg = run("cache=build", f"cache.dir={tmp_path / 'logits'}", losses="kd_ce")
    logits_only.build(instantiate(cfg.teacher))
    with pytest.raises(CacheKeyMismatch, match=r"field 'hidden_layers' differs \(store: <absent>, this run: \[2,4\]\)"):
        run("cache=use", f"cache.dir={tmp_path / 'logits'}")

    last, cfg = run("cache=auto", "loss.hidden.layer_map=last")  # stores teacher layer 4 only, under cache.root
    assert last.needs_teacher and last.key["hidden_layers"] == [4] and last.key["hidden_size"] == 64
    last.build(instantiate(cfg.teacher))
    with pytest.raises(CacheKeyMismatch, match=r"field 'hidden_layers' differs \(store: \[4\], this run: \[2,4\]\)"):
        run("cache=use", f"cache.dir={last.store.path}")
    with pytest.raises(
        CacheMissingError, match=r"differs: field 'hidden_layers' differs \(store: \[4\], this run: \[2,4\]\)"
    ):
        run("cache=use")
    uniform, _ = run("cache=auto")  # auto: another store, built on first use
    assert uniform.needs_teacher and uniform.store.path != last.store.path and uniform.key["hidden_layers"] == [2, 4]
    again, _ = run("cache=use", "loss.hidden.layer_map=last")  # the layer-4 store still serves its own runs
    assert again.store.path == last.store.path and not again.needs_teacher


def test_refused_attention_features_unstored_layers_and_a_student_cut_from_the_teacher(compose_train, cls_data):
    def cache_run(*overrides: str, losses=None):
        cfg = compose_train([*BASE, "cache=use", *overrides])
        return teacher_cache(cache_request(cfg), losses or build_losses(cfg.loss), cls_data)

    not_stored = "which a teacher cache does not store"
    with pytest.raises(
        ValueError, match=rf"'attention' \(AttentionLoss\) needs the teacher's attention maps, {not_stored}"
    ):
        cache_run("loss=attention_kl")
    with pytest.raises(
        ValueError, match=rf"'f' \(FeatureLoss\) needs the teacher's outputs of \['bert.pooler'\], {not_stored}"
    ):
        cache_run(losses={"f": FeatureLoss("bert.pooler", "bert.pooler")})
    with pytest.raises(
        ValueError,
        match=r"'hidden' \(HiddenStateLoss\) reads the teacher's hidden states of layers "
        r"\[2, 4\], but the teacher cache stores \[2\] \(cache.hidden_states=\[2\]\): "
        r"layers \[4\] are missing",
    ):
        cache_run("loss=hidden_mse", "cache.hidden_states=[2]")
    with pytest.raises(
        ValueError, match=r"layers \[2, 4\], but the teacher cache stores none \(cache.hidden_states=False\)"
    ):
        cache_run("loss=hidden_mse", "cache.hidden_states=false")
    for bad in ("some", "[-1]", "[]"):  # not auto/all/false, a negative layer, an empty list
        with pytest.raises(
            ValueError,
            match=r"cache.hidden_states must be auto \(the layers the hidden-state losses map "
            r"to\), all, false or a non-empty list of teacher layers \(0 = embeddings\), got",
        ):
            cache_run("loss=hidden_mse", f"cache.hidden_states={bad}")
    with pytest.raises(ValueError, match=r"cache.hidden_states=\[9\]: the teacher has layers 0..4 \(0 = embeddings\)"):
        cache_run("loss=hidden_mse", "cache.hidden_states=[9]")
    with pytest.raises(ValueError, match="depend on the student it trains: configure that student"):
        cfg = compose_train(
            ["experiment=tiny", "teacher_finetune=null", "cache=build", "loss=hidden_mse"]
        )  # from_teacher
        teacher_cache(cache_request(cfg), build_losses(cfg.loss), cls_data)

    # the Python API: a stand-in teacher refuses layers it does not hold, at setup and when read
    manifest = {"splits": {"train": {}}, "hidden_layers": [2, 4], "teacher_layers": 4, "hidden_size": 64}
    student = bert(2, 32, seed=1)
    with pytest.raises(
        ValueError, match=r"reads teacher layers \[3\], but the teacher's outputs come from .* layers \[2, 4\]"
    ):
        HiddenStateLoss(layer_map=[[1, 3], [2, 4]]).setup(student, CachedTeacher(manifest))
    with pytest.raises(ValueError, match="which stores none"):
        HiddenStateLoss().setup(student, CachedTeacher({"splits": {"train": {}}}))
    loss = HiddenStateLoss(layer_map=[[2, 4]], project=False)
    loss.setup(bert(2, 64, seed=1), CachedTeacher(manifest))
    loss.pairs = [(1, 3)]
    states = (torch.zeros(1, 3, 64),) * 3
    with pytest.raises(ValueError, match=r"teacher's outputs hold layers \[2, 4\] only \(a teacher cache"):
        loss(
            ModelOutputs(hidden_states=states), ModelOutputs(hidden_states=(None, None, states[0], None, states[0])), {}
        )


# ---- the real CLI ---------------------------------------------------------------------------------------------
def test_cli_auto_builds_hidden_states_then_use_trains_without_the_teacher(tmp_path):
    cli = recording_cli(
        tmp_path,
        [
            "experiment=tiny",
            "debug=fast",
            "baseline=false",
            "report.plots=false",
            "cache.shard_size=64",
            "student=tiny_bert",
            "loss=distilbert",
            "teacher_finetune=null",
            "trainer.limit_train_batches=2",
        ],
    )
    first = cli("cache=auto")
    assert "the teacher was loaded only to build it" in first.stdout + first.stderr
    assert 64 in built_widths(tmp_path)
    (store,) = (tmp_path / "cache" / "teacher_outputs").iterdir()
    manifest = json.loads((store / "manifest.json").read_text())
    assert (manifest["hidden_layers"], manifest["hidden_size"], manifest["key"]["hidden_layers"]) == (
        [2, 4],
        64,
        [2, 4],
    )
    assert "hidden states of teacher layers [2, 4]: 256 bytes/token" in first.stdout + first.stderr

    second = cli("cache=use")
    assert "the teacher is not loaded" in second.stdout + second.stderr
    widths = built_widths(tmp_path)
    assert widths and all(w == 32 for w in widths)  # the tiny_bert student alone; the teacher (64) is never built
    run = max((tmp_path / "outputs").rglob("report.json"), key=lambda p: p.stat().st_mtime).parent
    header = next(Path(run).rglob("metrics.csv")).read_text().splitlines()[0]
    assert "train/loss/cos" in header and "train/loss/kd" in header
