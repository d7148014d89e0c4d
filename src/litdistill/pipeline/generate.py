"""``litdistill generate``: a teacher answers, explains or labels prompts; the result is a dataset.

:func:`generate` takes the composed ``generate`` config (``conf/generate.yaml``) and writes, under
``output_dir``:

* ``results.jsonl`` - the resumable store: exactly one record per prompt (``status`` ok or failed);
* ``dataset.jsonl`` - a row per input id whose prompt succeeded, in input order, the file training
  reads (``data=sft_files data.data_files.train=.../dataset.jsonl`` for sequence-level KD); an input
  whose rendered prompt repeats an earlier one's is requested once and gets a copy of that result;
* ``manifest.json`` - model, base_url, template, settings, counts, usage and estimated cost of the
  dataset, the spend of every run into the directory, input key;
* ``config.yaml`` - the resolved config (the API key's variable *name* only, never its value).

Everything that can be checked is checked before the first request (API key variable, template,
input file and field, settings), with an error naming the bad value and what would be valid.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import signal
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from litdistill.config import schema as _schema  # noqa: F401  (registers generate.yaml's typed nodes)
from litdistill.core.conf import to_plain
from litdistill.core.io import atomic_write_text, canonical_json, sha256_text
from litdistill.generation.client import (
    ChatClient,
    ChatResult,
    ConfigError,
    Usage,
    redact_url,
)
from litdistill.generation.store import (
    DATASET,
    MANIFEST,
    RESULTS,
    ResultStore,
    dataset_rows,
    record_key,
)
from litdistill.generation.templates import (
    ParseError,
    PromptTemplate,
    TemplateError,
    available_templates,
)

log = logging.getLogger("litdistill.generation")

TEACHER_TYPES = ("openai", "local_hf")
INPUT_FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".txt")
# extra_headers that carry a credential: refused (the config is saved; the key comes from api_key_env)
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "api-key", "x-api-key")
# chat-completions parameters taken from the `generation` config node when set
API_PARAMS = ("temperature", "max_tokens", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


@dataclass
class Job:
    id: str
    key: str
    text: str
    messages: list[dict[str, str]]
    record: dict[str, Any] = field(repr=False, default_factory=dict)
    copy_of: str | None = None  # the id of an earlier input with the same rendered prompt (not requested)


@dataclass
class Plan:
    """Everything :func:`generate` needs, validated; no request made yet."""

    output_dir: Path
    template: PromptTemplate
    teacher: Any  # ChatClient | LocalHFTeacher
    teacher_type: str
    model: str
    base_url: str | None
    params: dict[str, Any]
    settings: dict[str, Any]
    jobs: list[Job]  # one per distinct prompt: what is requested
    inputs: list[Job]  # one per input id, in input order (copies of an earlier prompt included)
    input_key: str
    input_source: str
    prices: dict[str, Any]
    api_key_env: str | None
    retry_failed: bool = True
    retry_failed_max: int = 3  # runs a prompt may fail in before a rerun stops requesting it
    progress: bool = True
    config_yaml: str = ""
    secrets: list[str] = field(repr=False, default_factory=list)  # scrubbed from every file written


# -- inputs ------------------------------------------------------------------------------------------
def _read_records(path: Path, field_name: str) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise ConfigError(
            f"input.path={str(path)!r} has format {suffix or '(none)'!r}; valid formats: {list(INPUT_FORMATS)}"
        )
    if suffix == ".txt":
        return [
            {field_name: line.rstrip("\r")} for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
        ]
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ConfigError(f"input.path={str(path)!r} is not valid JSON: {err}") from None
        if isinstance(data, dict):  # {"data": [...]} style
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else None
        if not isinstance(data, list):
            raise ConfigError(f"input.path={str(path)!r}: a .json input must be a list of records (or strings)")
        return data
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            raise ConfigError(f"input.path={str(path)!r} line {n} is not valid JSON: {err}") from None
    return records


def load_inputs(input_cfg: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Input records (dicts with an ``id``, the prompt field and whatever else they carry) and a
    description of their source. Ids come from ``input.id_field`` or, failing that, a content hash."""
    path, prompts = input_cfg.get("path"), input_cfg.get("prompts")
    field_name = input_cfg.get("field") or "prompt"
    id_field = input_cfg.get("id_field") or "id"
    if (path in (None, "")) == (prompts is None):
        raise ConfigError(
            "set exactly one of input.path (a .jsonl/.json/.csv/.tsv/.txt file of prompts) or "
            "input.prompts (a list of prompts in the config)"
            + (" - both are set" if prompts is not None else " - neither is set")
        )
    if prompts is not None:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise ConfigError(f"input.prompts must be a list of strings or records, got {type(prompts).__name__}")
        raw, source = list(prompts), "config:input.prompts"
    else:  # one file, or a list of files read in order (e.g. the train and test splits of a corpus)
        files = [Path(str(f)).expanduser() for f in (path if isinstance(path, (list, tuple, ListConfig)) else [path])]
        for p in files:
            if not p.is_file():
                raise ConfigError(f"input.path={str(p)!r} does not exist (relative paths are from {Path.cwd()})")
        raw = [rec for p in files for rec in _read_records(p, field_name)]
        source = ", ".join(str(p.resolve()) for p in files)
    if not raw:
        raise ConfigError(f"no prompts in {source}")
    records: list[dict[str, Any]] = []
    for i, rec in enumerate(raw):
        if isinstance(rec, str):
            rec = {field_name: rec}
        if not isinstance(rec, Mapping):
            raise ConfigError(f"input record {i} of {source} is a {type(rec).__name__}; expected an object or a string")
        rec = dict(rec)
        if field_name not in rec:
            raise ConfigError(
                f"input.field={field_name!r} is not in record {i} of {source}; available fields: "
                f"{sorted(rec)} (set input.field=<one of them>)"
            )
        value = rec[field_name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"record {i} of {source}: input field {field_name!r} is {value!r}; expected non-empty text"
            )
        rec[field_name] = value
        ident = rec.get(id_field)
        rec["__id__"] = (
            str(ident)
            if ident not in (None, "")
            else "h" + sha256_text(canonical_json({k: v for k, v in rec.items() if k != "__id__"}))[:16]
        )
        records.append(rec)
    limit = input_cfg.get("limit")
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"input.limit={limit!r} must be a positive integer or null")
        records = records[:limit]
    return records, source


