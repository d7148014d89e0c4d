"""Several frozen teachers behind one teacher interface: averaged soft targets, or routed per example.

:class:`MultiTeacher` is an ``nn.Module`` holding named teachers (an ``nn.ModuleDict``). The
distillation module calls its :meth:`~MultiTeacher.distill_forward` (through
:func:`litdistill.core.forward.run_model`) and gets one :class:`MultiTeacherOutputs`, so every loss works
with it unchanged. Two modes:

**Averaging** (``route_field=None``). With teacher ``k``'s logits ``z_k``, temperature ``T_k``
(default 1) and weight ``w_k`` (normalised to sum to 1)::

    p(y | x) = sum_k w_k softmax(z_k / T_k)                   (a mixture of softened distributions)
    outputs.logits = log p(y | x)        outputs.log_probs = True

The log is taken in log space (``logsumexp`` over ``log w_k + log_softmax(z_k / T_k)``), so it is
finite. Because the logits are already log-probabilities, the logit losses
(:class:`~litdistill.losses.SoftTargetKL`, the token divergences, chunked and fused) take them as
the teacher distribution unchanged (``losses.base.teacher_logits``): the loss's own temperature
softens the student side only (its T^2 factor still applies). Argmax predictions, agreement and the
report's NLL use the mixture. Hidden states, attentions and hooked features of the averaged output
are the **primary** teacher's (``primary=``, default the first); every teacher's own outputs are in
``outputs.per_teacher[name]`` and a feature loss given ``teacher="<name>"`` matches that teacher
(one loss, layer map and projection per teacher).

**Routing** (``route_field="teacher_id"``). ``batch[route_field]`` [B] holds an int per example;
id ``i`` is taught by ``routes[i]`` (default: the teachers in their given order). Each teacher
runs once per step on its own examples only, and the outputs are put back in batch order:

* logits: each example's teacher's raw logits (``log_probs=False``: the loss applies its
  temperature exactly as with one teacher); with ``temperatures`` given, each teacher's
  ``log_softmax(z_k / T_k)`` instead (``log_probs=True``);
* hidden states / attentions / hooked features: each example's own teacher's. That needs teachers
  of one shape (layers, hidden size, heads); losses check it at setup and otherwise ask for
  ``teacher="<name>"``, which matches the student's rows of that teacher's examples only.

A data module provides the field: ``TextClassificationDataModule(route_column="language",
route_values=["en", "de"])`` puts ``batch["teacher_id"]`` (0 for "en", 1 for "de").

Teachers may be quantized (``load_pretrained(..., quantization="8bit"|"nf4")``);
:meth:`MultiTeacher.memory_report` and :func:`teachers_memory` give their memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litdistill.core.attention_impl import (
    ensure_attention_outputs,
    restore_attention_implementation,
)
from litdistill.core.forward import run_model
from litdistill.core.hooks import capture_features
from litdistill.core.outputs import ModelOutputs
from litdistill.core.validation import check_temperature
from litdistill.models.compatibility import (
    IncompatibleModelsError,
    first_vocab_differences,
)
from litdistill.models.loading import (
    count_parameters,
    load_pretrained,
    load_tokenizer,
    memory_footprint,
)

log = logging.getLogger(__name__)

MODES = ("average", "route")


@dataclass
class MultiTeacherOutputs(ModelOutputs):
    """Combined outputs plus each teacher's own.

    ``per_teacher[name]``: that teacher's outputs (raw logits). ``rows[name]``: None when the
    teacher saw the whole batch (averaging), else the [n] indices of the batch rows it taught
    (routing); a routed teacher without examples in the batch is absent from both.
    """

    per_teacher: dict[str, ModelOutputs] = field(default_factory=dict)
    rows: dict[str, Tensor | None] = field(default_factory=dict)


# ---- selecting rows and teachers -------------------------------------------------------------------
def subset_batch(batch: Mapping[str, Any], rows: Tensor) -> dict[str, Any]:
    """The batch restricted to ``rows`` (every tensor whose first dim is the batch size)."""
    size = _batch_size(batch)
    return {k: v.index_select(0, rows.to(v.device)) if _is_rows(v, size) else v for k, v in batch.items()}


def subset_outputs(outputs: ModelOutputs, rows: Tensor) -> ModelOutputs:
    """``outputs`` restricted to the batch rows ``rows`` (logits, hidden states, attentions, features)."""
    size = outputs.logits.shape[0] if outputs.logits is not None else None

    def pick(x: Tensor) -> Tensor:
        return x.index_select(0, rows.to(x.device))

    def pick_all(xs: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
        return tuple(pick(x) for x in xs) if xs else xs

    return ModelOutputs(
        logits=pick(outputs.logits) if outputs.logits is not None else None,
        hidden_states=pick_all(outputs.hidden_states),
        attentions=pick_all(outputs.attentions),
        features={k: pick(v) if size is None or _is_rows(v, size) else v for k, v in outputs.features.items()},
        log_probs=outputs.log_probs,
    )


def for_teacher(
    student: ModelOutputs, teacher: ModelOutputs, batch: dict[str, Any], name: str | None
) -> tuple[ModelOutputs, ModelOutputs, dict[str, Any]] | None:
    """What a loss with ``teacher=name`` compares: (student rows, that teacher's outputs, batch rows).

    ``name=None``: everything unchanged (a single teacher, or a MultiTeacher's combined output).
    Returns None when the named (routed) teacher has no example in this batch.
    """
    if name is None:
        return student, teacher, batch
    per = getattr(teacher, "per_teacher", None)
    if per is None:
        raise ValueError(f"the loss names teacher {name!r}, but the teacher is a single model, not a MultiTeacher")
    if name not in per:
        if name in getattr(teacher, "rows", {}) or _routed(teacher):
            return None  # routed: no example of this teacher in the batch
        raise KeyError(f"no teacher named {name!r}; teachers: {sorted(per)}")
    rows = teacher.rows.get(name)
    if rows is None:
        return student, per[name], batch
    return subset_outputs(student, rows), per[name], subset_batch(batch, rows)


def teacher_source(teacher: nn.Module, name: str | None, what: str) -> nn.Module:
    """The model whose layers a feature loss on ``what`` maps to (used at setup).

    A single teacher is itself; a :class:`MultiTeacher` answers with :meth:`MultiTeacher.source_for`.
    """
    if isinstance(teacher, MultiTeacher):
        return teacher.source_for(name, what)
    if name is not None:
        raise ValueError(
            f"the loss names teacher {name!r}, but the teacher ({type(teacher).__name__}) is not a MultiTeacher"
        )
    return teacher


def _routed(outputs: ModelOutputs) -> bool:
    rows = getattr(outputs, "rows", {})
    return any(r is not None for r in rows.values())


def _batch_size(batch: Mapping[str, Any]) -> int:
    for key in ("input_ids", "attention_mask", "labels"):
        if key in batch and torch.is_tensor(batch[key]):
            return batch[key].shape[0]
    raise KeyError(
        f"cannot tell the batch size: no input_ids/attention_mask/labels in the batch (keys {sorted(batch)})"
    )


def _is_rows(value: Any, size: int) -> bool:
    return torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size


# ---- the teacher ensemble --------------------------------------------------------------------------
class MultiTeacher(nn.Module):
    """Named frozen teachers that teach together (averaging) or per example (routing).

    Args:
        teachers: ``{name: model}`` (insertion order is the teacher order; names without dots).
        weights: averaging weights, ``{name: w}`` or a list in teacher order (>= 0, normalised to
            sum to 1; default equal). Not allowed with routing.
        temperatures: each teacher's softening temperature ``T_k``, ``{name: T}``, a list, or one
            number for all. Averaging default 1. Routing default None = raw logits.
        route_field: batch key with each example's route id; None = averaging.
        routes: teacher names in route-id order (id ``i`` -> ``routes[i]``); default the teacher order.
        primary: the teacher whose config is ``.config``, whose hidden states/attentions/features
            the averaged output carries, and that ``from_teacher`` students copy; default the first.
        name_or_path: the tokenizer all teachers share (the data are encoded with it; train.py
            checks the data's tokenizer against it). Optional.
        check_tokenizers: compare the teachers' tokenizers (where loadable from their source
            ``name_or_path``) with each other and with ``name_or_path``.
    """

    def __init__(
        self,
        teachers: Mapping[str, nn.Module],
        weights: Mapping[str, float] | Sequence[float] | None = None,
        temperatures: Mapping[str, float] | Sequence[float] | float | None = None,
        route_field: str | None = None,
        routes: Sequence[str] | None = None,
        primary: str | None = None,
        name_or_path: str | None = None,
        check_tokenizers: bool = True,
    ) -> None:
        super().__init__()
        teachers = dict(teachers or {})
        if not teachers:
            raise ValueError("MultiTeacher needs at least one teacher: teachers={name: model}")
        for name, model in teachers.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"teacher names must be non-empty strings without dots, got {name!r}")
            if not isinstance(model, nn.Module):
                raise TypeError(f"teacher {name!r} is a {type(model).__name__}, not an nn.Module")
        self.teachers = nn.ModuleDict(teachers)
        self.names = list(teachers)
        self.mode = "route" if route_field else "average"
        self.route_field = route_field
        if self.mode == "route" and weights is not None:
            raise ValueError(
                "weights= apply to averaging; with route_field each example has exactly one teacher (set weights=null)"
            )
        self.weights = self._per_teacher("weights", weights, default=1.0, check=_check_weight)
        total = sum(self.weights.values())
        if self.mode == "average":
            if total <= 0:
                raise ValueError(f"MultiTeacher: the weights must not all be 0, got {self.weights}")
            self.weights = {name: w / total for name, w in self.weights.items()}
        default_t = 1.0 if self.mode == "average" else None
        self.temperatures = (
            self._per_teacher("temperatures", temperatures, default=default_t, check=_check_temperature)
            if temperatures is not None or default_t is not None
            else None
        )
        self.routes = list(routes) if routes is not None else list(self.names)
        unknown = [r for r in self.routes if r not in teachers]
        if unknown or not self.routes:
            raise ValueError(
                f"routes must name teachers (in route-id order); unknown {unknown}; teachers: {self.names}"
            )
        self.primary = primary if primary is not None else self.names[0]
        if self.primary not in teachers:
            raise ValueError(f"primary={self.primary!r} is not a teacher; teachers: {self.names}")
        self.name_or_path = name_or_path
        self.check_output_spaces()
        if check_tokenizers:
            self.check_tokenizers()

    def _per_teacher(self, what: str, values: Any, default: float | None, check: Any) -> dict[str, float]:
        if values is None:
            return {name: default for name in self.names}
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            return {name: check(what, name, values) for name in self.names}
        if isinstance(values, Mapping):
            values = dict(values)
            unknown = sorted(set(values) - set(self.names))
            missing = [n for n in self.names if n not in values]
            if unknown or missing:
                raise ValueError(
                    f"MultiTeacher {what}: unknown teachers {unknown}, missing {missing}; teachers: {self.names}"
                )
            return {name: check(what, name, values[name]) for name in self.names}
        values = list(values)
        if len(values) != len(self.names):
            raise ValueError(f"MultiTeacher {what}: {len(values)} values for {len(self.names)} teachers {self.names}")
        return {name: check(what, name, v) for name, v in zip(self.names, values)}

    # ---- checks and properties ------------------------------------------------------------------
    def check_output_spaces(self) -> None:
        """All teachers share a vocabulary size and (classification) label count and names."""

        configs = {name: getattr(m, "config", None) for name, m in self.teachers.items()}
        if any(c is None for c in configs.values()):
            return  # non-HF teachers: their outputs are compared shape by shape at the first step
        for key in ("vocab_size", "num_labels", "id2label"):
            values = {name: getattr(c, key, None) for name, c in configs.items()}
            if len({repr(v) for v in values.values()}) > 1:
                raise IncompatibleModelsError(
                    f"MultiTeacher: the teachers differ in {key}: {values}; teachers must share one vocabulary "
                    "and one output space (same tokenizer, same labels)"
                )

    def check_tokenizers(self) -> None:
        """Compare the tokenizers of teachers loaded from a name or folder (and ``name_or_path``)."""

        sources = {} if self.name_or_path is None else {"name_or_path": self.name_or_path}
        for name, model in self.teachers.items():
            source = (getattr(model, "litdistill_source", None) or {}).get("name_or_path")
            if source:
                sources[name] = source
        tokenizers = {}
        for name, source in dict.fromkeys(sources.items()):  # one load per distinct (name, source)
            try:
                tokenizers[name] = load_tokenizer(source)
            except (OSError, ValueError, TypeError) as err:  # e.g. a model folder saved without a tokenizer
                log.info("MultiTeacher: no tokenizer to compare for %s (%s): %s", name, source, err)
        if len(tokenizers) < 2:
            return
        (ref_name, ref), *others = tokenizers.items()
        for name, tok in others:
            diffs = first_vocab_differences(ref, tok)
            if diffs:
                raise IncompatibleModelsError(
                    f"MultiTeacher: the vocabularies of {ref_name} ({sources[ref_name]}) and {name} ({sources[name]}) "
                    f"differ; first differing ids: {'; '.join(diffs)}. All teachers must share one tokenizer."
                )

    @property
    def primary_model(self) -> nn.Module:
        return self.teachers[self.primary]

    @property
    def config(self) -> Any:
        """The primary teacher's Hugging Face config (output-space checks, label counts)."""
        return getattr(self.primary_model, "config", None)

    @property
    def is_quantized(self) -> bool:
        return any(getattr(m, "is_quantized", False) for m in self.teachers.values())

    def ensure_attention_outputs(self) -> None:
        """Switch every teacher to eager attention (called when an attention loss is configured)."""

        for model in self.teachers.values():
            ensure_attention_outputs(model)

    def restore_attention_implementation(self) -> None:

        for model in self.teachers.values():
            restore_attention_implementation(model)

    def source_for(self, name: str | None, what: str) -> nn.Module:
        """The teacher whose layers a loss on ``what`` (hidden_states, attentions, features) maps to.

        ``name`` given: that teacher. Averaging: the primary. Routing: the primary, after checking
        that all routed teachers share the shape of ``what`` (each example gets its own teacher's).
        """
        if name is not None:
            if name not in self.teachers:
                raise KeyError(f"no teacher named {name!r}; teachers: {self.names}")
            return self.teachers[name]
        if self.mode == "route" and what in ("hidden_states", "attentions"):
            keys = (
                ("num_hidden_layers", "hidden_size")
                if what == "hidden_states"
                else ("num_hidden_layers", "num_attention_heads")
            )
            shapes = {
                n: tuple(getattr(getattr(self.teachers[n], "config", None), k, None) for k in keys)
                for n in dict.fromkeys(self.routes)
            }
            if len(set(shapes.values())) > 1:
                raise ValueError(
                    f"routed {what} come from each example's own teacher, so the teachers must share {keys}; got "
                    f"{shapes}. "
                    "Give the loss teacher=<name> (one loss per teacher, each with its own layer map)"
                )
        return self.primary_model

    def memory_report(self) -> dict[str, Any]:
        """Bytes of parameters and buffers per teacher (quantized weights at their packed size) and in total."""
        return teachers_memory(self.teachers)

    def extra_repr(self) -> str:
        if self.mode == "route":
            return (
                f"mode=route, route_field={self.route_field!r}, routes={self.routes}, temperatures={self.temperatures}"
            )
        return f"mode=average, weights={self.weights}, temperatures={self.temperatures}, primary={self.primary!r}"

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, **inputs: Any) -> ModelOutputs:
        """Plain call (CPU timing, inference): the combined logits.

        Routing without ``route_field`` in ``inputs`` runs every teacher and averages them with
        equal weights (what a timing run on inputs alone measures); training and evaluation go
        through :meth:`distill_forward`, which requires the field.
        """
        needs = {"logits"} | {
            n
            for n, flag in (("hidden_states", "output_hidden_states"), ("attentions", "output_attentions"))
            if inputs.pop(flag, False)
        }
        batch = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
        if self.mode == "route" and self.route_field not in batch:
            outs = {
                name: run_model(self.teachers[name], batch, frozenset(needs), "classification")
                for name in dict.fromkeys(self.routes)
            }
            equal = {name: 1.0 / len(outs) for name in outs}
            logits = _log_mixture({n: o.logits for n, o in outs.items()}, equal, dict.fromkeys(outs, 1.0))
            return ModelOutputs(logits=logits, log_probs=True)
        return self.distill_forward(batch, frozenset(needs), "classification")

    def distill_forward(
        self, batch: dict[str, Tensor], needs: frozenset[str], task: str, feature_names: Sequence[str] = ()
    ) -> MultiTeacherOutputs:
        """Every teacher's outputs for the batch, combined (see the module docstring)."""
        needs = needs | {"logits"}  # the mixture is over logits, whatever head-fused losses ask of a single teacher
        if self.mode == "route":
            return self._routed(batch, needs, task, feature_names)
        per = {
            name: run_model(model, batch, needs, task, _names_in(model, feature_names))
            for name, model in self.teachers.items()
        }
        _check_missing_features(self, feature_names)
        live = [n for n in self.names if self.weights[n] > 0]
        logits = _log_mixture({n: per[n].logits for n in live}, self.weights, self.temperatures)
        main = per[self.primary]
        return MultiTeacherOutputs(
            logits=logits,
            log_probs=True,
            hidden_states=main.hidden_states,
            attentions=main.attentions,
            features=dict(main.features),
            per_teacher=per,
            rows=dict.fromkeys(per),
        )

    def _routed(
        self, batch: dict[str, Tensor], needs: frozenset[str], task: str, feature_names: Sequence[str]
    ) -> MultiTeacherOutputs:
        if self.route_field not in batch:
            raise KeyError(
                f"MultiTeacher routes by batch[{self.route_field!r}], which the batch lacks (keys {sorted(batch)}); "
                "configure the data module's route_column/route_values (TextClassificationDataModule)"
            )
        ids = batch[self.route_field].reshape(-1).long()
        size = _batch_size(batch)
        bad = ids[(ids < 0) | (ids >= len(self.routes))]
        if bad.numel() or ids.numel() != size:
            raise ValueError(
                f"batch[{self.route_field!r}] must hold one route id in 0..{len(self.routes) - 1} per example "
                f"(routes {self.routes}); got {sorted(set(ids.tolist()))[:10]} for {size} examples"
            )
        per: dict[str, ModelOutputs] = {}
        rows: dict[str, Tensor] = {}
        for name in dict.fromkeys(self.routes):
            ids_of_name = [i for i, r in enumerate(self.routes) if r == name]
            mask = torch.isin(ids, torch.tensor(ids_of_name, device=ids.device))
            idx = mask.nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            model = self.teachers[name]
            out = run_model(model, subset_batch(batch, idx), needs, task, _names_in(model, feature_names))
            if self.temperatures is not None:
                out.logits = F.log_softmax(out.logits.float() / self.temperatures[name], dim=-1)
                out.log_probs = True
            per[name], rows[name] = out, idx
        _check_missing_features(self, feature_names)
        outs = list(per.values())
        logits = _scatter(outs, rows, size, lambda o: o.logits)
        hidden = _scatter_tuple(outs, rows, size, lambda o: o.hidden_states)
        attentions = _scatter_tuple(outs, rows, size, lambda o: o.attentions)
        features = {}
        for fname in feature_names:
            value = _scatter(outs, rows, size, lambda o, fname=fname: o.features.get(fname))
            if value is not None:
                features[fname] = value
        return MultiTeacherOutputs(
            logits=logits,
            log_probs=self.temperatures is not None,
            hidden_states=hidden,
            attentions=attentions,
            features=features,
            per_teacher=per,
            rows=dict(rows),
        )


# ---- helpers ---------------------------------------------------------------------------------------
def _check_weight(what: str, name: str, value: Any) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"MultiTeacher {what}[{name!r}] must be a finite number >= 0, got {value}")
    return value


