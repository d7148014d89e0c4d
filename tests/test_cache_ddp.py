"""The teacher cache under DDP with real processes (docs/caching.md, "Data parallel").

* The CLI: ``cache=build trainer=ddp_cpu`` (2 gloo processes, Lightning's launcher re-running the
  command for rank 1) writes disjoint shards per rank, rank 0 writes the manifest once, and the store
  has the bytes of a one-process build; ``cache=use trainer=ddp_cpu`` trains from it, every rank
  reading the whole store, the ranks' batches splitting each split between them at the configured size.
* The library: two processes in a gloo group build one store; one dies between a shard and its
  sidecar; the shards on disk stay whole, and a rerun skips them and ends with the bytes of one process.

The CLI runs go through a wrapper that logs, per process, every shard written, every manifest write,
every shard opened for reading and every cached batch's example indices.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SHARD_SIZE = 16  # drug_events_tiny: 128 train examples (8 shards), 32 validation (2 shards)
COMMON = [
    "experiment=tiny",
    "debug=fast",
    "teacher_finetune=null",
    "baseline=false",
    "report.plots=false",
    "+trainer.enable_progress_bar=false",
    f"cache.shard_size={SHARD_SIZE}",
    "cache.progress=false",
]

EVENT_CLI = """
import json, os, sys
from pathlib import Path
import litdistill.cache.data as data
import litdistill.cache.store as store

def event(kind, **fields):
    rank = int(os.environ.get("LOCAL_RANK", 0))  # one node: the global rank
    with open(os.environ["CACHE_EVENTS"], "a") as f:
        f.write(json.dumps({"kind": kind, "rank": rank, "pid": os.getpid(), **fields}) + "\\n")

write_shard = store.TeacherStore.write_shard
def logged_write_shard(self, shard, *args, **kwargs):
    info = write_shard(self, shard, *args, **kwargs)
    event("shard", shard=shard.name, store=str(self.path), rank_world=list(store.dist_rank_world()))
    return info
store.TeacherStore.write_shard = logged_write_shard

write_text = store.atomic_write_text
def logged_write_text(path, text):
    out = write_text(path, text)
    if Path(path).name == store.MANIFEST:
        event("manifest", store=str(Path(path).parent), rank_world=list(store.dist_rank_world()))
    return out
store.atomic_write_text = logged_write_text

opened, open_shard = set(), store.ShardReader._shard
def logged_shard(self, i):
    if (id(self), i) not in opened:
        opened.add((id(self), i))
        event("open", file=self.shards[i]["file"])
    return open_shard(self, i)
store.ShardReader._shard = logged_shard

collate = data.CachedCollate.__call__
def logged_collate(self, items):
    event("batch", split=self.reader.split, idx=[int(i) for i, _ in items])
    return collate(self, items)
data.CachedCollate.__call__ = logged_collate

