"""`litdistill generate` end to end: the Hydra config, a real HTTP teacher on 127.0.0.1 with injected
faults, the resumable store (SIGKILL, Ctrl-C and SIGTERM mid-run, then a rerun), the manifest, secrets, the
training-stage readers, clear config errors before any request, and a tiny local Hugging Face teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from tests.test_generation_client import COMPLETION_TOKENS, KEY_ENV, SECRET, FakeChatServer, answer

from litdistill.core.conf import config_dir
from litdistill.generation import (
    ConfigError,
    ResultStore,
    TemplateError,
    load_generated,
    to_classification_records,
    to_sft_records,
)
from litdistill.generation.store import read_jsonl
from litdistill.pipeline.generate import generate

REPO = Path(__file__).resolve().parents[1]

# A subprocess that composes the config like the CLI does and runs the stage. The generation stage
# imports neither torch nor Lightning, but litdistill/__init__.py does (10-20 s on 2 busy cores), so the
# script registers the package's namespace without running its __init__; the code under test is the same.
SCRIPT = """
import sys, types
package = types.ModuleType("litdistill")
package.__path__ = [sys.argv.pop(1)]
sys.modules["litdistill"] = package
from hydra import compose, initialize_config_dir
from litdistill.pipeline.generate import generate
conf = sys.argv.pop(1)
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = compose(config_name="generate", overrides=sys.argv[1:])
assert "torch" not in sys.modules
print("output:", generate(cfg), flush=True)
"""


def compose_generate(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="generate", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def api_overrides(server: FakeChatServer, out: Path, inputs: Path | None = None, **extra) -> list[str]:
    opts = {
        "teacher_api.base_url": server.url,
        "teacher_api.model": "teacher-1",
        "teacher_api.api_key_env": KEY_ENV,
        "teacher_api.timeout": 0.5,
        "teacher_api.max_retries": 3,
        "teacher_api.backoff_base": 0.01,
        "teacher_api.backoff_max": 0.05,
        "teacher_api.max_concurrency": 4,
        "teacher_api.prices.input": 2.0,
        "teacher_api.prices.output": 8.0,
        "output_dir": str(out),
        "progress": False,
    }
    if inputs is not None:
        opts["input.path"] = str(inputs)
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_secret_nowhere(root: Path) -> None:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked, f"the API key was written to {leaked}"


def store_lines(out: Path) -> list[dict]:
    """Every line of results.jsonl; each must be complete JSON."""
    lines = (out / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture
def server():
    with FakeChatServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


# -- end to end with faults, then a rerun --------------------------------------------------------------------
def test_generate_with_faults_then_rerun_retries_only_failures(server, tmp_path):
    prompts = [
        {"id": "p0", "prompt": "What is aspirin?"},
        {"id": "p1", "prompt": "Rate limited [429x2]"},
        {"id": "p2", "prompt": "Flaky [500x1]"},
        {"id": "p3", "prompt": "Slow [slowx1]"},
        {"id": "p4", "prompt": "Broken [badjson]"},
        {"id": "p5", "prompt": "Empty [nochoices]"},
        {"id": "p6", "prompt": "Down [500x99]"},
        {"id": "p7", "prompt": "What is ibuprofen?"},
    ]
    inputs = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    out = tmp_path / "gen"
    cfg = compose_generate(api_overrides(server, out, inputs))
    assert generate(cfg) == out

    lines = store_lines(out)
    assert sorted(r["id"] for r in lines) == [p["id"] for p in prompts]  # exactly one line per prompt
    by_id = {r["id"]: r for r in lines}
    ok, failed = {"p0", "p1", "p2", "p3", "p7"}, {"p4", "p5", "p6"}
    assert {i for i, r in by_id.items() if r["status"] == "ok"} == ok
    for i in ok:
        assert by_id[i]["response"] == answer(by_id[i]["prompt"])
    assert by_id["p1"]["attempts"] == 3 and by_id["p2"]["attempts"] == 2 and by_id["p3"]["attempts"] == 2
    assert "invalid JSON" in by_id["p4"]["error"] and "no choices" in by_id["p5"]["error"]
    assert "HTTP 500" in by_id["p6"]["error"] and by_id["p6"]["attempts"] == 4
    assert server.count("[429x2]") == 3 and server.count("[500x99]") == 4

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete_with_failures"
    assert manifest["counts"] == {"total": 8, "ok": 5, "failed": 3, "pending": 0, "other_records_in_store": 0}
    assert manifest["model"] == "teacher-1" and manifest["base_url"] == server.url
    assert manifest["api_key_env"] == KEY_ENV and manifest["template"]["name"] == "answer"
    assert manifest["settings"] == {"temperature": 0.0, "max_tokens": 512}
    assert manifest["input"]["count"] == 8 and len(manifest["input"]["key"]) == 64
    assert manifest["litdistill_version"] and manifest["created"]
    tokens_in = sum(len(by_id[i]["prompt"].split()) for i in ok | {"p5"})  # p5 was billed without choices
    assert manifest["usage"] == {
        "prompt_tokens": tokens_in,
        "completion_tokens": COMPLETION_TOKENS * 5,
        "total_tokens": tokens_in + COMPLETION_TOKENS * 5,
    }
    assert manifest["estimated_cost_usd"] == pytest.approx((tokens_in * 2.0 + COMPLETION_TOKENS * 5 * 8.0) / 1e6)
    # every response billed so far: here the dataset's, each prompt having been answered once
    assert manifest["spent"] == {**manifest["usage"], "estimated_cost_usd": manifest["estimated_cost_usd"]}
    assert manifest["last_run"]["requests"]["retries"] == 2 + 1 + 1 + 3
    dataset = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert [r["id"] for r in dataset] == ["p0", "p1", "p2", "p3", "p7"]  # successes, in input order
    assert KEY_ENV in (out / "config.yaml").read_text()
    assert_secret_nowhere(out)

    # the rerun against a fixed server re-requests only the failures
    server.healthy = True
    before = {p["prompt"]: server.count(p["prompt"]) for p in prompts}
    generate(compose_generate(api_overrides(server, out, inputs)))
    for p in prompts:
        extra = server.count(p["prompt"]) - before[p["prompt"]]
        assert extra == (1 if p["id"] in failed else 0), p
    lines = store_lines(out)
    assert sorted(r["id"] for r in lines) == [p["id"] for p in prompts] and all(r["status"] == "ok" for r in lines)
    manifest2 = json.loads((out / "manifest.json").read_text())
    assert manifest2["status"] == "complete" and manifest2["counts"]["ok"] == 8
    # the dataset's usage counts each prompt's latest answer; the spend also keeps p5's first, billed
    # response without choices, which its successful retry replaced in the store
    p5_first = len(by_id["p5"]["prompt"].split())
    tokens_in2 = sum(len(p["prompt"].split()) for p in prompts)
    assert manifest2["usage"] == {
        "prompt_tokens": tokens_in2,
        "completion_tokens": COMPLETION_TOKENS * 8,
        "total_tokens": tokens_in2 + COMPLETION_TOKENS * 8,
    }
    spent = manifest2["spent"]
    assert spent == {
        "prompt_tokens": tokens_in2 + p5_first,
        "completion_tokens": COMPLETION_TOKENS * 8,
        "total_tokens": tokens_in2 + p5_first + COMPLETION_TOKENS * 8,
        "estimated_cost_usd": pytest.approx(manifest2["estimated_cost_usd"] + p5_first * 2.0 / 1e6),
    }
    run1, run2 = manifest["last_run"], manifest2["last_run"]
    assert spent["total_tokens"] == run1["usage"]["total_tokens"] + run2["usage"]["total_tokens"]
    assert spent["estimated_cost_usd"] == pytest.approx(run1["estimated_cost_usd"] + run2["estimated_cost_usd"])
    generate(compose_generate(api_overrides(server, out, inputs)))  # nothing left to request: nothing spent
    assert json.loads((out / "manifest.json").read_text())["spent"] == spent
    assert manifest2["created"] == manifest["created"]
    assert len(load_generated(out)) == 8 and len(to_sft_records(out / "dataset.jsonl")) == 8
    assert_secret_nowhere(out)


def test_progress_bar_counts_requests_and_shows_ok_failed_retries_and_cost(server, tmp_path, capsys):
    out = tmp_path / "gen"
    generate(
        compose_generate(
            api_overrides(
                server,
                out,
                progress=True,
                **{"input.prompts": "['What is aspirin?','Flaky [500x1]','Broken [badjson]']"},
            )
        )
    )
    err = capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    cost = manifest["last_run"]["estimated_cost_usd"]
    assert cost > 0
    assert "3/3 [" in err and f"cost=${cost:.4f}, failed=1, ok=2, retries=1]" in err, err[-1000:]  # tqdm sorts


def test_inputs_repeating_a_prompt_are_requested_once_and_each_id_gets_the_result(server, tmp_path):
    """Different ids, the same rendered prompt: one request, and every id is in dataset.jsonl (the
    repeat marked ``duplicate_of``), so a dataset has a row for each input a user gave."""
    inputs = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "What is aspirin?"},
            {"id": "b", "prompt": "Why?"},
            {"id": "c", "prompt": "What is aspirin?", "source": "forum"},
        ],
    )
    out = tmp_path / "gen"
    for _ in range(2):  # the rerun requests nothing and writes the same dataset
        generate(compose_generate(api_overrides(server, out, inputs)))
        assert server.exact("What is aspirin?") == 1 and server.total == 2
        dataset = read_jsonl(out / "dataset.jsonl")[0]
        assert [r["id"] for r in dataset] == ["a", "b", "c"]
        assert dataset[2]["response"] == dataset[0]["response"] == answer("What is aspirin?")
        assert dataset[2]["duplicate_of"] == "a" and "duplicate_of" not in dataset[0]
        assert [r["id"] for r in store_lines(out)] == ["a", "b"]  # the store: one line per request
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["input"]["count"] == 3 and manifest["input"]["duplicates"] == 1
        assert manifest["counts"]["total"] == 2 and manifest["status"] == "complete"


def test_sft_records_and_the_training_data_module_read_the_dataset(server, tmp_path, tokenizer_dir):
    out = tmp_path / "gen"
    generate(
        compose_generate(
            api_overrides(
                server, out, **{"input.prompts": "['What is a rash?','Is aspirin an NSAID?']", "prompt": "explain"}
            )
        )
    )
    sft = to_sft_records(out)
    assert [r["prompt"] for r in sft] == ["What is a rash?", "Is aspirin an NSAID?"]
    assert sft[0]["response"] == answer("What is a rash?")
    assert to_sft_records(out, with_system=True)[0]["prompt"][0]["role"] == "system"  # the Orca system prompt
    assert server.bodies[0]["messages"][0]["role"] == "system"
    from litdistill.data.sft import SFTDataModule

    dm = SFTDataModule(
        tokenizer=tokenizer_dir,
        data_files={"train": str(out / "dataset.jsonl"), "validation": str(out / "dataset.jsonl")},
        max_length=64,
    )
    dm.setup()
    assert len(dm.splits["train"]) == 2 and any(lab != -100 for lab in dm.splits["train"][0]["labels"])


def label_sentences(server: FakeChatServer, tmp_path: Path, sentences: dict[str, str]) -> Path:
    """Run the ade_label prompt over ``{id: sentence}`` (a CSV input); returns the output folder."""
    source = tmp_path / "ade.csv"
    source.write_text("sentence_id,text\n" + "".join(f"{i},{text}\n" for i, text in sentences.items()))
    out = tmp_path / "ade"
    generate(
        compose_generate(
            api_overrides(
                server, out, source, prompt="ade_label", **{"input.field": "text", "input.id_field": "sentence_id"}
            )
        )
    )
    return out


def test_ade_labelling_writes_labels_and_soft_labels(server, tmp_path):
    out = label_sentences(
        server,
        tmp_path,
        {
            "s1": "Lithium-induced hypothyroidism was noted.",
            "s2": "The patient was given aspirin for pain.",
            "s3": "Drug-induced rash after amoxicillin.",
        },
    )
    assert server.bodies[0]["logprobs"] is True and server.bodies[0]["max_tokens"] == 3
    rows = to_classification_records(out)
    assert [(r["id"], r["text"], r["label"]) for r in rows] == [
        ("s1", "Lithium-induced hypothyroidism was noted.", 1),
        ("s2", "The patient was given aspirin for pain.", 0),
        ("s3", "Drug-induced rash after amoxicillin.", 1),
    ]
    assert rows[0]["soft_label"] == pytest.approx([0.1, 0.9]) and rows[1]["soft_label"] == pytest.approx([0.8, 0.2])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["label_names"] == ["not_ade", "ade"] and manifest["settings"]["top_logprobs"] == 10
    dataset = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert dataset[0]["label"] == 1 and dataset[0]["text"].startswith("Lithium")


def test_odd_server_values_fail_one_prompt_and_never_the_run(server, tmp_path):
    """A "log-probability" of 1000 (exp overflows), infinite token counts and a key echoed past the cut
    of the error text: each prompt ends with one record, the run completes, no piece of the key is kept."""
    out = label_sentences(
        server,
        tmp_path,
        {
            "s1": "Lithium-induced hypothyroidism [hugelogprob].",
            "s2": "Aspirin was given [badusage].",
            "s3": "Drug-induced rash [401long].",
            "s4": "Lithium-induced tremor.",
        },
    )
    by_id = {r["id"]: r for r in store_lines(out)}
    assert sorted(by_id) == ["s1", "s2", "s3", "s4"]
    assert by_id["s1"]["status"] == "ok" and by_id["s1"]["label"] == 1 and by_id["s1"]["soft_label"][1] > 0.9
    assert by_id["s2"]["status"] == "failed" and "could not parse a label" in by_id["s2"]["error"]  # "fine" is no label
    assert by_id["s3"]["status"] == "failed" and "HTTP 401" in by_id["s3"]["error"]
    assert by_id["s4"]["status"] == "ok" and by_id["s4"]["label"] == 1
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete_with_failures"
    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET[:8].encode() in p.read_bytes()]
    assert not leaked, leaked


# -- crash safety ----------------------------------------------------------------------------------------------
def _spawn(overrides: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, KEY_ENV: SECRET, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    package_dir = str(Path(__import__("litdistill").__file__).parent)
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, package_dir, str(config_dir()), *overrides],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(out: Path) -> int:
    path = out / "results.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _signal_after_lines(procs: dict[str, tuple[Path, subprocess.Popen, int]], n: int, timeout: float = 120) -> None:
    """Send each process its signal as soon as its store holds ``n`` results."""
    pending = dict(procs)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name, (out, proc, sig) in list(pending.items()):
            if _lines(out) >= n:
                proc.send_signal(sig)
                del pending[name]
            elif proc.poll() is not None:
                raise AssertionError(
                    f"{name}: generation ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}"
                )
        time.sleep(0.01)
    for _, proc, _ in pending.values():
        proc.kill()
    assert not pending, f"no results were written in time by {list(pending)}"


def test_sigkill_ctrl_c_and_sigterm_mid_run_then_resume(tmp_path):
    """Three runs at once against slow servers: one SIGKILLed, one interrupted with SIGINT (Ctrl-C), one
    with SIGTERM (a scheduler's kill). Each leaves complete lines only; SIGINT and SIGTERM stop cleanly
    with a consistent store and manifest. Each rerun finishes the job with exactly one line per prompt,
    no duplicates, and never re-requests a prompt whose result was already stored."""
    n = 40
    signals = {"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM}
    with (
        FakeChatServer(delay=0.25) as kill_srv,
        FakeChatServer(delay=0.25) as int_srv,
        FakeChatServer(delay=0.25) as term_srv,
    ):
        jobs = {}
        for name, srv in (("kill", kill_srv), ("int", int_srv), ("term", term_srv)):
            inputs = write_jsonl(tmp_path / f"{name}.jsonl", [{"prompt": f"{name} question {i}"} for i in range(n)])
            out = tmp_path / name
            overrides = api_overrides(srv, out, inputs, **{"teacher_api.max_concurrency": 2, "teacher_api.timeout": 5})
            jobs[name] = (srv, out, overrides, _spawn(overrides, tmp_path))
        _signal_after_lines({name: (out, proc, signals[name]) for name, (_, out, _, proc) in jobs.items()}, 4)
        for name in jobs:
            srv, out, overrides, proc = jobs[name]
            _, stderr = proc.communicate(timeout=30)
            assert proc.returncode != 0, stderr[-2000:]
            assert SECRET not in stderr
            if name in ("int", "term"):  # a clean stop, the store and manifest consistent
                assert proc.returncode == 1 or proc.returncode == -signal.SIGINT, (name, proc.returncode)
                assert "KeyboardInterrupt" in stderr and "interrupted" in stderr
                if name == "term":
                    assert f"KeyboardInterrupt: signal {int(signal.SIGTERM)}" in stderr
                manifest = json.loads((out / "manifest.json").read_text())
                assert manifest["status"] == "interrupted"
                assert manifest["counts"]["ok"] == len(store_lines(out)) == len(read_jsonl(out / "dataset.jsonl")[0])
                # queued requests were dropped: at most the in-flight ones went out after the last result
                assert srv.total <= len(store_lines(out)) + 4
            first = store_lines(out)
            assert 4 <= len(first) < n and len({r["id"] for r in first}) == len(first)
            assert all(r["status"] == "ok" for r in first)
            done_prompts = {r["prompt"] for r in first}
            srv.delay = 0.01
            requested_before = {p: srv.exact(p) for p in (f"{name} question {i}" for i in range(n))}

            assert generate(compose_generate(overrides)) == out  # resume in-process
            final = store_lines(out)
            assert len(final) == n and sorted(r["prompt"] for r in final) == sorted(
                f"{name} question {i}" for i in range(n)
            )
            assert all(r["status"] == "ok" for r in final)
            for prompt, before in requested_before.items():
                again = srv.exact(prompt) - before
                assert again == (0 if prompt in done_prompts else 1), (name, prompt)
            kept = {r["prompt"]: r for r in first}
            assert all(r == kept[r["prompt"]] for r in final if r["prompt"] in kept)  # earlier results untouched
            assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
            assert_secret_nowhere(out)


def test_ctrl_c_exits_without_waiting_for_requests_in_flight(tmp_path):
    """Requests in flight when Ctrl-C comes are abandoned: the process exits at once, not when the
    server answers or the teacher's timeout (300 s for vllm) runs out, and the manifest says so."""
    with FakeChatServer(delay=20) as srv:
        out = tmp_path / "gen"
        proc = _spawn(
            api_overrides(
                srv,
                out,
                **{
                    "input.prompts": "['one','two','three']",
                    "teacher_api.timeout": 30,
                    "teacher_api.max_concurrency": 2,
                },
            ),
            tmp_path,
        )
        deadline = time.monotonic() + 120
        while srv.in_flight < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.in_flight == 2, proc.poll()
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        exit_s = time.monotonic() - sent
    assert proc.returncode in (1, -signal.SIGINT) and "KeyboardInterrupt" in stderr, stderr[-2000:]
    assert exit_s < 5, exit_s  # the server would answer after 20 s
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    assert store_lines(out) == []


def test_truncated_last_line_is_dropped_and_repaired(tmp_path):
    out = tmp_path / "store"
    with ResultStore(out) as store:
        store.append({"key": "a", "id": "1", "status": "ok", "response": "x"})
        store.append({"key": "b", "id": "2", "status": "failed", "error": "HTTP 500"})
    with open(out / "results.jsonl", "ab") as f:
        f.write(b'{"key": "c", "id": "3", "status": "o')  # a write cut short by a crash
    with ResultStore(out) as store:
        assert set(store.records) == {"a", "b"} and store.is_done("a") and not store.is_done("b")
        store.append({"key": "b", "id": "2", "status": "ok", "response": "y"})  # a retried failure
        store.append({"key": "c", "id": "3", "status": "ok", "response": "z"})
        assert len(store_lines(out)) == 4  # every line whole: the truncated tail was cut before appending
        store.compact(order=["c", "b", "a"])
    assert [r["key"] for r in store_lines(out)] == ["c", "b", "a"]
    assert [r["response"] for r in load_generated(out)] == ["z", "y", "x"]
    with ResultStore(out), pytest.raises(RuntimeError, match="another `litdistill generate`"):
        ResultStore(out).open()


# -- config errors before any request -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        ({"teacher_api.api_key_env": "NO_SUCH_VAR_LITDISTILL"}, ConfigError, r"NO_SUCH_VAR_LITDISTILL.*not set"),
        (
            {"input.field": "question"},
            ConfigError,
            r"input.field='question'.*available fields: \['id', 'prompt', 'topic'\]",
        ),
        ({"prompt.user": "'About {topic}: {input} ({source})'"}, TemplateError, r"\['source'\].*available fields"),
        ({"prompt.parser": "json"}, TemplateError, r"prompt.parser='json'.*valid parsers"),
        ({"teacher_api.type": "grpc"}, ConfigError, r"teacher_api.type='grpc'.*\['openai', 'local_hf'\]"),
        ({"generation.max_tokens": 0}, ConfigError, r"generation.max_tokens=0"),
        ({"input.path": "missing.jsonl"}, ConfigError, r"input.path='missing.jsonl' does not exist"),
        ({"input.path": "prompts.xml"}, ConfigError, r"format '.xml'.*'.jsonl'"),
        ({"+teacher_api.api_key": SECRET}, ConfigError, r"keys never go in configs"),
    ],
)
def test_bad_config_fails_before_any_request(extra, error, match, server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.xml").write_text("<x/>")
    inputs = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "hi", "topic": "t"}])
    with pytest.raises(error, match=match) as err:
        generate(compose_generate(api_overrides(server, tmp_path / "out", inputs, **extra)))
    assert SECRET not in str(err.value)
    assert server.total == 0 and not (tmp_path / "out").exists()