# -- teacher -----------------------------------------------------------------------------------------
def build_teacher(api: Mapping[str, Any], template: PromptTemplate) -> tuple[Any, str, str, str | None]:
    """``(teacher, type, model name, base_url)`` from the ``teacher_api`` config node."""
    kind = api.get("type") or "openai"
    if kind not in TEACHER_TYPES:
        raise ConfigError(f"teacher_api.type={kind!r} is unknown; valid types: {list(TEACHER_TYPES)}")
    if api.get("api_key") not in (None, ""):
        raise ConfigError(
            "teacher_api.api_key is set in the config: keys never go in configs (they are saved with "
            "the run). Export the key and set teacher_api.api_key_env to the variable's NAME instead"
        )
    for header in api.get("extra_headers") or {}:
        if str(header).lower() in CREDENTIAL_HEADERS:
            raise ConfigError(
                f"teacher_api.extra_headers.{header} is set in the config: credentials never go in "
                "configs (they are saved with the run). Export the key and set teacher_api.api_key_env "
                "to the variable's NAME; it is sent as the Authorization: Bearer header"
            )
    if kind == "local_hf":
        from litdistill.generation.local import LocalHFTeacher

        name = api.get("name_or_path")
        teacher = LocalHFTeacher(
            name_or_path=name,
            batch_size=api.get("batch_size", 8),
            device=api.get("device", "auto"),
            dtype=api.get("dtype", "float32"),
            quantization=api.get("quantization"),
            max_prompt_length=api.get("max_prompt_length"),
            model_name=api.get("model") or name,
        )
        return teacher, kind, teacher.model_name, None
    client = ChatClient(
        base_url=api.get("base_url"),
        model=api.get("model"),
        api_key_env=api.get("api_key_env"),
        api_key_required=bool(api.get("api_key_required", True)),
        timeout=api.get("timeout", 60),
        max_retries=api.get("max_retries", 6),
        backoff_base=api.get("backoff_base", 1.0),
        backoff_max=api.get("backoff_max", 60.0),
        retry_after_max=api.get("retry_after_max", 120.0),
        max_concurrency=api.get("max_concurrency", 8),
        prices=api.get("prices") or {},
        extra_body=api.get("extra_body") or {},
        extra_headers=api.get("extra_headers") or {},
    )
    return client, kind, client.model, client.base_url


