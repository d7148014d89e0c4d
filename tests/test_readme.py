"""README.md's commands, taken from the README itself and run in a subprocess as written.

Every line of the README's ``bash`` blocks is one of:
- run as written here (fast, offline): the help, the config print, the sweep validator, ``litdistill new``;
- run as written elsewhere: the two install commands (CI runs the test one; ``scripts/install.sh`` is
  tested by it), the default ``litdistill`` run (``test_cli.py::test_default_run_...``);
- composed as written (``--cfg job --resolve`` appended, each job of a ``-m`` sweep alone): the runs that
  need a hub model, a GPU, the ADE corpus, the user's files or more than a minute. Hydra then checks every
  group, option and key, and resolves every interpolation, so a renamed key or option fails here;
- a template with placeholders (``<dir>``, ``...``), or another tool's command (``wandb``, ``cookiecutter``).
A README line that fits none of these fails the test: a new command must be sorted into one.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RUN_HERE = {
    "litdistill --help",
    "litdistill --cfg job",
    "python -m litdistill.cli.sweeping conf/sweep/*.yaml",
    'litdistill new --no-input project_name="ADE distill" task_type=causal_lm logger=wandb -o ~/src',
}
RUN_ELSEWHERE = {
    "scripts/install.sh && litdistill": "tests/test_cli.py::test_default_run_transfers_from_a_competent_teacher "
    "runs `litdistill`; CI runs scripts/install.sh",
    "scripts/install.sh --dev && python3 -m pytest -q": "CI (.ci/run) runs it",
    "litdistill experiment=tiny_causal": "tests/test_sft_and_causal.py::test_tiny_causal_recipe_end_to_end runs it "
    "(with accumulation on)",
    "litdistill rank outputs wandb rank.by=latency_ms rank.max_latency_ms=20 -o board": "tests/test_leaderboard.py "
    "ranks a real multirun by latency with a latency limit; tests/test_sweeps_wandb.py a W&B run folder",
}
OTHER_TOOLS = ("wandb ", "cookiecutter ")
PLACEHOLDERS = ("<", "...")


def readme_commands() -> list[str]:
    """Every command in the README's bash blocks, as written: continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(re.split(r"\s#", line, maxsplit=1)[0].split())  # a comment starts at " #"
            if command:
                commands.append(command)
    return list(dict.fromkeys(commands))  # each once


INTERACTIVE = {"litdistill new"}  # asks its questions on a terminal; `new --no-input` runs here


def composed_only(command: str) -> bool:
    return (
        command not in RUN_HERE | INTERACTIVE
        and command not in RUN_ELSEWHERE
        and not command.startswith(OTHER_TOOLS)
        and not any(p in command for p in PLACEHOLDERS)
    )


def litdistill_args(command: str) -> list[str]:
    """The arguments after ``litdistill``; a leading ``VAR=value`` environment prefix is dropped."""
    words = shlex.split(command)
    return words[words.index("litdistill") + 1 :]


def sweep_jobs(words: list[str]) -> list[list[str]]:
    """``-m key=a,b`` -> one override list per job (Hydra's --cfg prints one job's config)."""
    if "-m" not in words:
        return [words]
    words = [w for w in words if w != "-m"]
    choices = [w.split("=", 1)[1].split(",") if "=" in w and "," in w and "[" not in w else [None] for w in words]
    return [
        [w if c is None else f"{w.split('=', 1)[0]}={c}" for w, c in zip(words, combo)]
        for combo in itertools.product(*choices)
    ]


def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(tmp_path),  # ~/src of `litdistill new -o ~/src`
        "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"),
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
    }


def test_every_readme_command_is_run_composed_or_named_as_not_runnable_here():
    commands = readme_commands()
    assert set(commands) >= RUN_HERE, RUN_HERE - set(commands)  # the README still shows what runs here
    assert set(RUN_ELSEWHERE) <= set(commands)
    composed = [c for c in commands if composed_only(c)]
    assert all("litdistill" in shlex.split(c) for c in composed), composed
    # `new` and `rank` are not Hydra commands: one of them here must be sorted into a list above
    assert not [c for c in composed if litdistill_args(c)[:1] in (["new"], ["rank"])]
    assert len(composed) >= 20


@pytest.mark.parametrize("command", [c for c in readme_commands() if composed_only(c)])
def test_readme_command_composes_as_written(command, tmp_path):
    for job in sweep_jobs(litdistill_args(command)):
        proc = subprocess.run(
            [sys.executable, "-m", "litdistill", *job, "--cfg", "job", "--resolve"],
            cwd=tmp_path,
            env=env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
        assert "defaults" not in proc.stdout and len(proc.stdout.splitlines()) > 10  # the composed job config


@pytest.mark.parametrize("command", sorted(RUN_HERE))
def test_readme_command_runs_as_written(command, tmp_path):
    proc = subprocess.run(
        command, shell=True, cwd=REPO if "conf/" in command else tmp_path, env=env(tmp_path),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    if command.startswith("litdistill experiment="):
        assert next((tmp_path / "outputs").glob("*/runs/*/report.md")).is_file()
    if " new " in command:
        assert (tmp_path / "src" / "ade-distill" / "src" / "ade_distill" / "data.py").is_file()