def test_inputs_from_txt_csv_and_config_with_stable_ids(tmp_path):
    from litdistill.pipeline.generate import load_inputs

    (tmp_path / "p.txt").write_text("What is aspirin?\n\nWhy rash?\n")
    recs, _ = load_inputs({"path": str(tmp_path / "p.txt"), "field": "prompt"})
    assert [r["prompt"] for r in recs] == ["What is aspirin?", "Why rash?"]
    again, _ = load_inputs({"prompts": ["What is aspirin?", "Why rash?"], "field": "prompt"})
    assert [r["__id__"] for r in recs] == [r["__id__"] for r in again]  # content hash: the same prompt, the same id
    (tmp_path / "p.csv").write_text("id,question\nq1,What is aspirin?\n")
    recs, _ = load_inputs({"path": str(tmp_path / "p.csv"), "field": "question"})
    assert recs[0]["__id__"] == "q1" and recs[0]["question"] == "What is aspirin?"
    with pytest.raises(ConfigError, match="exactly one of input.path"):
        load_inputs({"path": str(tmp_path / "p.csv"), "prompts": ["x"]})
    with pytest.raises(ConfigError, match="record 1 .* input field 'prompt' is ''"):
        load_inputs({"prompts": ["ok", ""]})
    write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "one"}, {"id": "a", "prompt": "two"}])
    with pytest.raises(ConfigError, match="input id 'a'.*two different prompts"):
        generate(
            compose_generate(
                [
                    "input.path=" + str(tmp_path / "dup.jsonl"),
                    f"teacher_api.api_key_env={KEY_ENV}",
                    f"output_dir={tmp_path / 'out'}",
                ]
            )
        )


