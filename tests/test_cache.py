"""Offline teacher cache: sparse top-k losses, store guarantees, batch alignment, and the CLI.

Tolerances (documented in docs/caching.md):
* full logits, classification: cached per-batch losses equal the online ones to 1e-3 with float16
  storage and to 1e-5 with float32 storage;
* top-k (k+1-bucket) on a tiny causal LM: exact when k = V; at k = 64 of V = 512 the forward KL is
  never above the full-logit value, and below it by at most the chain-rule gap
  p_tail * KL(tails), bounded by p_tail * log(q_tail / min q); here within 3% of the full value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_bert
from transformers import LlamaConfig, LlamaForCausalLM

from litdistill.cache import (
    CachedCollate,
    CachedTeacher,
    CachedTeacherDataModule,
    CacheKeyMismatch,
    CorruptShardError,
    SplitSource,
    StoreSpec,
    TeacherStore,
    assigned,
    build_store,
    plan_shards,
    split_sources,
)
from litdistill.cache.codec import decode_topk, encode_topk
from litdistill.cache.keys import differing_fields
from litdistill.core.forward import align_labels
from litdistill.core.outputs import ModelOutputs, TopK
from litdistill.data.sft import collate as sft_collate
from litdistill.losses import (
    ChunkedDivergence,
    ForwardKL,
    GeneralizedJSD,
    HardCE,
    ReverseKL,
    SoftTargetKL,
    TotalVariation,
)
from litdistill.losses.sparse import coarse_log_probs, dense_to_topk, tail_gap_bound
from litdistill.pipeline.builders import cache_request
from litdistill.training.module import DistillationModule

REPO = Path(__file__).resolve().parents[1]


# ---- shared tiny set-ups -------------------------------------------------------------------------------
def tiny_llama(layers: int, seed: int, vocab: int = 512, head_scale: float = 1.0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)  # a peaked (trained-looking) next-token distribution
    return model.eval()


def causal_examples(n: int = 24, vocab: int = 512, seed: int = 0) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        n_prompt, n_resp = int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(2, 9, (1,), generator=g))
        ids = torch.randint(1, vocab, (n_prompt + n_resp,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]})
    return examples


def causal_store_inputs(k: int = 64, codec: str = "raw", dtype: str = "float16", shard_size: int = 4, n: int = 24):
    """(teacher, sources, spec, key) of the tiny causal recipe used by several tests and the kill script."""
    teacher = tiny_llama(2, seed=0, head_scale=40.0)
    collate = partial(sft_collate, pad_id=0)
    sources = {
        "train": SplitSource(causal_examples(n, seed=0), collate),
        "validation": SplitSource(causal_examples(8, seed=1), collate),
    }
    spec = StoreSpec(task="causal_lm", outputs="topk", k=k, dtype=dtype, codec=codec, shard_size=shard_size)
    key = {"test": "causal", "k": k, "codec": codec, "dtype": dtype, "n": n}
    return teacher, sources, spec, key


def store_files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def cached_batches(store: TeacherStore, sources, split: str, task: str, batch_size: int = 8) -> list[dict]:
    reader = store.reader(split)
    collate = CachedCollate(sources[split].collate, reader, task)
    ds = sources[split].dataset
    return [
        collate([(i, ds[i]) for i in range(s, min(s + batch_size, len(ds)))]) for s in range(0, len(ds), batch_size)
    ]


# ---- sparse losses ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "loss",
    [
        ForwardKL(),
        ForwardKL(temperature=2.0),
        SoftTargetKL(temperature=2.0),
        ReverseKL(),
        GeneralizedJSD(beta=0.5),
        TotalVariation(),
    ],
    ids=repr,
)
def test_topk_with_k_equal_vocab_is_the_full_loss(loss):
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 40, dtype=torch.float64) * 2, torch.randn(2, 5, 40, dtype=torch.float64) * 3
    batch = {"token_mask": torch.rand(2, 5) > 0.3}
    dense = loss(ModelOutputs(logits=s), ModelOutputs(logits=t), batch)
    sparse = loss(ModelOutputs(logits=s), ModelOutputs(topk=dense_to_topk(t, 40, loss.temperature)), batch)
    torch.testing.assert_close(sparse.double(), dense.double(), atol=1e-5, rtol=1e-5)


def test_topk_kl_gap_is_exactly_the_chain_rule_tail_term_and_gradients_are_finite():
    torch.manual_seed(1)
    V, k = 60, 8
    s = (torch.randn(30, V, dtype=torch.float64) * 2).requires_grad_()
    t = torch.randn(30, V, dtype=torch.float64) * 3
    topk = dense_to_topk(t, k)
    s_c, t_c = coarse_log_probs(s, topk)
    coarse = (t_c.exp() * (t_c - s_c)).sum(-1)
    p, q = F.log_softmax(t, -1), F.log_softmax(s, -1)
    full = (p.exp() * (p - q)).sum(-1)
    tail = torch.ones(30, V, dtype=torch.bool).scatter_(-1, topk.ids, False)
    p_c = p.masked_fill(~tail, -torch.inf).log_softmax(-1)
    q_c = q.masked_fill(~tail, -torch.inf).log_softmax(-1)
    tail_kl = torch.where(tail, p_c.exp() * (p_c - q_c), 0.0).sum(-1)
    torch.testing.assert_close(full - coarse, topk.log_tail.exp() * tail_kl, atol=1e-10, rtol=0)
    assert bool(((full - coarse) <= tail_gap_bound(topk, s.detach()) + 1e-9).all())
    coarse.sum().backward()
    assert torch.isfinite(s.grad).all()
    # in the top-k the gradient is q_i - p_i, as with full logits
    grad_top = s.grad.gather(-1, topk.ids)
    torch.testing.assert_close(
        grad_top, q.exp().gather(-1, topk.ids).detach() - topk.logprobs.exp(), atol=1e-10, rtol=0
    )


def test_empty_slots_and_padding_rows_carry_no_mass_and_no_nan():
    s = torch.randn(3, 20, requires_grad=True)
    topk = TopK(
        torch.tensor([[-0.5, -1.5, -9.0], [-0.1, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[3, 7, -1], [5, -1, -1], [-1, -1, -1]]),
        torch.log(torch.tensor([1 - 0.6065 - 0.2231, 1 - 0.9048, 1.0])),
    )
    loss = ForwardKL()(ModelOutputs(logits=s), ModelOutputs(topk=topk), {})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert int(topk.argmax()[0]) == 3 and int(topk.argmax()[1]) == 5


def test_codecs_round_trip_and_packed_error_is_within_a_32th_of_a_nat():
    torch.manual_seed(2)
    logits = torch.randn(50, 30522) * 4
    topk = dense_to_topk(logits, 128)
    raw = decode_topk(encode_topk(topk, 30522, "float32", "raw"), 128, 30522, "raw")
    assert torch.equal(raw.ids, topk.ids) and torch.equal(raw.logprobs, topk.logprobs)
    assert encode_topk(topk, 30522, "float16", "raw")["ids"].dtype == torch.uint16
    packed_tensors = encode_topk(topk, 30522, "float16", "packed")
    packed = decode_topk(packed_tensors, 128, 30522, "packed")
    kept = packed.ids >= 0
    for r in range(50):  # same id set among the kept entries, log-probs within half a code step
        want = dict(zip(topk.ids[r].tolist(), topk.logprobs[r].tolist()))
        for i, lp in zip(packed.ids[r][kept[r]].tolist(), packed.logprobs[r][kept[r]].tolist()):
            assert abs(want[i] - lp) <= 1 / 32 + 1e-5
    # folded entries (> 15.9 nats below the top-1) moved their mass into the tail, never lost
    mass = packed.logprobs.exp().masked_fill(~kept, 0).sum(-1) + packed.log_tail.float().exp()
    torch.testing.assert_close(mass, torch.ones(50), atol=0.04, rtol=0)
    nbytes = sum(t.numel() * t.element_size() for t in packed_tensors.values())
    assert nbytes / 50 < 300  # per token, k=128, uniformly random ids: the hardest case for the id gaps


# ---- store guarantees ---------------------------------------------------------------------------------------
def test_ranks_get_disjoint_shards_covering_the_plan():
    plan = plan_shards({"train": 103, "validation": 17}, shard_size=10)
    assert len(plan) == 11 + 2
    for world in (1, 2, 3, 4, 8):
        parts = [assigned(plan, r, world) for r in range(world)]
        flat = [s for p in parts for s in p]
        assert sorted(flat, key=plan.index) == plan and len(set(flat)) == len(plan)


def test_two_ranks_build_disjoint_shards_and_the_same_bytes_as_one(tmp_path):
    teacher, sources, spec, key = causal_store_inputs(shard_size=6)
    one = TeacherStore(tmp_path / "one", key)
    build_store(one, teacher, sources, spec, batch_size=4, progress=False)
    two = TeacherStore(tmp_path / "two", key)
    written: dict[int, list[str]] = {0: [], 1: []}
    errors = []

    def rank(r: int) -> None:
        try:
            build_store(
                two,
                teacher,
                sources,
                spec,
                batch_size=4,
                rank=r,
                world=2,
                progress=False,
                poll=0.05,
                on_shard=lambda s: written[r].append(s.name),
            )
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors, errors
    assert written[0] and written[1] and not set(written[0]) & set(written[1])
    assert sorted(written[0] + written[1]) == sorted(
        f"{s.split}/{s.index:05d}" for s in plan_shards({k: len(v.dataset) for k, v in sources.items()}, 6)
    )
    assert store_files(two.path) == store_files(one.path)


def test_two_concurrent_builds_of_one_key_leave_one_valid_store(tmp_path):
    teacher, sources, spec, key = causal_store_inputs(n=8, shard_size=2)
    reference = TeacherStore(tmp_path / "ref", key)
    build_store(reference, teacher, sources, spec, batch_size=4, progress=False)
    shared = TeacherStore(tmp_path / "shared", key)
    built: list[list[str]] = [[], []]
    errors = []

    def builder(i: int) -> None:
        try:
            build_store(
                TeacherStore(shared.path, key),
                teacher,
                sources,
                spec,
                batch_size=4,
                progress=False,
                on_shard=lambda s: built[i].append(s.name),
            )
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=builder, args=(i,)) for i in (0, 1)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors, errors
    assert sorted(built[0] + built[1]) == sorted(set(built[0] + built[1]))  # the lock: no shard computed twice
    assert store_files(shared.path) == store_files(reference.path)


def test_cached_topk_batches_line_up_with_real_tokens_and_losses_stay_within_tolerance(tmp_path):
    teacher, sources, spec, key = causal_store_inputs(k=64)
    store = TeacherStore(tmp_path / "s", key)
    manifest = build_store(store, teacher, sources, spec, batch_size=4, progress=False)
    assert manifest["row_unit"] == "token" and manifest["bytes_per_row"] < 4 * 64 + 32
    student = tiny_llama(1, seed=3, head_scale=10.0)
    loss = ForwardKL()
    full_total = sparse_total = 0.0
    for batch in cached_batches(store, sources, "train", "causal_lm"):
        batch = align_labels(batch, "causal_lm")
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            s_out = ModelOutputs(
                logits=student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            )
        mask = batch["token_mask"]
        # alignment: at every real token the cached top-1 is the teacher's argmax there
        assert torch.equal(batch["teacher_topk_ids"][..., 0][mask], t_logits.argmax(-1)[mask])
        assert bool((batch["teacher_topk_ids"][~mask] == -1).all())
        full = loss(s_out, ModelOutputs(logits=t_logits), batch)
        sparse = loss(
            s_out,
            ModelOutputs(
                topk=TopK(batch["teacher_topk_logprobs"], batch["teacher_topk_ids"], batch["teacher_topk_log_tail"])
            ),
            batch,
        )
        assert float(sparse) <= float(full) + 2e-3  # float16 storage rounding aside, a lower bound
        full_total += float(full)
        sparse_total += float(sparse)
    assert abs(full_total - sparse_total) / full_total < 0.03
    # the module trains from the cache (teacher stand-in, no weights) with a finite loss and gradients
    module = DistillationModule(
        student.train(),
        CachedTeacher(manifest),
        {"kd": ForwardKL(weight=0.5), "ce": HardCE(weight=0.5)},
        task="causal_lm",
    )
    batch = align_labels(cached_batches(store, sources, "train", "causal_lm")[0], "causal_lm")
    total, terms, _ = module.loss_terms(batch)
    total.backward()
    assert torch.isfinite(total) and all(
        torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None
    )


def test_a_store_captured_at_t2_reads_back_exact_tempered_targets_and_refuses_other_temperatures(tmp_path):
    """cache at T=2: the teacher is tempered before its top k; the rows carry T, the loss at T=2 equals
    the coarse KL of the tempered teacher computed online, and a loss at T=1 is refused."""
    from dataclasses import replace

    from litdistill.core.outputs import outputs_in_batch

    teacher, sources, spec, key = causal_store_inputs(k=64, dtype="float32")
    store = TeacherStore(tmp_path / "s", {**key, "topk_temperature": 2.0})
    manifest = build_store(store, teacher, sources, replace(spec, temperature=2.0), batch_size=4, progress=False)
    assert manifest["topk_temperature"] == 2.0
    student = tiny_llama(1, seed=3, head_scale=10.0)
    batch = align_labels(cached_batches(store, sources, "train", "causal_lm")[0], "causal_lm")
    cached = outputs_in_batch(batch)
    assert cached.topk.temperature == 2.0
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        t_logits, s_logits = (m(**inputs).logits[:, :-1] for m in (teacher, student))
    online = ForwardKL(temperature=2.0)(
        ModelOutputs(logits=s_logits), ModelOutputs(topk=dense_to_topk(t_logits, 64, 2.0)), batch
    )
    got = ForwardKL(temperature=2.0)(ModelOutputs(logits=s_logits), cached, batch)
    torch.testing.assert_close(got, online, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="captured at temperature 2, the loss runs at 1"):
        ForwardKL()(ModelOutputs(logits=s_logits), cached, batch)


def test_the_run_captures_top_k_at_the_losses_temperature_and_keys_it(compose_train):
    from hydra.utils import instantiate

    from litdistill.cache.run import TeacherCacheRun

    cfg = compose_train(["experiment=tiny_causal", "cache=build", "student=tiny_llama"])
    data = instantiate(cfg.data)
    data.setup("fit")
    at_2 = TeacherCacheRun(cache_request(cfg), {"kd": ForwardKL(temperature=2.0), "ce": HardCE()}, data)
    assert at_2.spec.temperature == 2.0 and at_2.key["topk_temperature"] == 2.0
    at_1 = TeacherCacheRun(cache_request(cfg), {"kd": ForwardKL(), "ce": HardCE()}, data)
    assert at_1.spec.temperature == 1.0 and "topk_temperature" not in at_1.key  # T=1 stores keep their keys
    with pytest.raises(ValueError, match="captured at one temperature, but the losses reading it use"):
        TeacherCacheRun(cache_request(cfg), {"a": ForwardKL(temperature=2.0), "b": ReverseKL()}, data)


def test_key_mismatch_is_refused_naming_the_field(tmp_path):
    key = {"format": 1, "teacher": {"name": "t", "revision": "a"}, "max_length": 24, "splits": {"train": "x"}, "k": 64}
    store = TeacherStore(tmp_path / "s", key)
    store.claim("w0")
    other = dict(key, max_length=32, splits={"train": "y"})
    with pytest.raises(
        CacheKeyMismatch, match=r"field 'max_length' differs \(store: 24, this run: 32\); also differ: 'splits.train'"
    ):
        TeacherStore(tmp_path / "s", other).check_key()
    with pytest.raises(CacheKeyMismatch, match="field 'teacher.revision' differs"):
        TeacherStore(tmp_path / "s", dict(key, teacher={"name": "t", "revision": "b"})).check_key()
    with pytest.raises(CacheKeyMismatch, match="field 'teacher_weights' differs"):
        TeacherStore(tmp_path / "s", key).claim("w1")  # same config, other weights
    assert [d[0] for d in differing_fields(key, dict(key, k=128))] == ["k"]


def test_corrupted_shard_is_named_and_a_build_repairs_it(tmp_path):
    teacher, sources, spec, key = causal_store_inputs(n=8, shard_size=4)
    store = TeacherStore(tmp_path / "s", key)
    build_store(store, teacher, sources, spec, batch_size=4, progress=False)
    good = store_files(store.path)
    shard = store.path / "train" / "00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    reader = store.reader("train")
    reader.example(0)  # shard 0 is fine
    with pytest.raises(CorruptShardError, match=r"train/00001\.safetensors is corrupted"):
        reader.example(5)
    build_store(store, teacher, sources, spec, batch_size=4, progress=False)  # rebuilds only that shard
    assert store_files(store.path) == good


def mapped_files() -> set[str]:
    """Files this process has memory-mapped (Linux /proc/self/maps)."""
    return {
        line.split(maxsplit=5)[5] for line in Path("/proc/self/maps").read_text().splitlines() if len(line.split()) == 6
    }


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_reader_maps_shards_hashes_each_once_and_reads_raw_and_packed_alike(tmp_path, monkeypatch):
    import litdistill.cache.store as store_module

    hashed: list[str] = []
    real_hash = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda path: hashed.append(Path(path).name) or real_hash(path))
    readers = {}
    for codec in ("raw", "packed"):
        teacher, sources, spec, key = causal_store_inputs(k=16, codec=codec, shard_size=4)
        store = TeacherStore(tmp_path / codec, key)
        build_store(store, teacher, sources, spec, batch_size=4, progress=False)
        readers[codec] = store.reader("train", max_shards=1)
    hashed.clear()
    raw, packed = readers["raw"], readers["packed"]
    order = [0, 5, 1, 6, 2, 9, 0, 5]  # shards 0, 1, 0, 1, 0, 2, 0, 1: reopened after every eviction
    for idx in order:
        a, b = raw.example(idx), packed.example(idx)
        assert len(raw._cache) == 1 and len(packed._cache) == 1  # bounded: max_shards
        for r in range(a.ids.shape[0]):  # packed keeps raw's entries (ids sorted) to 1/32 nat + float16
            kept = b.ids[r] >= 0
            stored = dict(zip(a.ids[r].tolist(), a.logprobs[r].float().tolist()))
            for i, lp in zip(b.ids[r][kept].tolist(), b.logprobs[r][kept].tolist()):
                assert abs(stored[i] - lp) <= 1 / 32 + 1e-2
    assert sorted(hashed) == sorted(["00000.safetensors", "00001.safetensors", "00002.safetensors"] * 2)  # once each
    assert str(raw.root / raw.shards[1]["file"]) in mapped_files()  # the open shard is mapped, not read


KILL_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from litdistill.cache import TeacherStore, build_store
from tests.test_cache import causal_store_inputs
teacher, sources, spec, key = causal_store_inputs(k=16, shard_size=2)
for path in sys.argv[2:]:
    slow = sys.argv[1] == "slow"
    on_shard = (lambda s: (print("shard", s.name, flush=True), time.sleep(0.4))) if slow else None
    build_store(TeacherStore(path, key), teacher, sources, spec, batch_size=2, progress=False, on_shard=on_shard)
print("done", flush=True)
"""


