"""The cookiecutter project template and ``litdistill new``.

Every answer set renders completely (no ``{{cookiecutter.`` left, valid TOML/YAML/Python); two of the
generated projects are installed into a fresh venv (``--system-site-packages``, ``--no-deps``, so no
CUDA torch is pulled) where their own tests pass, which run their default experiment on tiny models.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "{{cookiecutter.project_slug}}"

ANSWERS = {
    "classification": {"project_name": "ADE Distill", "task_type": "classification", "logger": "csv"},
    "causal_lm": {"project_name": "Tiny LM", "task_type": "causal_lm", "logger": "wandb", "license": "MIT"},
    "odd_names": {
        "project_name": "Déjà Vu: ADE v2!",
        "teacher_model": "/models/my teacher",
        "student_model": "prajjwal1/bert-tiny",
        "dataset": "data/reviews.csv",
        "logger": "many",
        "license": "Proprietary",
        "author": 'Ann "Q" O\'Neil',
    },
    "tensorboard_bsd": {
        "project_name": "review_sentiment",
        "package_name": "sentiment",
        "logger": "tensorboard",
        "license": "BSD-3-Clause",
        "dataset": "imdb",
    },
}
INSTALLED = ("classification", "causal_lm")


def bake(output_dir: Path, context: dict[str, str]) -> Path:
    from cookiecutter.main import cookiecutter

    return Path(cookiecutter(str(REPO), no_input=True, extra_context=context, output_dir=str(output_dir)))


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("baked")
    return {name: bake(out / name, context) for name, context in ANSWERS.items()}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        WANDB_MODE="offline",
        **extra,
    )
    return env


def _venv(path: Path) -> Path:
    """A fresh venv that sees this interpreter's packages (torch & co, pip, the editable litdistill).

    ``--system-site-packages`` alone is not enough: inside a venv, ``sys.executable`` is the venv's, and a
    venv made from it sees the *base* interpreter's site-packages, not this venv's. A ``.pth`` line that
    calls ``site.addsitedir`` on every one of this interpreter's site directories (their own ``.pth``
    files included, so an editable install resolves) works in and out of a venv."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs if Path(d).is_dir())
    (Path(target) / "_litdistill_tests_parent_env.pth").write_text(line + "\n", encoding="utf-8")
    return python


def _pip_install(python: Path, *args: str) -> None:
    # no build isolation where hatchling and editables are installed (fast, offline); else pip fetches them
    flags = ["--no-build-isolation"] if all(importlib.util.find_spec(m) for m in ("hatchling", "editables")) else []
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", *flags, *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---- rendering -----------------------------------------------------------------------------------
def test_template_layout_is_what_cookiecutter_expects():
    roots = [p.name for p in REPO.iterdir() if "cookiecutter" in p.name and "{{" in p.name and "}}" in p.name]
    assert roots == ["{{cookiecutter.project_slug}}"]
    assert sorted(p.name for p in (REPO / "hooks").iterdir() if p.suffix == ".py") == ["pre_gen_project.py"]


def test_every_template_variable_is_declared():
    declared = set(yaml.safe_load((REPO / "cookiecutter.json").read_text()))
    used = set()
    for path in [*TEMPLATE.rglob("*"), *(REPO / "hooks").rglob("*.py")]:
        used |= set(re.findall(r"cookiecutter\.(\w+)", str(path.relative_to(REPO))))
        if path.is_file():
            used |= set(re.findall(r"cookiecutter\.(\w+)", path.read_text(encoding="utf-8")))
    assert used <= declared, used - declared
    assert {
        "project_name",
        "package_name",
        "teacher_model",
        "student_model",
        "task_type",
        "dataset",
        "logger",
        "license",
    } <= declared


@pytest.mark.parametrize("name", list(ANSWERS))
def test_every_answer_set_renders_completely(name, baked):
    project = baked[name]
    files = [p for p in project.rglob("*") if p.is_file()]
    assert {".gitignore", "README.md", "pyproject.toml", "LICENSE"} <= {p.name for p in files}
    for path in files:
        text = path.read_text(encoding="utf-8")
        rel = str(path.relative_to(project))
        assert "cookiecutter" not in rel and "{{" not in rel, rel
        assert "{{" not in text and "{%" not in text and "cookiecutter." not in text, rel
        if path.suffix == ".py":
            compile(text, rel, "exec")
        elif path.suffix == ".yaml":
            assert yaml.safe_load(text), rel
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    package = ANSWERS[name].get("package_name") or meta["project"]["name"].replace("-", "_")
    assert meta["project"]["scripts"][project.name] == f"{package}.cli:main"
    assert meta["project"]["dependencies"][0].startswith("litdistill")  # depends on litdistill, not a copy
    assert (project / "src" / package / "data.py").is_file()
    assert (project / "conf" / "experiment" / f"{package}.yaml").is_file()
    assert (project / "tests" / f"test_{package}.py").is_file()