def test_unknown_prompt_option_is_reported_by_hydra(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="nope"):
        compose_generate(["prompt=nope"])


# -- what a result's key covers: changed settings regenerate, an unchanged rerun reuses ----------------------
def _store_by_id(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(out / "dataset.jsonl")[0]}


def test_record_key_changed_settings_regenerate_unchanged_rerun_reuses(server, tmp_path):
    prompts = [{"id": f"p{i}", "prompt": f"What is drug {i}?"} for i in range(3)]
    inputs = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    out = tmp_path / "gen"
    base = api_overrides(server, out, inputs)
    generate(compose_generate(base))
    assert server.total == 3
    first = store_lines(out)

    # unchanged, or changed only in what does not change an answer: nothing is requested
    for extra in (
        [],
        [
            "teacher_api.timeout=2",
            "teacher_api.max_concurrency=1",
            "teacher_api.max_retries=1",
            "teacher_api.prices.input=9.0",
        ],
    ):
        generate(compose_generate(base + extra))
        assert server.total == 3, extra
        assert store_lines(out) == first
        assert json.loads((out / "manifest.json").read_text())["last_run"]["requests"]["requests"] == 0

    # each change of model, template or a generation setting: every prompt is generated anew
    changes = [
        (["generation.temperature=0.7"], lambda body: body["temperature"] == 0.7),
        (["generation.max_tokens=64"], lambda body: body["max_tokens"] == 64),
        (["generation.seed=3"], lambda body: body["seed"] == 3),
        (["teacher_api.model=teacher-2"], lambda body: body["model"] == "teacher-2"),
        (["+teacher_api.extra_body.top_k=5"], lambda body: body["top_k"] == 5),
        (["prompt.system='Be brief.'"], lambda body: body["messages"][0] == {"role": "system", "content": "Be brief."}),
        (["prompt.user='Question: {input}'"], lambda body: body["messages"][-1]["content"].startswith("Question: ")),
        (["prompt=explain"], lambda body: "step by step" in body["messages"][0]["content"]),
    ]
    for n, (extra, sent) in enumerate(changes, 1):
        before = server.total
        generate(compose_generate(base + extra))
        assert server.total - before == 3, extra  # each prompt exactly once
        assert all(sent(body) for body in server.bodies[-3:]), extra
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"] == {"total": 3, "ok": 3, "failed": 0, "pending": 0, "other_records_in_store": 3 * n}
        assert sorted(_store_by_id(out)) == ["p0", "p1", "p2"]  # the dataset holds this config's results only
        generate(compose_generate(base + extra))  # and the same changed config again reuses them
        assert server.total - before == 3, extra
    assert _store_by_id(out)["p0"]["messages"][0]["content"].startswith("You are a helpful assistant")

    # back to the first config: its results are still in the store; nothing is requested
    before = server.total
    generate(compose_generate(base))
    assert server.total == before
    assert [r["response"] for r in read_jsonl(out / "dataset.jsonl")[0]] == [r["response"] for r in first]
    assert len(store_lines(out)) == 3 * (len(changes) + 1)  # one line per (prompt, settings): no duplicates
    assert [r["key"] for r in store_lines(out)[:3]] == [r["key"] for r in first]


