"""``litdistill new``: a distillation project of your own, from litdistill's cookiecutter template.

The template is ``cookiecutter.json`` plus ``{{cookiecutter.project_slug}}/`` (and ``hooks/``) at the
root of a checkout, so ``cookiecutter <checkout or git URL>`` works too; the wheel ships the same
files as ``litdistill/template/``. The project it writes depends on litdistill (it is not a copy): it
holds its own Hydra configs (an experiment with its teacher, student and data, composed on top of
litdistill's), a data module for your loading code, tests and a README with its two commands::

    # asks: name, package, teacher, student, task, data, logger, license
    litdistill new
    litdistill new --no-input project_name="ADE distill" task_type=classification -o ~/src
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TEMPLATE_FILE = "cookiecutter.json"


def template_dir() -> Path:
    """The directory holding ``cookiecutter.json``: ``litdistill/template`` in a wheel, the checkout root in
    development."""
    packaged = Path(__file__).parents[1] / "template"
    if (packaged / TEMPLATE_FILE).is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / TEMPLATE_FILE).is_file():
        return checkout
    raise FileNotFoundError(f"litdistill's project template ({TEMPLATE_FILE}) is in neither {packaged} nor {checkout}")


def template_variables() -> dict[str, Any]:
    """The template's questions and their defaults (choices as lists), from ``cookiecutter.json``."""
    data = json.loads((template_dir() / TEMPLATE_FILE).read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def parse_context(pairs: list[str]) -> dict[str, str]:
    """``key=value`` answers; a key the template does not ask about is refused with the valid keys."""
    known = template_variables()
    context = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"litdistill new: expected key=value, got {pair!r}")
        if key not in known:
            raise SystemExit(f"litdistill new: unknown template variable {key!r}; valid: {', '.join(known)}")
        choices = known[key]
        if isinstance(choices, list) and value not in choices:
            raise SystemExit(f"litdistill new: {key}={value!r} is not one of {choices}")
        context[key] = value
    return context


def bake(
    output_dir: str | Path = ".",
    extra_context: dict[str, Any] | None = None,
    no_input: bool = True,
    overwrite_if_exists: bool = False,
) -> Path:
    """Render the template into ``output_dir``; returns the new project's directory."""
    from cookiecutter.main import cookiecutter

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return Path(
        cookiecutter(
            str(template_dir()),
            no_input=no_input,
            extra_context=extra_context or {},
            output_dir=str(output_dir),
            overwrite_if_exists=overwrite_if_exists,
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="litdistill new",
        description="Create a distillation project (its own configs, data module, tests) that depends on litdistill.",
        epilog="variables: " + ", ".join(template_variables()),
    )
    parser.add_argument(
        "context", nargs="*", metavar="key=value", help="answers, e.g. project_name='ADE distill' task_type=causal_lm"
    )
    parser.add_argument("--no-input", action="store_true", help="do not prompt: defaults plus the key=value answers")
    parser.add_argument("-o", "--output-dir", default=".", help="where the project folder is created (default: .)")
    parser.add_argument("-f", "--overwrite-if-exists", action="store_true", help="render into an existing folder")
    args = parser.parse_args(argv)
    try:
        from cookiecutter.exceptions import CookiecutterException
    except ImportError:
        raise SystemExit("litdistill new needs cookiecutter: pip install 'litdistill[scaffold]'") from None
    try:
        project = bake(
            args.output_dir,
            parse_context(args.context),
            no_input=args.no_input,
            overwrite_if_exists=args.overwrite_if_exists,
        )
    except CookiecutterException as e:
        raise SystemExit(f"litdistill new: {e}") from None
    steps = [
        (f"cd {project}", ""),
        ("pip install -e '.[dev]'", "# litdistill itself must be installed"),
        (project.name, "# distil with the project's default experiment"),
        (f"{project.name} debug=smoke", "# tiny models, a few steps"),
        ("python -m pytest -q", ""),
    ]
    width = max(len(cmd) for cmd, _ in steps) + 2
    print(f"Created {project}\n\nNext:\n" + "\n".join(f"  {cmd:<{width}}{note}".rstrip() for cmd, note in steps))