def _check_temperature(what: str, name: str, value: Any) -> float:

    return check_temperature(f"MultiTeacher {what}[{name!r}]", value)


def _names_in(model: nn.Module, names: Sequence[str]) -> list[str]:
    if not names:
        return []
    modules = {n for n, _ in model.named_modules()}
    return [n for n in names if n in modules]


def _check_missing_features(multi: MultiTeacher, names: Sequence[str]) -> None:
    """A hooked name found in no teacher is an error (with capture_features' list of similar names)."""

    for name in names:
        if not any(_names_in(m, [name]) for m in multi.teachers.values()):
            with capture_features(multi.primary_model, [name]):  # raises KeyError naming similar modules
                pass


def _log_mixture(
    logits: Mapping[str, Tensor], weights: Mapping[str, float], temperatures: Mapping[str, float]
) -> Tensor:
    """log sum_k w_k softmax(z_k / T_k), computed in float32 (float64 stays) with logsumexp."""
    shapes = {name: tuple(z.shape) for name, z in logits.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"MultiTeacher: teachers' logits differ in shape {shapes}; they must share one output space")
    terms = []
    for name, z in logits.items():
        dtype = torch.promote_types(z.dtype, torch.float32)
        terms.append(F.log_softmax(z.to(dtype) / temperatures[name], dim=-1) + math.log(weights[name]))
    dtype = terms[0].dtype
    for t in terms[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.logsumexp(torch.stack([t.to(dtype) for t in terms]), dim=0)


def _scatter(outs: list[ModelOutputs], rows: Mapping[str, Tensor], size: int, get: Any) -> Tensor | None:
    """Put each teacher's rows back in batch order; None if a teacher lacks it or shapes differ."""
    values = [get(o) for o in outs]
    if not values or any(v is None for v in values) or len({tuple(v.shape[1:]) for v in values}) > 1:
        return None
    dtype = values[0].dtype
    for v in values[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    result = values[0].new_empty((size, *values[0].shape[1:]), dtype=dtype)
    for v, idx in zip(values, rows.values()):
        result.index_copy_(0, idx.to(result.device), v.to(dtype))
    return result


def _scatter_tuple(
    outs: list[ModelOutputs], rows: Mapping[str, Tensor], size: int, get: Any
) -> tuple[Tensor, ...] | None:
    tuples = [get(o) for o in outs]
    if not tuples or any(not t for t in tuples) or len({len(t) for t in tuples}) > 1:
        return None
    layers = []
    for i in range(len(tuples[0])):
        layer = _scatter(outs, rows, size, lambda o, i=i: get(o)[i])
        if layer is None:
            return None
        layers.append(layer)
    return tuple(layers)


def teachers_memory(teachers: Mapping[str, nn.Module] | MultiTeacher) -> dict[str, Any]:
    """Memory of N teachers: ``{"teachers": {name: {...}}, "total_bytes", "total_mb"}``.

    Per teacher: ``bytes``/``mb`` (parameters and buffers, quantized weights at their packed size,
    :func:`litdistill.models.loading.memory_footprint`), ``params`` (element count as stored), ``quantization``
    and ``dtype`` from its load. The function the benchmarks call to report N (quantized) teachers.
    """

    if isinstance(teachers, MultiTeacher):
        teachers = teachers.teachers
    rows = {}
    for name, model in teachers.items():
        source = getattr(model, "litdistill_source", None) or {}
        size = memory_footprint(model)
        rows[name] = {
            "bytes": size,
            "mb": size / 2**20,
            "params": count_parameters(model),
            "quantization": source.get("quantization"),
            "dtype": source.get("dtype"),
        }
    total = sum(r["bytes"] for r in rows.values())
    return {"teachers": rows, "total_bytes": total, "total_mb": total / 2**20}


def load_teachers_memory(
    name_or_path: str,
    quantizations: Sequence[str | None] = (None, "8bit", "nf4"),
    task: str = "classification",
    num_labels: int | None = 2,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Load ``name_or_path`` once per quantization into one MultiTeacher and report its memory.

    For the benchmarks: e.g. ``load_teachers_memory(packaged_minilm())`` gives the bytes of the
    float32, 8-bit and nf4 copies and their total (:func:`teachers_memory`).
    """

    teachers = {
        (q or dtype): load_pretrained(name_or_path, task=task, num_labels=num_labels, dtype=dtype, quantization=q)
        for q in quantizations
    }
    report = teachers_memory(MultiTeacher(teachers, check_tokenizers=False))
    report["name_or_path"] = name_or_path
    return report


__all__ = [
    "MODES",
    "MultiTeacher",
    "MultiTeacherOutputs",
    "for_teacher",
    "load_teachers_memory",
    "subset_batch",
    "subset_outputs",
    "teacher_source",
    "teachers_memory",
]