def test_changed_label_words_relabel_rather_than_reuse_old_labels(server, tmp_path):
    sentences = tmp_path / "ade.csv"
    sentences.write_text(
        "sentence_id,text\ns1,Lithium-induced hypothyroidism was noted.\ns2,The patient was given aspirin for pain.\n"
    )
    out = tmp_path / "ade"
    base = api_overrides(
        server, out, sentences, prompt="ade_label", **{"input.field": "text", "input.id_field": "sentence_id"}
    )
    generate(compose_generate(base))
    generate(compose_generate(base))
    assert server.total == 2
    assert [r["label"] for r in to_classification_records(out)] == [1, 0]
    # the same requests, but class 0 is now "ade": the old records' labels would be wrong, so it asks again
    swapped = "prompt.labels=[{name: ade, words: [yes]}, {name: not_ade, words: [no]}]"
    generate(compose_generate([*base, swapped]))
    assert server.total == 4
    rows = {r["id"]: r for r in read_jsonl(out / "dataset.jsonl")[0]}
    assert (rows["s1"]["label"], rows["s1"]["label_name"]) == (0, "ade")
    assert (rows["s2"]["label"], rows["s2"]["label_name"]) == (1, "not_ade")
    assert rows["s1"]["soft_label"] == pytest.approx([0.9, 0.1])
    assert json.loads((out / "manifest.json").read_text())["label_names"] == ["ade", "not_ade"]