from litdistill.cli import main
main(sys.argv[1:])
"""


def python_path() -> str:
    """This checkout's sources first (an installed litdistill may be another copy), then tests."""
    return os.pathsep.join([str(REPO / "src"), str(REPO)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """Offline, one thread per process (2 ranks on 2 cores, and the same kernels in every build); never a
    launcher's child."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT", "MASTER_ADDR")
    }
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": python_path(),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def sha256s(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def shard_names() -> list[str]:
    return [f"train/{i:05d}" for i in range(128 // SHARD_SIZE)] + [
        f"validation/{i:05d}" for i in range(32 // SHARD_SIZE)
    ]


# ---- the CLI: build with 2 processes, then train from the store with 2 processes -----------------------------
@pytest.fixture(scope="module")
def ddp_cli(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache_ddp")
    script = tmp / "cli.py"
    script.write_text(EVENT_CLI)

    def start(name: str, *args: str, cache: str | None = None) -> subprocess.Popen:
        (tmp / name).mkdir()
        env = base_env(
            LITDISTILL_OUTPUTS=str(tmp / name / "outputs"),
            LITDISTILL_CACHE=str(tmp / (cache or name) / "cache"),
            CACHE_EVENTS=str(tmp / f"{name}.jsonl"),
        )
        return subprocess.Popen(
            [sys.executable, str(script), *COMMON, *args],
            cwd=tmp / name,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def finish(name: str, proc: subprocess.Popen) -> list[dict]:
        try:  # the pipes close when rank 1 (which inherits them) is done too
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its session: the launcher and the rank it started
            _, err = proc.communicate()
            pytest.fail(f"{name} hung:\n{err[-4000:]}")
        assert proc.returncode == 0, f"{name}: {err[-4000:]}"
        events = tmp / f"{name}.jsonl"
        return [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []

    # the one-process reference alongside the 2-process build (3 processes, 2 cores): other dirs, the same key
    with ThreadPoolExecutor(2) as pool:
        one = pool.submit(finish, "one", start("one", "cache=build", f"cache.dir={tmp / 'one_store'}"))
        build = pool.submit(finish, "build", start("build", "cache=build", "trainer=ddp_cpu"))
        result = {"one": one.result(), "build": build.result(), "one_store": tmp / "one_store"}
    stores = sorted((tmp / "build" / "cache" / "teacher_outputs").iterdir())
    assert len(stores) == 1, stores
    use = start("use", "cache=use", "trainer=ddp_cpu", "student=tiny_bert", cache="build")  # found by its key
    return {**result, "store": stores[0], "use": finish("use", use), "outputs": tmp / "use" / "outputs"}


def test_ddp_build_ranks_write_disjoint_shards_and_rank_0_the_manifest_once(ddp_cli):
    one = [e for e in ddp_cli["one"] if e["kind"] == "shard"]
    assert sorted(e["shard"] for e in one) == shard_names() and {tuple(e["rank_world"]) for e in one} == {(0, 1)}

    build = ddp_cli["build"]
    shards = [e for e in build if e["kind"] == "shard"]
    assert {e["store"] for e in shards} == {str(ddp_cli["store"])}
    assert all(e["rank_world"] == [e["rank"], 2] for e in shards)  # the build saw the 2-process group
    assert len({e["pid"] for e in shards}) == 2  # two real processes
    written = {r: sorted(e["shard"] for e in shards if e["rank"] == r) for r in (0, 1)}
    assert written == {r: sorted(shard_names()[r::2]) for r in (0, 1)}  # each rank its own, each shard once

    manifests = [e for e in build if e["kind"] == "manifest"]
    assert len(manifests) == 1 and manifests[0]["rank_world"] == [0, 2], manifests
    manifest = json.loads((ddp_cli["store"] / "manifest.json").read_text())
    files = sha256s(ddp_cli["store"])
    listed = {s["file"]: s["sha256"] for split in manifest["splits"].values() for s in split["shards"]}
    assert sorted(listed) == sorted(f"{name}.safetensors" for name in shard_names())
    assert all(files[name] == digest for name, digest in listed.items())  # complete: every shard, checksummed
    assert {split: entry["examples"] for split, entry in manifest["splits"].items()} == {"train": 128, "validation": 32}


def test_ddp_build_has_the_bytes_of_a_one_process_build(ddp_cli):
    ddp, one = sha256s(ddp_cli["store"]), sha256s(ddp_cli["one_store"])
    assert sum(name.endswith(".safetensors") for name in ddp) == len(shard_names())
    assert ddp == one  # every shard, sidecar, key.json and the manifest


def test_ddp_use_trains_every_rank_from_the_whole_store(ddp_cli):
    use = ddp_cli["use"]
    assert not [e for e in use if e["kind"] in ("shard", "manifest")]  # read, never written
    everything = sorted(f"{name}.safetensors" for name in shard_names())
    for rank in (0, 1):  # each rank's reader spans the store: it opened shards built by both ranks
        assert sorted({e["file"] for e in use if e["kind"] == "open" and e["rank"] == rank}) == everything

    batches = [e for e in use if e["kind"] == "batch"]
    assert len({e["pid"] for e in batches}) == 2
    for split, n in (("train", 128), ("validation", 32)):  # debug=fast: a whole epoch of each on 2 ranks
        per_rank = {r: [i for e in batches if e["split"] == split and e["rank"] == r for i in e["idx"]] for r in (0, 1)}
        assert all(len(e["idx"]) == 16 for e in batches if e["split"] == split)  # data.batch_size per process
        assert not set(per_rank[0]) & set(per_rank[1])  # the ranks split the data, as without the cache
        assert sorted(per_rank[0] + per_rank[1]) == list(range(n))

    run = next(ddp_cli["outputs"].rglob("report.json")).parent
    assert (run / "train_ddp_process_1.log").is_file()
    rows = list(csv.DictReader(next(run.rglob("metrics.csv")).read_text().splitlines()))
    logged = {key: float(value) for row in rows for key, value in row.items() if value}
    assert math.isfinite(logged["train/loss/kd_epoch"]) and "val/agreement" in logged  # the cached teacher in both
    assert (run / "student" / "model.safetensors").is_file()


# ---- the library: 2 processes in a gloo group, one of them killed mid-build ---------------------------------
BUILD_SCRIPT = """
import os, signal, sys
import torch
import torch.distributed as dist
torch.set_num_threads(1)
import litdistill.cache.store as store
from litdistill.cache import TeacherStore, build_store
from tests.test_cache import causal_store_inputs

dist.init_process_group("gloo")  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
if sys.argv[2] == "crash" and dist.get_rank() == 1:  # killed between its 3rd shard's rename and its sidecar's
    write_text, sidecars = store.atomic_write_text, []
    def dying_write_text(path, text):
        if path.parent.name in ("train", "validation"):
            sidecars.append(path)
            if len(sidecars) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return write_text(path, text)
    store.atomic_write_text = dying_write_text
teacher, sources, spec, key = causal_store_inputs(k=16, shard_size=2)
build_store(TeacherStore(sys.argv[1], key), teacher, sources, spec, batch_size=2, progress=False, poll=0.1,
            on_shard=lambda s: print("shard", s.name, flush=True))
print("done", flush=True)
dist.destroy_process_group()
"""


def test_a_rank_killed_mid_build_leaves_whole_shards_and_a_rerun_completes(tmp_path):
    from tests.test_cache import causal_store_inputs, store_files

    from litdistill.cache import TeacherStore, build_store

    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    path = tmp_path / "store"
    env = partial(base_env, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    rank0, rank1 = (
        subprocess.Popen(
            [sys.executable, str(script), str(path), "crash"], stdout=subprocess.PIPE, text=True, env=env(RANK=str(r))
        )
        for r in (0, 1)
    )
    try:
        assert rank1.wait(120) == -signal.SIGKILL
        time.sleep(0.5)
        assert rank0.poll() is None  # rank 0 builds, then waits for rank 1's sidecars: no manifest over missing shards
    finally:
        for proc in (rank0, rank1):  # what a launcher does when a rank dies (Lightning's observer, torchrun)
            proc.kill()
            proc.wait(30)
    assert [line.split()[1] for line in rank1.stdout.read().splitlines()] == ["train/00001", "train/00003"]
    assert not (path / "manifest.json").exists()
    cut = path / "train" / "00005.safetensors"  # rank 1's 3rd shard: renamed into place, its sidecar not written
    assert cut.is_file() and not cut.with_suffix(".json").exists()
    for shard in sorted(path.glob("*/*.safetensors")):  # every visible shard is whole
        load_file(shard)
        sidecar = shard.with_suffix(".json")
        if sidecar.exists():
            assert hashlib.sha256(shard.read_bytes()).hexdigest() == json.loads(sidecar.read_text())["sha256"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the processes: same kernels, same bytes
    try:
        teacher, sources, spec, key = causal_store_inputs(k=16, shard_size=2)
        rebuilt: list[str] = []  # the rerun here, as one process: shards do not depend on who builds them
        build_store(
            TeacherStore(path, key),
            teacher,
            sources,
            spec,
            batch_size=2,
            progress=False,
            on_shard=lambda s: rebuilt.append(s.name),
        )
        build_store(TeacherStore(tmp_path / "one", key), teacher, sources, spec, batch_size=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert "train/00005" in rebuilt and not {"train/00001", "train/00003"} & set(rebuilt)  # done shards skipped
    assert store_files(path) == store_files(tmp_path / "one") and "manifest.json" in store_files(path)