def test_a_build_killed_midway_resumes_to_the_same_bytes(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    a, b = tmp_path / "a", tmp_path / "b"
    proc = subprocess.Popen([sys.executable, str(script), "slow", str(a)], env=env, stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # three shards done, the fourth under way
        assert proc.stdout.readline().startswith("shard"), "the build ended early"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (a / "manifest.json").exists()
    sidecars = sorted(a.rglob("0*.json"))
    assert 3 <= len(sidecars) < 16
    for sidecar in sidecars:  # every finished shard is whole
        assert (sidecar.with_suffix(".safetensors")).stat().st_size == json.loads(sidecar.read_text())["bytes"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed process: same kernels, same bytes
    try:
        teacher, sources, spec, key = causal_store_inputs(k=16, shard_size=2)
        for path in (a, b):  # resume the killed build; build another from scratch
            build_store(TeacherStore(path, key), teacher, sources, spec, batch_size=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert store_files(a) == store_files(b) and "manifest.json" in store_files(a)


# ---- classification: cache=use gives the online losses ----------------------------------------------------
@pytest.fixture(scope="module")
def cls_data(tmp_path_factory, tokenizer_dir):
    from litdistill.data import TextClassificationDataModule
    from litdistill.data.synthetic import make_drug_event_dataset

    files = make_drug_event_dataset(str(tmp_path_factory.mktemp("data")), n_train=48, n_val=16, n_test=16, seed=0)
    dm = TextClassificationDataModule(tokenizer=tokenizer_dir, data_files=files, max_length=24, batch_size=8)
    dm.setup("fit")
    return dm


def test_cached_classification_losses_equal_the_online_ones(tmp_path, cls_data):
    """Per-batch losses of cache=use equal the online run's: 1e-3 with float16 storage, 1e-5 with float32."""
    teacher, student = tiny_bert(layers=2, seed=0, dropout=0.0).eval(), tiny_bert(layers=1, seed=1, dropout=0.0)
    losses = {"kd": SoftTargetKL(temperature=2.0, weight=0.5), "ce": HardCE(weight=0.5)}
    online = DistillationModule(student, teacher, losses)
    for dtype, atol in (("float16", 1e-3), ("float32", 1e-5)):
        spec = StoreSpec(task="classification", outputs="logits", dtype=dtype, shard_size=16)
        store = TeacherStore(tmp_path / dtype, {"test": "cls", "dtype": dtype})
        build_store(
            store, teacher, split_sources(cls_data, ["train", "validation"]), spec, batch_size=8, progress=False
        )
        cached_dm = CachedTeacherDataModule(cls_data, store, "classification")
        cached = DistillationModule(student, CachedTeacher(store.manifest()), losses)
        n = 0
        for plain, from_cache in zip(cls_data.train_dataloader(), cached_dm.train_dataloader()):  # shuffled alike
            assert torch.equal(plain["input_ids"], from_cache["input_ids"])
            with torch.no_grad():
                a, a_terms, _ = online.loss_terms(align_labels(plain, "classification"))
                b, b_terms, _ = cached.loss_terms(align_labels(from_cache, "classification"))
                t_logits = teacher(**{k: plain[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
            torch.testing.assert_close(
                from_cache["teacher_logits"], t_logits, atol=atol * 10, rtol=0
            )  # joined per example
            torch.testing.assert_close(b, a, atol=atol, rtol=0)
            torch.testing.assert_close(b_terms["kd"], a_terms["kd"], atol=atol, rtol=0)
            n += 1
        assert n == len(cls_data.train_dataloader()) > 1


def test_indexed_dataset_reads_a_batch_in_one_call_like_the_plain_loader(cls_data):
    """The wrapped Hugging Face dataset gets one __getitems__ per batch, and the rows are the plain ones."""
    from litdistill.cache import IndexedDataset

    dataset = cls_data.train_dataloader().dataset
    calls = []

    class Counting:
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            raise AssertionError("read row by row")

        def __getitems__(self, indices):
            calls.append(list(indices))
            return dataset.__getitems__(indices)

    rows = IndexedDataset(Counting()).__getitems__([5, 2, 7])
    assert calls == [[5, 2, 7]] and [i for i, _ in rows] == [5, 2, 7]
    for (_, row), plain in zip(rows, dataset.__getitems__([5, 2, 7])):
        assert row.keys() == plain.keys() and all(
            torch.equal(torch.as_tensor(row[k]), torch.as_tensor(plain[k])) for k in row
        )
    assert IndexedDataset([10, 11, 12]).__getitems__([2, 0]) == [(2, 12), (0, 10)]  # no __getitems__: row by row


# ---- configuration and the CLI --------------------------------------------------------------------------------
def test_use_refuses_a_student_built_from_the_teacher_and_a_missing_store_names_the_closest(compose_train, cls_data):
    from litdistill.cache.run import CacheMissingError, cache_key, teacher_cache

    cfg = compose_train(["experiment=tiny", "cache=use"])
    with pytest.raises(ValueError, match="student=from_teacher copies the teacher's layers"):
        teacher_cache(cache_request(cfg), {"kd": SoftTargetKL()}, cls_data)
    cfg = compose_train(["experiment=tiny", "cache=use", "student=tiny_bert", "teacher_finetune=null"])
    with pytest.raises(CacheMissingError, match="no complete teacher cache"):
        teacher_cache(cache_request(cfg), {"kd": SoftTargetKL()}, cls_data)
    spec = StoreSpec(task="classification", outputs="logits")
    key = cache_key(cache_request(cfg), cls_data, spec, ["train", "validation"])
    assert key["max_length"] == 24 and key["teacher"]["name"] == "random-init"
    # a store for another max_length sits in the root: the error names that field
    TeacherStore(Path(cfg.cache.root) / "other", dict(key, max_length=32)).claim(None)
    with pytest.raises(CacheMissingError, match=r"differs: field 'max_length' differs \(store: 32, this run: 24\)"):
        teacher_cache(cache_request(cfg), {"kd": SoftTargetKL()}, cls_data)
    with pytest.raises(ValueError, match="needs the teacher's full logits"):
        teacher_cache(
            cache_request(
                compose_train(["experiment=tiny_causal", "cache=use", "student=tiny_bert", "loss=chunked_forward_kl"])
            ),
            {"kd": ChunkedDivergence()},
            cls_data,
        )


RECORDING_CLI = """
import json, os, sys
import litdistill.models.loading as models
log = os.environ["MODEL_LOG"]
def record(fn):
    def wrapped(*args, **kwargs):
        with open(log, "a") as f:
            config = kwargs.get("config") or {}
            record = {"fn": fn.__name__, "hidden_size": config.get("hidden_size"), "name": kwargs.get("name_or_path")}
            f.write(json.dumps(record) + "\\n")
        return fn(*args, **kwargs)
    return wrapped
models.from_config = record(models.from_config)
models.load_pretrained = record(models.load_pretrained)
from litdistill.cli import main
main(sys.argv[1:])
"""


def recording_cli(tmp_path: Path, common: list[str]):
    """Run the real CLI (with ``common`` overrides) in a subprocess that logs every model it builds to
    ``tmp_path/models.jsonl``: the teacher is the only 64-wide model of experiment=tiny."""
    script = tmp_path / "cli.py"
    script.write_text(RECORDING_CLI)
    env = {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"),
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "MODEL_LOG": str(tmp_path / "models.jsonl"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess:
        (tmp_path / "models.jsonl").unlink(missing_ok=True)
        proc = subprocess.run(
            [sys.executable, str(script), *common, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    return cli


def built_widths(tmp_path: Path) -> list[int]:
    """hidden_size of every model the last recorded CLI run built (64: the teacher; 32: tiny_bert)."""
    return [json.loads(line)["hidden_size"] for line in (tmp_path / "models.jsonl").read_text().splitlines()]


def test_cli_build_then_use_never_loads_the_teacher(tmp_path):
    cli = recording_cli(
        tmp_path, ["experiment=tiny", "debug=fast", "baseline=false", "report.plots=false", "cache.shard_size=64"]
    )
    build = cli("cache=build")
    assert "bytes/example" in build.stdout + build.stderr
    assert "teacher cache" in build.stderr  # the tqdm bar while the teacher runs over the data
    assert not list((tmp_path / "outputs").rglob("report.json"))  # build only: nothing trained
    assert 64 in built_widths(tmp_path)
    use = cli("cache=use", "student=tiny_bert")
    assert "the teacher is not loaded" in use.stdout + use.stderr
    widths = built_widths(tmp_path)
    assert widths and all(w == 32 for w in widths)  # only the tiny_bert student (the teacher: 64)
    run = next((tmp_path / "outputs").rglob("report.json")).parent
    header = next(run.rglob("metrics.csv")).read_text().splitlines()[0]
    assert "train/loss/kd" in header and "val/agreement" in header  # validation batches carry the cached teacher


def test_cli_auto_builds_once_reuses_across_student_settings_and_rebuilds_for_new_teacher_outputs(tmp_path):
    cli = recording_cli(
        tmp_path,
        [
            "experiment=tiny",
            "debug=fast",
            "baseline=false",
            "report.plots=false",
            "cache=auto",
            "student=tiny_bert",
            "cache.shard_size=64",
            "trainer.limit_train_batches=2",
        ],
    )
    root = tmp_path / "cache" / "teacher_outputs"

    def store_read(proc: subprocess.CompletedProcess) -> str:
        line = next(
            x for x in (proc.stdout + proc.stderr).splitlines() if "cache=auto: reading teacher outputs from" in x
        )
        return line.split("reading teacher outputs from ")[1].split(" (")[0]

    first = cli()
    assert "the teacher was loaded only to build it" in first.stdout + first.stderr
    assert 64 in built_widths(tmp_path)  # no store yet: the teacher is loaded to build it
    stores = sorted(root.iterdir())
    assert len(stores) == 1 and (stores[0] / "manifest.json").is_file() and store_read(first) == str(stores[0])
    built = store_files(stores[0])

    second = cli("loss.kd.temperature=4", "optimizer.lr=5e-5")  # student-side settings: same teacher outputs
    assert "the teacher is not loaded" in second.stdout + second.stderr
    widths = built_widths(tmp_path)
    assert widths and all(w == 32 for w in widths)  # the student alone: the teacher (64) was never built
    assert sorted(root.iterdir()) == stores and store_read(second) == str(stores[0])
    assert store_files(stores[0]) == built  # read, not rewritten

    third = cli("data.max_length=24")  # other tokenised inputs: other teacher outputs, a second store
    assert 64 in built_widths(tmp_path)
    assert len(list(root.iterdir())) == 2 and store_read(third) != str(stores[0])
    assert store_files(stores[0]) == built