# -- an answer the label parser can't read --------------------------------------------------------------------
def test_unparseable_label_answer_is_a_counted_failed_record_left_out_of_the_dataset(server, tmp_path):
    """The fake teacher answers 'Answer to: <sentence>'; with the sentence as the whole prompt and no
    logprobs, 'yes'/'no' parse (the only label word) and 'Perhaps' can't be parsed."""
    out = tmp_path / "labels"
    base = api_overrides(
        server,
        out,
        prompt="ade_label",
        **{
            "prompt.user": "'{input}'",
            "prompt.soft_labels": "false",
            "input.prompts": "[{id: a, prompt: 'yes'}, {id: b, prompt: Perhaps}, {id: c, prompt: 'no'}]",
        },
    )
    generate(compose_generate(base))  # a parse failure does not end the run
    by_id = {r["id"]: r for r in store_lines(out)}
    assert by_id["a"]["status"] == "ok" and by_id["a"]["label"] == 1 and by_id["c"]["label"] == 0
    bad = by_id["b"]
    assert bad["status"] == "failed" and bad["response"] == "Answer to: Perhaps"  # the answer is kept
    assert bad["error"].startswith("parse error: could not parse a label") and "'yes'" in bad["error"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete_with_failures"
    assert manifest["counts"] == {"total": 3, "ok": 2, "failed": 1, "pending": 0, "other_records_in_store": 0}
    assert manifest["errors"] == {"parse error": 1}
    assert [r["id"] for r in to_classification_records(out)] == ["a", "c"]  # what training reads
    assert [r["id"] for r in read_jsonl(out / "dataset.jsonl")[0]] == ["a", "c"]
    # a rerun asks again for the failed prompt only; retry_failed=false leaves it be
    generate(compose_generate(base))
    assert server.count("Perhaps") == 2 and server.total == 4
    generate(compose_generate([*base, "retry_failed=false"]))
    assert server.total == 4
    assert len(store_lines(out)) == 3


# -- credentials in the base URL -------------------------------------------------------------------------------
def test_base_url_credentials_are_masked_in_the_saved_config_and_every_file(server, tmp_path):
    password, token = "pa55-SECRET-word", "QUERYSECRET123"
    port = server.url.split(":")[-1].split("/")[0]
    url = f"http://alice:{password}@127.0.0.1:{port}/v1?token={token}"
    out = tmp_path / "gen"
    generate(
        compose_generate(
            api_overrides(
                server,
                out,
                **{"teacher_api.base_url": f"'{url}'", "teacher_api.max_retries": 0, "input.prompts": "['hello']"},
            )
        )
    )
    config = (out / "config.yaml").read_text()
    assert f"base_url: http://127.0.0.1:{port}/v1?token=***" in config and "alice" not in config
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_url"] == f"http://127.0.0.1:{port}/v1?token=***"
    assert len(store_lines(out)) == 1  # the request itself (urllib takes no user:password in a URL) is recorded
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert password.encode() not in data and token.encode() not in data, path


# -- the ADE case study: generate writes where experiment=ade_llm_labels reads ---------------------------------
def _documented_commands(text: str, start: str) -> list[list[str]]:
    """Each command line (joined over trailing backslashes, comments cut) that starts with ``start``."""
    import shlex

    lines = [line.strip().lstrip("#").strip() for line in text.splitlines()]
    commands, i = [], 0
    while i < len(lines):
        if lines[i].startswith(start):
            command = lines[i]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i]
            commands.append(shlex.split(command, comments=True))
        i += 1
    return commands