def url_secrets(url: str | None) -> list[str]:
    """The credentials in ``url`` to scrub from every text written: its password and its query values
    (``redact_url`` masks them in the URL itself; a minimum length keeps ``v=1`` from mangling text)."""
    if not isinstance(url, str) or "://" not in url:
        return []
    parts = urllib.parse.urlsplit(url)
    found = [parts.password] if parts.password and len(parts.password) >= 4 else []
    found += [v for _, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if len(v) >= 8]
    return found


def _saved_config(cfg: DictConfig, secrets: list[str]) -> str:
    """The resolved config for ``config.yaml``: without ``hydra``/``paths``, the base_url's credentials and
    query values masked (as in the manifest), and every secret scrubbed."""
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    for key in ("hydra", "paths"):
        container.pop(key, None)
    try:
        plain = OmegaConf.to_container(OmegaConf.create(container), resolve=True)
    except Exception:  # noqa: BLE001  (an interpolation only the Hydra runtime can resolve)
        plain = container
    assert isinstance(plain, dict)
    api = plain.get("teacher_api")
    if isinstance(api, dict) and isinstance(api.get("base_url"), str) and "://" in api["base_url"]:
        parts = urllib.parse.urlsplit(api["base_url"])
        if parts.username or parts.password or parts.query or parts.fragment:
            api["base_url"] = redact_url(api["base_url"])
    text = OmegaConf.to_yaml(OmegaConf.create(plain), resolve=False)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def prepare(cfg: DictConfig) -> Plan:
    """Validate the config, read the inputs and build the teacher; no request is made."""
    if cfg.get("prompt") is None:
        raise TemplateError(
            f"no prompt template: choose one with prompt=<name>; shipped templates: {available_templates()}"
        )
    template = PromptTemplate.from_config(to_plain(cfg.prompt))
    if cfg.get("input") is None:
        raise ConfigError("no input: set input.path=<prompts.jsonl|.csv|.txt> or input.prompts=[...]")
    input_cfg = to_plain(cfg.input)
    records, source = load_inputs(input_cfg)
    field_name = input_cfg.get("field") or "prompt"
    common = set.intersection(*(set(r) - {"__id__"} for r in records))
    template.check_fields(sorted(common), where=f"some records of {source}")
    if not cfg.get("output_dir"):
        raise ConfigError(
            "output_dir is empty; set output_dir=<directory for results.jsonl, dataset.jsonl, manifest.json>"
        )
    api = to_plain(cfg.get("teacher_api")) or {}
    if not api:
        raise ConfigError("no teacher: choose teacher_api=openai | vllm | local_hf")
    gen = to_plain(cfg.get("generation")) or {}
    unknown = sorted(set(gen) - set(API_PARAMS))
    if unknown:
        raise ConfigError(
            f"generation.{unknown[0]} is not a generation setting; valid: {list(API_PARAMS)} "
            "(server-specific parameters go in teacher_api.extra_body)"
        )
    if gen.get("max_tokens") is not None and (not isinstance(gen["max_tokens"], int) or gen["max_tokens"] < 1):
        raise ConfigError(f"generation.max_tokens={gen['max_tokens']!r} must be a positive integer")
    if gen.get("temperature") is not None and not 0 <= float(gen["temperature"]) <= 2:
        raise ConfigError(f"generation.temperature={gen['temperature']!r} must be in [0, 2]")
    teacher, kind, model, base_url = build_teacher(api, template)
    params = {k: gen[k] for k in API_PARAMS if gen.get(k) is not None}
    if kind == "openai":
        params.update(template.request_params())
        settings = {**{k: v for k, v in teacher.extra_body.items() if v is not None}, **params}
        secrets = [*teacher.secrets, *url_secrets(api.get("base_url"))]
    else:
        settings = {**teacher.settings(params), "soft_labels": template.soft_labels}
        # numerics that change what a local model answers (float32, unquantized: the keys of earlier versions)
        if api.get("quantization"):
            settings["quantization"] = str(api["quantization"])
        if str(api.get("dtype") or "float32") != "float32":
            settings["dtype"] = str(api["dtype"])
        secrets = []
    # A result's key: the request (messages, settings, model) and, for labels, how its answer is parsed
    # (the label words and their order), so a changed label set relabels rather than reusing old labels.
    key_settings = settings
    if template.parser != "text":
        described = template.describe()
        key_settings = {**settings, "parse": {k: described[k] for k in ("parser", "labels") if k in described}}
    inputs: list[Job] = []
    by_key: dict[str, Job] = {}
    by_id: dict[str, Job] = {}
    for rec in records:
        text = rec[field_name]
        fields = {k: v for k, v in rec.items() if k != "__id__"}
        messages = template.render(text, fields)
        job = Job(rec["__id__"], record_key(messages, key_settings, model), text, messages, fields)
        if job.id in by_id:
            if by_id[job.id].key == job.key:  # the same record twice: one input
                continue
            raise ConfigError(
                f"input id {job.id!r} ({input_cfg.get('id_field') or 'id'}) names two different prompts "
                f"in {source}; ids must be unique"
            )
        if job.key in by_key:
            job.copy_of = by_key[job.key].id
            log.info(
                "input %s repeats the prompt of input %s: requested once, both get the result", job.id, job.copy_of
            )
        by_key.setdefault(job.key, job)
        by_id[job.id] = job
        inputs.append(job)
    jobs = [j for j in inputs if j.copy_of is None]
    input_key = sha256_text(canonical_json([[j.id, j.record] for j in inputs]))
    return Plan(
        output_dir=Path(str(cfg.output_dir)).expanduser(),
        template=template,
        teacher=teacher,
        teacher_type=kind,
        model=model,
        base_url=redact_url(base_url) if base_url else None,
        params=params,
        settings=settings,
        jobs=jobs,
        inputs=inputs,
        input_key=input_key,
        input_source=source,
        prices=dict(api.get("prices") or {}),
        api_key_env=api.get("api_key_env") if kind == "openai" else None,
        retry_failed=bool(cfg.get("retry_failed", True)),
        retry_failed_max=int(cfg.get("retry_failed_max", 3)),
        progress=bool(cfg.get("progress", True)),
        config_yaml=_saved_config(cfg, secrets),
        secrets=secrets,
    )


