"""`litdistill generate` through the real CLI in a subprocess: a secret on the command line is refused
before Hydra runs, so no file (Hydra's .hydra/, its job log, generate's outputs) and no output stream
ever holds it; a normal run still writes its config. The teacher is a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from tests.test_generation_client import KEY_ENV, SECRET, FakeChatServer

REPO = Path(__file__).resolve().parents[1]


def run_generate(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        KEY_ENV: SECRET,
        "LITDISTILL_OUTPUTS": str(cwd / "outputs"),
        "LITDISTILL_CACHE": str(cwd / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO / "src"),
    }
    return subprocess.run(
        ["litdistill", "generate", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def files_holding(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture
def server():
    with FakeChatServer() as s:
        yield s


def base_args(server: FakeChatServer) -> list[str]:
    return [
        f"teacher_api.base_url={server.url}",
        "teacher_api.model=teacher-1",
        f"teacher_api.api_key_env={KEY_ENV}",
        "teacher_api.max_retries=0",
        "input.prompts=[What is aspirin?,Why a rash?]",
        "output_dir=gen",
        "progress=false",
    ]


PASTED = "sk-proj-PASTEDsecret0123456789abcdef"


@pytest.mark.parametrize(
    ("override", "names"),
    [
        (f"+teacher_api.api_key={PASTED}", "teacher_api.api_key is given a value"),
        (f"++teacher_api.api_key='{PASTED}'", "teacher_api.api_key is given a value"),
        (f"teacher_api.api_key_env={PASTED}", "teacher_api.api_key_env must be the NAME of an environment variable"),
        ("teacher_api.api_key_env=PASTED-not-a-name-0123", "teacher_api.api_key_env must be the NAME"),
        (
            f"teacher_api.extra_headers.Authorization='Bearer {PASTED}'",
            "teacher_api.extra_headers.Authorization is given",
        ),
        (f"+teacher_api.extra_headers={{api-key: {PASTED}}}", "looks like an API key"),
        (f"hydra.job.env_set.OPENAI_API_KEY={PASTED}", "hydra.job.env_set.OPENAI_API_KEY is given a value"),
        (f"teacher_api.model={PASTED}", "the value given to teacher_api.model looks like an API key"),
        (PASTED, "an argument looks like an API key"),
    ],
)
def test_a_key_on_the_command_line_is_refused_before_hydra_and_reaches_no_file(override, names, server, tmp_path):
    secret = PASTED if PASTED in override else "PASTED-not-a-name-0123"
    proc = run_generate([*base_args(server), override], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert names in proc.stderr and "nothing was run or written" in proc.stderr
    assert "export OPENAI_API_KEY=<key>" in proc.stderr and "teacher_api.api_key_env" in proc.stderr  # what is valid
    assert secret not in proc.stdout + proc.stderr  # the message names the key, never the value
    assert SECRET not in proc.stdout + proc.stderr
    assert not files_holding(tmp_path, secret) and not files_holding(tmp_path, SECRET)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # Hydra never ran: no .hydra/, no log, no outputs
    assert server.total == 0


def test_a_normal_run_writes_its_config_and_no_secret_anywhere(server, tmp_path):
    """The positive control: the key in the environment variable named by api_key_env, a base_url with
    credentials and a token; the run writes config.yaml (credentials masked) and the key is nowhere."""
    proc = run_generate(base_args(server), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "gen"
    config = (out / "config.yaml").read_text()
    assert f"api_key_env: {KEY_ENV}" in config and f"base_url: {server.url}" in config
    assert "What is aspirin?" in config  # the resolved config, overrides applied
    assert len((out / "dataset.jsonl").read_text().splitlines()) == 2
    assert set(server.auth) == {f"Bearer {SECRET}"}  # the key was used, read from the environment
    assert json.loads((out / "manifest.json").read_text())["api_key_env"] == KEY_ENV
    assert not list(tmp_path.rglob(".hydra"))  # generate sets hydra.output_subdir: null
    assert list((tmp_path / "outputs" / "generate" / "runs").glob("*/cli.log"))  # Hydra's job log is still written
    assert SECRET not in proc.stdout + proc.stderr and not files_holding(tmp_path, SECRET)

    # null is no value: an open local server needs no key variable at all
    proc = run_generate(
        [*base_args(server), "teacher_api.api_key_env=null", "teacher_api.api_key_required=false", "output_dir=open"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert server.auth[-1] is None and len((tmp_path / "open" / "dataset.jsonl").read_text().splitlines()) == 2

    password, token = "pa55-SECRET-word", "QUERYSECRET123"
    host = server.url.split("//", 1)[1]
    proc = run_generate(
        [
            *base_args(server),
            f"teacher_api.base_url='http://alice:{password}@{host}?token={token}'",
            "output_dir=creds",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (tmp_path / "creds" / "config.yaml").read_text()
    assert f"base_url: http://{host}?token=***" in config and "alice" not in config
    for needle in (password, token, SECRET):
        assert needle not in proc.stdout + proc.stderr and not files_holding(tmp_path, needle), needle


def test_sigterm_stops_generate_with_143_and_no_traceback(tmp_path):
    """A scheduler's SIGTERM: the results so far are kept, the exit status is 143 as for training, and the
    console shows one line, not a traceback."""
    import signal
    import time

    with FakeChatServer(delay=0.2) as slow:
        env = {**os.environ, KEY_ENV: SECRET, "HF_HUB_OFFLINE": "1"}
        prompts = ",".join(f"question {i}" for i in range(40))
        args = [*base_args(slow), f"input.prompts=[{prompts}]", "teacher_api.max_concurrency=2"]
        proc = subprocess.Popen(
            ["litdistill", "generate", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        results = tmp_path / "gen" / "results.jsonl"
        deadline = time.monotonic() + 120
        while (not results.exists() or results.read_bytes().count(b"\n") < 3) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr and "litdistill generate: stopped by SIGTERM" in stderr
    assert json.loads((tmp_path / "gen" / "manifest.json").read_text())["status"] == "interrupted"


def test_a_prompt_that_fails_in_every_run_is_requested_in_three_runs_only(server, tmp_path):
    """retry_failed retries failures, but a prompt the endpoint refuses every time stops costing requests:
    after retry_failed_max=3 failed runs it is skipped, and the log says so."""
    args = [*base_args(server), "input.prompts=[fine,'refused [503x99]']"]
    for _ in range(4):
        proc = run_generate(args, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert server.exact("refused [503x99]") == 3 and server.exact("fine") == 1
    assert "1 prompt(s) failed in 3 runs each and are not requested again (retry_failed_max=3" in proc.stdout