def test_ade_generate_command_in_the_docs_writes_where_the_experiment_reads(compose_train):
    experiment = (REPO / "conf" / "experiment" / "ade_llm_labels.yaml").read_text()
    sources = {
        "docs/generation.md": (REPO / "docs" / "generation.md").read_text(),
        "conf/experiment/ade_llm_labels.yaml": experiment,
    }
    train_cfg = compose_train(["experiment=ade_llm_labels"])
    reads = train_cfg.data.teacher_labels
    # the case study's student is the real PubMedBERT
    assert train_cfg.student.name_or_path == "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
    checked = 0
    for name, text in sources.items():
        for command in _documented_commands(text, "litdistill generate"):
            if "prompt=ade_label" not in command:
                continue
            assert "teacher_api=gpt35_turbo" in command, (name, command)
            cfg = compose_generate(command[2:])
            assert cfg.teacher_api.model == "gpt-3.5-turbo" and cfg.prompt.name == "ade_label"
            assert os.path.normpath(cfg.output_dir) == os.path.normpath(reads), (name, command)
            checked += 1
        assert any(
            c[:2] == ["litdistill", "experiment=ade_llm_labels"] for c in _documented_commands(text, "litdistill")
        )
    assert checked == 2
    assert os.path.normpath(reads) == os.path.normpath("outputs/generated/gpt-3.5-turbo/ade_label")
    assert "reads ./outputs/generated/gpt-3.5-turbo/ade_label" in sources["docs/generation.md"]
    # the default teacher is another model: its labels land elsewhere, which the docs say how to point at
    other = compose_generate(["prompt=ade_label"]).output_dir
    assert os.path.normpath(other) != os.path.normpath(reads)
    assert f"data.teacher_labels={os.path.normpath(other)}" in sources["docs/generation.md"]


