"""Refuse API keys on the command line, before Hydra saves the overrides with the run."""

from __future__ import annotations

import re
import sys

# A secret on the command line would reach disk before any check in the run could refuse it: Hydra saves
# the overrides and the composed config with the run (.hydra/overrides.yaml, config.yaml) and echoes the
# overrides in its error message. So keys are refused here, before Hydra runs; messages never show values.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# keys whose value is a credential (the last component of the override key, case-insensitive)
_SECRET_KEY = re.compile(r"^(.*[_-])?(api[_-]?key|authorization|proxy[_-]authorization)$", re.IGNORECASE)
# values that look like a credential whatever key they are given to (OpenAI/Anthropic sk-..., Hugging Face
# hf_..., an Authorization header), and dict overrides that carry one: {api_key: ...}, {Authorization: ...}
_SECRET_VALUE = re.compile(
    r"\bsk-[A-Za-z0-9_-]{16,}|\bhf_[A-Za-z0-9]{20,}|\b(Bearer|Basic)\s+\S{8,}"
    r"|(api[_-]?key|authorization)['\"]?\s*:\s*['\"]?[^\s,}'\"]",
    re.IGNORECASE,
)
_KEY_HELP = (
    "API keys are read from the environment variable NAMED by teacher_api.api_key_env, never from "
    "the command line or a config (both are saved with the run): export the key, e.g. "
    "`export OPENAI_API_KEY=<key>`, and pass teacher_api.api_key_env=OPENAI_API_KEY (the default) or "
    "the name of the variable you exported."
)


def refuse_secrets(argv: list[str]) -> None:
    """Exit (status 2, nothing run or written) if an override sets an API key's value or puts something other
    than an environment variable's name in ``*api_key_env``. The error names the key, never the value."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        key, value = arg.split("=", 1) if "=" in arg else ("", arg)
        key = key.lstrip("+~")
        name = key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
        value = value.strip()
        unquoted = value.strip("'\"")
        problem = None
        if not key or _SECRET_VALUE.search(key):  # a bare argument, or a key pasted where an override's name goes
            if _SECRET_VALUE.search(arg):
                problem = "an argument looks like an API key or token (not shown)."
        elif name.lower().endswith("api_key_env"):
            names = [v.strip().strip("'\"") for v in unquoted.split(",")]  # a,b: a multirun sweep over names
            if unquoted not in ("", "null") and not all(_ENV_NAME.match(v) for v in names):
                problem = (
                    f"{key} must be the NAME of an environment variable (letters, digits and underscores, "
                    "not starting with a digit, e.g. OPENAI_API_KEY); the value given is not a name and "
                    "may be the key itself, so it is not shown."
                )
        elif _SECRET_KEY.match(name) and unquoted not in ("", "null"):
            problem = f"{key} is given a value on the command line (not shown)."
        elif _SECRET_VALUE.search(value):
            problem = f"the value given to {key} looks like an API key or token (not shown)."
        if problem:
            print(f"litdistill: refused, nothing was run or written: {problem} {_KEY_HELP}", file=sys.stderr)
            sys.exit(2)