# -- running -----------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("litdistill")
    except Exception:  # noqa: BLE001  (a source tree that was never installed)
        return "unknown"


def make_record(
    job: Job, result: ChatResult, template: PromptTemplate, model: str, failed_before: int = 0
) -> dict[str, Any]:
    """The stored record of one prompt's result (a parse failure is a failed record). A failed record
    counts the runs the prompt has failed in (``failed_runs``), so reruns can stop requesting it."""
    base: dict[str, Any] = {
        "id": job.id,
        "key": job.key,
        "prompt": job.messages[-1]["content"],
        "text": job.text,
        "messages": job.messages,
        "model": model,
        "attempts": result.attempts,
        "time": _now(),
    }
    if result.usage:
        base["usage"] = result.usage
    failed = {**base, "status": "failed", "failed_runs": failed_before + 1}
    if not result.ok:
        return {**failed, "response": None, "error": result.error or "unknown error"}
    try:
        parsed = template.parse(result.content, result.logprobs, result.soft_label)
    except ParseError as err:
        return {**failed, "response": result.content, "error": f"parse error: {err}"}
    except Exception as err:  # noqa: BLE001  (odd logprobs or fields: this prompt fails, the run goes on)
        return {**failed, "response": result.content, "error": f"parse error: {type(err).__name__}: {err}"}
    out = {**base, "status": "ok", **parsed}
    if result.finish_reason is not None:
        out["finish_reason"] = result.finish_reason
    return out