# -- a local Hugging Face teacher ------------------------------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for m in messages %}< {{ m['role'] }} > {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}< assistant >{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [
        "[PAD]",
        "[UNK]",
        "<s>",
        "</s>",
        "<",
        ">",
        "user",
        "assistant",
        "system",
        "yes",
        "no",
        "is",
        "a",
        "the",
        "drug",
        "rash",
        "what",
        "why",
        "how",
        "aspirin",
        "ibuprofen",
        "lithium",
        "caused",
        "cause",
        "induced",
        "sentence",
        "answer",
        "one",
        "word",
        ":",
        "?",
        ".",
        ",",
        "describe",
        "adverse",
        "event",
        "does",
        "following",
        "with",
        "or",
    ]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=vocab["[PAD]"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def local_overrides(model_dir: Path, out: Path, **extra) -> list[str]:
    opts = {
        "teacher_api": "local_hf",
        "teacher_api.name_or_path": str(model_dir),
        "teacher_api.device": "cpu",
        "teacher_api.batch_size": 3,
        "generation.max_tokens": 5,
        "output_dir": str(out),
        "progress": False,
        "input.prompts": "['what is aspirin ?','why does lithium cause a rash ?','how','is ibuprofen a drug ?',"
        "'what caused the adverse event ?']",
    }
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


def test_local_hf_teacher_batches_with_left_padding_and_resumes(tiny_llama_dir, tmp_path):
    out = tmp_path / "local"
    generate(compose_generate(local_overrides(tiny_llama_dir, out)))
    lines = store_lines(out)
    assert len(lines) == 5 and all(r["status"] == "ok" for r in lines)
    assert all(r["usage"]["completion_tokens"] <= 5 and r["finish_reason"] in ("stop", "length") for r in lines)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher_type"] == "local_hf" and manifest["settings"]["chat_template"] is True
    assert manifest["settings"]["do_sample"] is False and manifest["base_url"] is None

    # batched (left-padded) greedy generation equals one prompt at a time
    single = tmp_path / "single"
    generate(compose_generate(local_overrides(tiny_llama_dir, single, **{"teacher_api.batch_size": 1})))
    assert {r["id"]: r["response"] for r in store_lines(single)} == {r["id"]: r["response"] for r in lines}
    assert {r["id"] for r in lines} == {r["id"] for r in store_lines(single)}  # content-hash ids are stable

    # the rerun generates nothing
    generate(compose_generate(local_overrides(tiny_llama_dir, out)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["last_run"]["usage"]["total_tokens"] == 0 and manifest["counts"]["ok"] == 5
    assert store_lines(out) == lines


def test_local_hf_teacher_soft_labels_from_logits(tiny_llama_dir, tmp_path):
    """soft_label = softmax of the logits at the prompt's last position, over the classes' answer tokens
    ("no" for not_ade, "yes" for ade: the template's only label words in this vocabulary), renormalised;
    recomputed here from an unbatched forward pass, so a wrong token id or position would fail."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from litdistill.generation.local import LocalHFTeacher
    from litdistill.generation.templates import load_template

    out = tmp_path / "ade_local"
    generate(
        compose_generate(local_overrides(tiny_llama_dir, out, prompt="ade_label", **{"teacher_api.batch_size": 2}))
    )
    rows = to_classification_records(out)
    assert len(rows) == 5
    for r in rows:
        assert len(r["soft_label"]) == 2 and sum(r["soft_label"]) == pytest.approx(1, abs=1e-5)
        assert r["label"] in (0, 1)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    class_ids = tok.convert_tokens_to_ids(["no", "yes"])
    assert tok.unk_token_id not in class_ids
    soft = {r["id"]: r["soft_label"] for r in rows}
    for record in store_lines(out):
        text = tok.apply_chat_template(record["messages"], add_generation_prompt=True, tokenize=False)
        with torch.no_grad():
            logits = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
        mass = torch.softmax(logits, -1)[class_ids]
        assert soft[record["id"]] == pytest.approx((mass / mass.sum()).tolist(), abs=1e-4)
    # no chat template: the plain prompt text is generated from
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = None
    teacher = LocalHFTeacher(name_or_path=str(tiny_llama_dir), tokenizer=tok, device="cpu")
    messages = load_template("explain").render("what is aspirin ?")
    assert not teacher.uses_chat_template and teacher.prompt_text(messages).endswith("what is aspirin ?\n")
    result = teacher.generate_batch([messages], {"max_tokens": 3})[0]
    assert result.ok and result.usage["completion_tokens"] <= 3


def test_offline_sequence_kd_local_teacher_writes_the_data_student_trains_report_shows_both(tiny_llama_dir, tmp_path):
    """Sequence-level KD end to end through the CLI: the local teacher answers, the student is tuned on
    its answers, and the report scores both on held-out teacher answers. The teacher decoded them
    greedily, so it predicts its own answer tokens better than the barely trained student."""
    from tests.test_cli import run_cli

    words = ["aspirin", "ibuprofen", "lithium", "drug", "rash", "adverse", "event", "sentence", "answer"]
    prompts = [
        {"id": f"p{i}", "prompt": f"what is {a} ? does {b} cause a {c} ?"}
        for i, (a, b, c) in enumerate((a, b, c) for a in words for b in words[:4] for c in words[3:6])
    ][:60]
    gen = tmp_path / "gen"
    proc = run_cli(
        [
            "generate",
            "teacher_api=local_hf",
            f"teacher_api.name_or_path={tiny_llama_dir}",
            "teacher_api.device=cpu",
            "teacher_api.batch_size=8",
            "generation.max_tokens=6",
            f"input.path={write_jsonl(tmp_path / 'p.jsonl', prompts)}",
            f"output_dir={gen}",
        ],
        tmp_path,
    )
    assert len((gen / "dataset.jsonl").read_text().splitlines()) == 60
    assert "60/60" in proc.stderr and "prompt/s" in proc.stderr  # the tqdm bar over the prompts (progress=true)

    run_cli(
        [
            "task=causal_lm",
            "teacher=pretrained",
            f"teacher.name_or_path={tiny_llama_dir}",
            "teacher.num_labels=null",
            "teacher.label_names=null",
            "student=from_teacher",
            "student.layers=[0]",
            "student.every=null",
            f"tokenizer={tiny_llama_dir}",
            "data=sft_files",
            f"data.data_files.train={gen / 'dataset.jsonl'}",
            "data.max_length=64",
            "loss=ce",
            "teacher_finetune=null",
            "baseline=false",
            "report.metric=token_acc",
            "report.repeats=2",
            "trainer.max_epochs=1",
        ],
        tmp_path,
    )
    run = next((tmp_path / "outputs" / "distill" / "runs").iterdir())
    report = json.loads((run / "report.json").read_text())
    teacher, student = report["models"]["teacher"]["metrics"], report["models"]["student"]["metrics"]
    # chance is 1/40 (the vocabulary); the misses are mostly the end-of-sequence token the data module
    # appends where the teacher's 6-token answers were cut at max_tokens
    assert teacher["token_acc"] > 0.6 and teacher["token_acc"] > student["token_acc"]
    assert student["perplexity"] > 1.0 and teacher["perplexity"] > 1.0
    assert "| teacher |" in (run / "report.md").read_text() and "| student |" in (run / "report.md").read_text()