def test_answers_reach_the_files(baked):
    odd = baked["odd_names"]
    assert odd.name == "deja-vu-ade-v2"
    assert (
        yaml.safe_load((odd / "conf/teacher/deja_vu_ade_v2.yaml").read_text())["name_or_path"] == "/models/my teacher"
    )
    student = yaml.safe_load((odd / "conf/student/deja_vu_ade_v2.yaml").read_text())
    assert (
        student["name_or_path"] == "prajjwal1/bert-tiny"
        and student["_target_"] == "litdistill.models.loading.load_pretrained"
    )
    assert (
        yaml.safe_load((odd / "conf/data/deja_vu_ade_v2.yaml").read_text())["data_files"]["source"]
        == "data/reviews.csv"
    )
    assert "All rights reserved" in (odd / "LICENSE").read_text()
    assert tomllib.loads((odd / "pyproject.toml").read_text())["project"]["authors"][0]["name"] == 'Ann "Q" O\'Neil'
    lm = baked["causal_lm"]
    experiment = yaml.safe_load((lm / "conf/experiment/tiny_lm.yaml").read_text())
    assert experiment["task"] == "causal_lm" and experiment["report"]["metric"] == "token_acc"
    assert "override /logger: wandb" in (lm / "conf/experiment/tiny_lm.yaml").read_text()
    assert "MIT License" in (lm / "LICENSE").read_text()
    assert "litdistill[wandb]" in (lm / "pyproject.toml").read_text()
    teacher = yaml.safe_load((baked["classification"] / "conf/teacher/ade_distill.yaml").read_text())
    assert teacher["name_or_path"] == "${litdistill.minilm:}"  # the default teacher is installed: offline
    readme = (baked["classification"] / "README.md").read_text()
    assert "all-MiniLM-L6-v2" in readme and "offline" in readme
    assert "pip install -e . && ade-distill" in readme and "python -m pytest -q" in readme
    assert (baked["tensorboard_bsd"] / "src" / "sentiment").is_dir()


def test_bad_package_name_is_refused_before_anything_is_written(tmp_path):
    from cookiecutter.exceptions import FailedHookException

    with pytest.raises(FailedHookException):
        bake(tmp_path, {"project_name": "x", "package_name": "1-bad"})
    assert not any(tmp_path.iterdir())


def test_packaged_minilm_teacher_is_refused_for_a_causal_lm_project(tmp_path):
    from cookiecutter.exceptions import FailedHookException

    with pytest.raises(FailedHookException):
        bake(tmp_path, {"project_name": "x", "task_type": "causal_lm", "teacher_model": "packaged-minilm"})
    assert not any(tmp_path.iterdir())


def test_litdistill_new_command(tmp_path):
    proc = subprocess.run(
        ["litdistill", "new", "--no-input", "project_name=CLI Project", "task_type=causal_lm", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "cli-project" / "src" / "cli_project" / "data.py").is_file()
    assert "cli-project" in proc.stdout


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("colour=red", "unknown template variable 'colour'; valid: project_name"),
        ("task_type=seq2seq", "task_type='seq2seq' is not one of ['classification', 'causal_lm']"),
        ("project_name", "expected key=value"),
    ],
)
def test_litdistill_new_refuses_bad_answers(arg, message, tmp_path):
    from litdistill.cli import main

    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["new", "--no-input", arg, "-o", str(tmp_path)])
    assert not any(tmp_path.iterdir())


# ---- installed projects ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def venv_with_projects(baked, tmp_path_factory) -> Path:
    python = _venv(tmp_path_factory.mktemp("venv") / "env")
    _pip_install(python, "-e", str(REPO), *[arg for name in INSTALLED for arg in ("-e", str(baked[name]))])
    return python


@pytest.mark.slow
@pytest.mark.parametrize("name", INSTALLED)
def test_generated_project_installs_and_passes_its_tests(name, baked, venv_with_projects, tmp_path):
    """Its tests include running its default experiment (tiny models, debug=smoke) through its own command."""
    project = baked[name]
    proc = subprocess.run(
        [
            str(venv_with_projects),
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "t"),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "6 passed" in proc.stdout
    if name != "classification":
        return
    # The README's first command, offline (HF_HUB_OFFLINE=1): the installed console script runs the default
    # experiment with its real default teacher, the packaged MiniLM, fine-tuned first; shortened here.
    script = venv_with_projects.parent / project.name
    short = ["teacher_finetune.max_steps=3", "trainer.max_steps=3", "data.data_files.max_examples=200"]
    proc = subprocess.run(
        [str(script), *short, "report.speed=false", "report.plots=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(LITDISTILL_OUTPUTS=str(tmp_path / "outputs"), LITDISTILL_CACHE=str(tmp_path / "cache")),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [report] = (tmp_path / "outputs").glob("*/runs/*/report.json")
    teacher = json.loads(report.read_text())["models"]["teacher"]
    assert teacher["params_m"] == pytest.approx(22.7, abs=0.1)  # all-MiniLM-L6-v2 with a 2-label head


@pytest.mark.slow
def test_wheel_ships_the_template_and_new_works_from_it(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        env=_env(),
    )
    wheel = next(tmp_path.glob("litdistill-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "litdistill/template/cookiecutter.json" in names and "litdistill/template/hooks/pre_gen_project.py" in names
    assert "litdistill/template/{{cookiecutter.project_slug}}/src/{{cookiecutter.package_name}}/data.py" in names
    python = _venv(tmp_path / "env")
    _pip_install(python, str(wheel))
    code = (
        "import sys; from litdistill.cli.scaffold import template_dir; print(template_dir()); "
        "from litdistill.cli import main; main(['new', '--no-input', 'project_name=From Wheel', '-o', sys.argv[1]])"
    )
    proc = subprocess.run(
        [str(python), "-c", code, str(tmp_path / "made")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(tmp_path / "env") in proc.stdout.splitlines()[0]  # the packaged template, not the checkout
    assert (tmp_path / "made" / "from-wheel" / "conf" / "experiment" / "from_wheel.yaml").is_file()