def _failed_runs(record: dict[str, Any] | None) -> int:
    """Runs a stored prompt has failed in (records from before the count was kept count as one)."""
    if not record or record.get("status") != "failed":
        return 0
    return int(record.get("failed_runs", 1))


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's kill) stops the run like Ctrl-C: the store and manifest are left consistent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Spend:
    """Tokens and estimated cost of every billed response of every run into an output directory.

    The manifest's ``usage`` counts each prompt's latest record only; a billed response that failed
    (no choices, a refusal, an unparseable label) and was retried on a rerun is paid for all the same,
    so the runs' spend is carried from one manifest to the next."""

    usage: Usage = field(default_factory=Usage)
    cost: float | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Spend:
        spent = manifest.get("spent") if isinstance(manifest.get("spent"), Mapping) else {}
        usage = Usage()
        usage.add(spent)
        cost = spent.get("estimated_cost_usd")
        return cls(usage, float(cost) if isinstance(cost, (int, float)) else None)

    def plus(self, usage: Usage, cost: float | None) -> dict[str, Any]:
        """The manifest's ``spent``: this spend and a run's."""
        total = Usage()
        total.add(self.usage)
        total.add(usage)
        both = None if self.cost is None and cost is None else (self.cost or 0.0) + (cost or 0.0)
        return {**total.as_dict(), "estimated_cost_usd": None if both is None else round(both, 6)}


def _dataset_record(job: Job, store: ResultStore) -> dict[str, Any]:
    """The stored result of ``job``'s prompt, as the record of ``job``'s id: a repeated prompt's input
    gets a copy of the first input's result, marked ``duplicate_of``."""
    record = store.get(job.key) or {}
    if job.copy_of is None or not record:
        return record
    return {**record, "id": job.id, "text": job.text, "duplicate_of": job.copy_of}


def _summary(
    plan: Plan,
    store: ResultStore,
    run_usage: Usage,
    status: str,
    started: float,
    stats: dict[str, Any] | None,
    created: str | None,
    spent_before: Spend,
) -> dict[str, Any]:
    keys = [j.key for j in plan.jobs]
    records = [store.get(k) for k in keys]
    ok = sum(1 for r in records if r and r.get("status") == "ok")
    failed = sum(1 for r in records if r and r.get("status") != "ok")
    usage = Usage()
    for r in records:
        if r:
            usage.add(r.get("usage"))
    cost = usage.cost(plan.prices)
    run_cost = run_usage.cost(plan.prices)
    errors: dict[str, int] = {}
    for r in records:
        if r and r.get("status") != "ok":
            kind = str(r.get("error", "")).split(":")[0][:60]
            errors[kind] = errors.get(kind, 0) + 1
    manifest = {
        "status": status,
        "model": plan.model,
        "teacher_type": plan.teacher_type,
        "base_url": plan.base_url,
        "api_key_env": plan.api_key_env,
        "template": plan.template.describe(),
        "settings": plan.settings,
        "counts": {
            "total": len(keys),
            "ok": ok,
            "failed": failed,
            "pending": len(keys) - ok - failed,
            "other_records_in_store": len(store) - (ok + failed),
        },
        "errors": errors,
        "usage": usage.as_dict(),
        "estimated_cost_usd": None if cost is None else round(cost, 6),
        "prices_per_1m_tokens": plan.prices or None,
        "spent": spent_before.plus(run_usage, run_cost),
        "last_run": {
            "usage": run_usage.as_dict(),
            "estimated_cost_usd": None if run_cost is None else round(run_cost, 6),
            "seconds": round(time.monotonic() - started, 3),
            **({"requests": stats} if stats else {}),
        },
        "input": {
            "key": plan.input_key,
            "source": plan.input_source,
            "count": len(plan.inputs),
            "duplicates": sum(1 for j in plan.inputs if j.copy_of is not None),
        },
        "files": {"results": RESULTS, "dataset": DATASET, "config": "config.yaml"},
        "created": created or _now(),
        "updated": _now(),
        "litdistill_version": _version(),
    }
    if plan.template.parser == "label":
        manifest["label_names"] = plan.template.label_names
    return manifest


