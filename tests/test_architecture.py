"""The architecture holds: layers point one way (import-linter's contract), no function-local import hides
a cycle, the package root stays small, and train() stays the list of stages (docs/architecture.md)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "litdistill"
# Where a function-local import of litdistill is allowed, and why: the command line and the generation
# package import torch-heavy modules only when a command needs them (`litdistill new`, `generate` with
# an HTTP teacher never import torch).
LAZY_IMPORTS_ALLOWED = {
    "cli/__init__.py",
    "generation/__init__.py",
    "pipeline/generate.py",
    "generation/local.py",
}


def test_layer_contract_is_kept():
    """import-linter reads the contract from pyproject.toml; a feature importing the pipeline, or core
    importing a feature, breaks it."""
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def _layers() -> list[set[str]]:
    """The contract's layers from pyproject.toml ("a : b" are siblings that may import each other)."""
    import tomllib

    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [{name.strip() for name in layer.split(":")} for layer in contract["layers"]]


def test_the_contract_would_catch_an_upward_import():
    """The contract is not vacuous: the real graph passes, the same graph plus one core -> pipeline import fails."""
    import grimp

    graph = grimp.build_graph("litdistill")
    layers = [grimp.Layer(*sorted(names), independent=False) for names in _layers()]
    assert not graph.find_illegal_dependencies_for_layers(layers=layers)
    graph.add_import(importer="litdistill.core.io", imported="litdistill.pipeline.train")
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    assert {(d.importer, d.imported) for d in illegal} == {("litdistill.core", "litdistill.pipeline")}


def _local_litdistill_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                module = (node.module or "") if isinstance(node, ast.ImportFrom) else None
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if (module or "").startswith("litdistill") or any(n.startswith("litdistill") for n in names):
                    lines.append(node.lineno)
    return lines


def test_no_function_local_import_outside_the_lazy_entry_points():
    found = {str(p.relative_to(PACKAGE)): _local_litdistill_imports(p) for p in PACKAGE.rglob("*.py")}
    hidden = {path: lines for path, lines in found.items() if lines and path not in LAZY_IMPORTS_ALLOWED}
    assert not hidden, f"function-local litdistill imports (move them to the top, or cut the cycle): {hidden}"


def test_the_package_root_holds_a_handful_of_entries():
    entries = sorted(
        p.name
        for p in PACKAGE.iterdir()
        if p.name not in {"__pycache__", "conf", "template"} and not p.name.startswith(".")
    )
    assert len(entries) <= 13, entries


def test_train_is_a_short_list_of_stages():
    """train() wires stages; the work lives in pipeline/<stage>.py. 60 lines is the ceiling."""
    tree = ast.parse((PACKAGE / "pipeline" / "train.py").read_text(encoding="utf-8"))
    train = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    assert train.end_lineno - train.lineno + 1 <= 60
    called = {n.func.id for n in ast.walk(train) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    for stage in (
        "check_config",
        "load_data",
        "load_teacher",
        "finetune_teacher",
        "run_cache",
        "build_student",
        "fit",
        "fit_baseline",
        "evaluate_models",
        "export",
        "write_outputs",
    ):
        assert stage in called, stage


def test_only_the_entry_layer_reads_the_config():
    """Stages take objects: in pipeline/, only the commands' entries (train.py with builders.py, and
    generate.py) name ``cfg``; no feature or core module takes a config at all."""
    readers = [
        p.name
        for p in (PACKAGE / "pipeline").glob("*.py")
        if p.name not in {"train.py", "builders.py", "generate.py"} and "cfg" in p.read_text(encoding="utf-8")
    ]
    assert not readers, readers
    features = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.parts[-2] not in {"pipeline", "cli", "config"} and re.search(r"\bDictConfig\b", p.read_text("utf-8"))
    ]
    assert not features, f"feature or core modules that take a DictConfig: {features}"
