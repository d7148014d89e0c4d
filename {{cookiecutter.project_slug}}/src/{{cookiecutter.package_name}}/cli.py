"""``{{ cookiecutter.project_slug }}``: litdistill with this project's configs on its search path.

    {{ cookiecutter.project_slug }}                            # the default experiment, conf/experiment/{{ cookiecutter.package_name }}.yaml
    {{ cookiecutter.project_slug }} debug=smoke                # tiny models, a few steps: checks the wiring in seconds
    {{ cookiecutter.project_slug }} loss.kd.temperature=4      # any key of the composed config
    {{ cookiecutter.project_slug }} -m loss.kd.temperature=1,2,4   # a Hydra multirun
    {{ cookiecutter.project_slug }} --cfg job                  # print the composed config

It runs litdistill's own command line with ``hydra.searchpath`` pointing at this project's ``conf/``
(a ``file://`` path resolved at run time, in a checkout and in an installed wheel alike) and, unless
you pick another one, ``experiment={{ cookiecutter.package_name }}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from litdistill.cli import COMMANDS
from litdistill.cli import main as litdistill_main

DEFAULT_EXPERIMENT = "{{ cookiecutter.package_name }}"


def conf_dir() -> Path:
    """``conf/`` inside the installed wheel, or the project's top-level ``conf/`` in a checkout."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


def project_overrides(argv: list[str]) -> list[str]:
    """litdistill arguments for ``argv``: this project's search path and default experiment added."""
    argv = list(argv)
    command = [argv.pop(0)] if argv and argv[0] in COMMANDS else []
    entry = f"'file://{conf_dir().as_posix()}'"
    extra = []
    if command in ([], ["train"]) and not any(arg.lstrip("+~").split("=")[0] == "experiment" for arg in argv):
        extra.append(f"experiment={DEFAULT_EXPERIMENT}")
    user = [arg for arg in argv if arg.startswith("hydra.searchpath=")]
    if user:  # keep the user's entries, add ours
        argv = [arg for arg in argv if not arg.startswith("hydra.searchpath=")]
        inner = user[-1].split("=", 1)[1].strip().removeprefix("[").removesuffix("]").strip()
        extra.append(f"hydra.searchpath=[{inner + ',' if inner else ''}{entry}]")
    else:
        extra.append(f"hydra.searchpath=[{entry}]")
    return command + argv + extra


def main(argv: list[str] | None = None) -> None:
    litdistill_main(project_overrides(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
