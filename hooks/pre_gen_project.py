"""Cookiecutter pre-generation hook of litdistill's project template: refuse answers that would
produce a broken project, before anything is written."""

import keyword
import re
import sys

answers = {
    "project_slug": {{ cookiecutter.project_slug | tojson }},
    "package_name": {{ cookiecutter.package_name | tojson }},
    "teacher_model": {{ cookiecutter.teacher_model | tojson }},
    "student_model": {{ cookiecutter.student_model | tojson }},
    "dataset": {{ cookiecutter.dataset | tojson }},
    "task_type": {{ cookiecutter.task_type | tojson }},
}
problems = []
package = answers["package_name"]
if not package.isidentifier() or keyword.iskeyword(package) or not package.isascii():
    problems.append(f"package_name {package!r} is not a valid Python package name (letters, digits, _; not starting with a digit)")
if package in ("litdistill", "test", "tests", "conf"):
    problems.append(f"package_name {package!r} would shadow another package; pick another name")
if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", answers["project_slug"]):
    problems.append(f"project_slug {answers['project_slug']!r} must be letters, digits, '.', '_' or '-' (it names the folder and the command)")
for key in ("teacher_model", "student_model", "dataset"):
    if not answers[key].strip() or any(c in answers[key] for c in "\"'\n{}"):
        problems.append(f"{key} {answers[key]!r} must be a non-empty name or path without quotes or braces")
if answers["teacher_model"] == "packaged-minilm" and answers["task_type"] != "classification":
    problems.append(
        "teacher_model 'packaged-minilm' is an encoder for task_type=classification; for "
        f"task_type={answers['task_type']!r} name a causal language model (for example Qwen/Qwen2.5-0.5B)"
    )
if problems:
    print("litdistill template: " + "\n  ".join(["cannot create the project:"] + problems), file=sys.stderr)
    sys.exit(1)