def execute(plan: Plan) -> Path:
    """Generate every prompt of ``plan`` not already done in ``plan.output_dir``; returns that directory."""
    out = plan.output_dir
    out.mkdir(parents=True, exist_ok=True)
    teacher = plan.teacher
    secrets = list(dict.fromkeys([*getattr(teacher, "secrets", []), *plan.secrets]))
    started = time.monotonic()
    previous: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        previous = dict(json.loads((out / MANIFEST).read_text()))
    created, spent_before = previous.get("created"), Spend.from_manifest(previous)
    status = "incomplete"

    def write_manifest(state: str) -> dict[str, Any]:
        stats = teacher.stats.as_dict() if isinstance(teacher, ChatClient) else None
        run_usage = teacher.stats.usage if isinstance(teacher, ChatClient) else teacher.usage
        manifest = _summary(plan, store, run_usage, state, started, stats, created, spent_before)
        text = json.dumps(manifest, indent=2, ensure_ascii=False, default=str)
        for secret in secrets:
            text = text.replace(secret, "***")
        atomic_write_text(out / MANIFEST, text + "\n")
        return manifest

    with ResultStore(out, secrets=secrets) as store:
        config_text = plan.config_yaml
        atomic_write_text(out / "config.yaml", config_text)
        todo = [j for j in plan.jobs if not store.is_done(j.key) and (plan.retry_failed or store.get(j.key) is None)]
        given_up = [j for j in todo if _failed_runs(store.get(j.key)) >= plan.retry_failed_max]
        if given_up:  # a prompt that failed in every one of the last runs: an endpoint that refuses it, not luck
            log.warning(
                "%d prompt(s) failed in %d runs each and are not requested again (retry_failed_max=%d; raise it to "
                "try them once more); their errors are in %s",
                len(given_up),
                plan.retry_failed_max,
                plan.retry_failed_max,
                out / RESULTS,
            )
            todo = [j for j in todo if j not in given_up]
        done_before = len(plan.jobs) - len(todo)
        log.info(
            "%d prompts: %d already done in %s, %d to generate (model %s)",
            len(plan.jobs),
            done_before,
            out,
            len(todo),
            plan.model,
        )
        write_manifest("running")

        failed_before = {j.key: _failed_runs(store.get(j.key)) for j in todo}

        def on_result(job: Job, result: ChatResult) -> None:
            store.append(make_record(job, result, plan.template, plan.model, failed_before[job.key]))

        try:
            with _sigterm_as_interrupt():
                requests = [(j, j.messages) for j in todo]
                if plan.teacher_type == "local_hf":
                    teacher.map(requests, plan.params, on_result, progress=plan.progress, template=plan.template)
                else:
                    teacher.map(requests, plan.params, on_result, progress=plan.progress)
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            log.warning("interrupted: %d results kept in %s; run the same command again to resume", len(store), out)
            raise
        finally:
            store.compact(order=[j.key for j in plan.jobs])
            rows = dataset_rows(_dataset_record(j, store) for j in plan.inputs)
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            for secret in secrets:
                text = text.replace(secret, "***")
            atomic_write_text(out / DATASET, text)
            manifest = write_manifest(
                status
                if status != "complete" or all(store.is_done(j.key) for j in plan.jobs)
                else "complete_with_failures"
            )
    c = manifest["counts"]
    cost = manifest["estimated_cost_usd"]
    log.info(
        "generate: %d ok, %d failed of %d; %d tokens%s; dataset %s",
        c["ok"],
        c["failed"],
        c["total"],
        manifest["usage"]["total_tokens"],
        "" if cost is None else f", estimated cost ${cost:.4f}",
        out / DATASET,
    )
    if c["failed"]:
        log.warning("%d prompts failed (%s); rerun the same command to retry them", c["failed"], manifest["errors"])
    return out


def generate(cfg: DictConfig) -> Path:
    """Run the generation stage for a composed ``generate`` config; returns the output directory
    (``results.jsonl``, ``dataset.jsonl``, ``manifest.json``, ``config.yaml``)."""
    return execute(prepare(cfg))
