"""Feature distillation: hidden states layer to layer, and any hooked submodule's output by name.

Layer numbering (shared with :mod:`litdistill.losses.attention`): layer ``i >= 1`` is the i-th
transformer block, ``hidden_states[i]`` its output; ``0`` is the embedding output
(``hidden_states[0]``, hidden-state losses only). A layer map is resolved once, at
:meth:`~litdistill.losses.DistillationLoss.setup`, into pairs ``(student layer, teacher layer)``:

* ``"auto"`` (default): ``"init"`` for students built from a subset of the teacher's layers
  (``student=from_teacher``), else ``"uniform"``;
* ``"init"``: each student block to the teacher block it was copied from
  (``student.config.litdistill_teacher_layers``, 0-based block indices ``L_j``): pairs ``(j + 1, L_j + 1)``;
* ``"uniform"``: student layer ``i`` to teacher layer ``ceil(i * T / S)`` (S, T: the layer
  counts), so the layers spread over the teacher's depth and the last layers meet;
* ``"last"``: ``[(S, T)]``;
* explicit pairs ``[[s, t], ...]``, or a flat list ``[t_1, ..., t_S]`` (one teacher layer per
  student layer, student layers 1..S).

``include_embeddings=True`` adds ``(0, 0)`` to a named map. An out-of-range index, a pair that is
not two numbers or a flat list whose length is not the student's layer count is refused with a
ValueError naming both models' layer counts.

Metrics per position (vectors ``s``, ``t`` of the last dimension, float32):

* ``mse``: ``mean_d (s_d - t_d)^2``;
* ``cosine``: ``1 - cos(s, t)``;
* ``nmse``: ``mean_d (s_d/|s| - t_d/|t|)^2`` (MSE of L2-normalised vectors, = ``2 (1 - cos) / D``).

Positions are averaged over the real tokens (``batch["attention_mask"]``) when the feature is
``[B, T, ...]`` with the mask's ``[B, T]``, else over all rows; then the layer pairs are averaged
(the value does not grow with the number of pairs). The teacher side is a constant.

When the student and teacher sizes differ, a learned ``nn.Linear(student dim, teacher dim)`` per
pair maps the student feature into the teacher's space (``project=None``: only then; ``True``:
always; ``False``: never, a size mismatch is an error). Projections are created at setup, so the
optimizer trains them and checkpoints hold them (``losses.<term>.projections.<s>_<t>.weight`` for
:class:`HiddenStateLoss`, ``losses.<term>.projection.weight`` for :class:`FeatureLoss`); they are
not part of the exported student.

Under an offline teacher cache (``cache=use``, docs/caching.md) the teacher is a stand-in holding
only some layers' hidden states: setup resolves the map against its recorded depth and width and
refuses a map reading a layer it does not hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litdistill.core.conf import to_plain
from litdistill.core.hooks import capture_features
from litdistill.core.outputs import ModelOutputs
from litdistill.losses.base import DistillationLoss, masked_mean
from litdistill.models.layer_subset import layer_stack
from litdistill.models.multi_teacher import for_teacher, teacher_source

METRICS = ("mse", "cosine", "nmse")
LAYER_MAPS = ("auto", "init", "uniform", "last")


# ---- model facts -----------------------------------------------------------------------------------
def num_layers(model: nn.Module) -> int:
    """Transformer blocks of ``model``: ``config.num_hidden_layers``, else the length of its layer stack."""
    config = getattr(model, "config", None)
    value = getattr(config, "num_hidden_layers", None) if config is not None else None
    if isinstance(value, int):
        return value

    try:
        return len(layer_stack(model)[1])
    except ValueError as err:
        raise ValueError(
            f"cannot tell how many layers {type(model).__name__} has (no config.num_hidden_layers, no known layer "
            "stack); "
            "use a FeatureLoss on named submodules instead"
        ) from err


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    value = getattr(config, "hidden_size", None) if config is not None else None
    if not isinstance(value, int):
        raise ValueError(f"cannot tell the hidden size of {type(model).__name__} (no config.hidden_size)")
    return value


def init_layers(student: nn.Module) -> list[int] | None:
    """The teacher blocks (0-based) a layer-subset student was copied from, if recorded."""
    config = getattr(student, "config", None)
    layers = getattr(config, "litdistill_teacher_layers", None) if config is not None else None
    return [int(i) for i in layers] if layers is not None else None


def check_layer_map_spec(owner: str, spec: Any) -> Any:
    """Config-time check of the form of a layer map (ranges are checked at setup)."""
    spec = to_plain(spec)
    if isinstance(spec, str):
        if spec not in LAYER_MAPS:
            raise ValueError(
                f"{owner}: layer_map must be one of {list(LAYER_MAPS)} or a list of [student, teacher] pairs, got "
                f"{spec!r}"
            )
        return spec
    if isinstance(spec, (list, tuple)) and spec:
        return [list(p) if isinstance(p, (list, tuple)) else p for p in spec]
    raise ValueError(
        f"{owner}: layer_map must be one of {list(LAYER_MAPS)} or a non-empty list of [student, teacher] pairs, got "
        f"{spec!r}"
    )


def resolve_layer_map(
    spec: Any,
    student_layers: int,
    teacher_layers: int,
    init: Sequence[int] | None = None,
    *,
    allow_embeddings: bool = True,
    include_embeddings: bool = False,
    owner: str = "layer_map",
) -> list[tuple[int, int]]:
    """Pairs ``(student layer, teacher layer)`` for ``spec`` (see the module docstring)."""
    counts = f"the student has {student_layers} layers, the teacher {teacher_layers}"
    low = 0 if allow_embeddings else 1
    valid = f"layers {low}..{student_layers} (student) and {low}..{teacher_layers} (teacher)" + (
        "; 0 is the embedding output" if allow_embeddings else "; attention maps exist for blocks 1.. only"
    )
    spec = to_plain(spec)
    if isinstance(spec, str):
        if spec == "auto":
            spec = "init" if init is not None else "uniform"
        if spec == "uniform":
            pairs = [(i, math.ceil(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]
        elif spec == "last":
            pairs = [(student_layers, teacher_layers)]
        elif spec == "init":
            if init is None:
                raise ValueError(
                    f"{owner}='init' needs a student built from the teacher's layers (student=from_teacher, "
                    "config.litdistill_teacher_layers); this student has none. Use 'uniform', 'last' or explicit pairs"
                )
            if len(init) != student_layers or any(not 0 <= i < teacher_layers for i in init):
                raise ValueError(
                    f"{owner}='init': the student records teacher blocks {list(init)}, which do not fit: {counts}"
                )
            pairs = [(j + 1, int(layer) + 1) for j, layer in enumerate(init)]
        else:
            raise ValueError(f"{owner} must be one of {list(LAYER_MAPS)} or explicit pairs, got {spec!r}")
        if include_embeddings and allow_embeddings:
            pairs = [(0, 0), *pairs]
        return pairs
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError(f"{owner} must be one of {list(LAYER_MAPS)} or a non-empty list, got {spec!r}; {counts}")
    if all(_is_int(x) for x in spec):  # flat: one teacher layer per student layer
        if len(spec) != student_layers:
            raise ValueError(
                f"{owner} {list(spec)} lists {len(spec)} teacher layers, but {counts}: a flat map needs one teacher "
                "layer "
                f"per student layer (or give [student, teacher] pairs)"
            )
        spec = [[i + 1, t] for i, t in enumerate(spec)]
    pairs = []
    for pair in spec:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(_is_int(x) for x in pair):
            raise ValueError(
                f"{owner}: every entry must be a [student, teacher] pair of layer numbers, got {pair!r}; {counts}"
            )
        s, t = int(pair[0]), int(pair[1])
        if not (low <= s <= student_layers and low <= t <= teacher_layers):
            raise ValueError(f"{owner}: pair [{s}, {t}] is out of range: {counts}; valid {valid}")
        pairs.append((s, t))
    return pairs


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ---- metrics ---------------------------------------------------------------------------------------
def check_metric(owner: str, metric: str, valid: Sequence[str] = METRICS) -> str:
    if metric not in valid:
        raise ValueError(f"{owner}: metric must be one of {list(valid)}, got {metric!r}")
    return metric


def feature_distance(student: Tensor, teacher: Tensor, metric: str) -> Tensor:
    """Per-position distance over the last dimension: [..., D] x [..., D] -> [...]."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} differ in shape"
        )
    if metric == "mse":
        return (student - teacher).pow(2).mean(-1)
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)
    if metric == "nmse":
        return (F.normalize(student, dim=-1, eps=1e-12) - F.normalize(teacher, dim=-1, eps=1e-12)).pow(2).mean(-1)
    raise ValueError(f"unknown metric {metric!r}; valid: {list(METRICS)}")


def position_mask(feature: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Real-token mask for the leading dims of ``feature`` [..., D]: the attention mask where it fits."""
    lead = feature.shape[:-1]
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is not None and len(lead) >= 2 and tuple(mask.shape) == tuple(lead[:2]):
        mask = mask.bool()
        for _ in range(len(lead) - 2):
            mask = mask.unsqueeze(-1)
        return mask.expand(lead)
    return torch.ones(lead, dtype=torch.bool, device=feature.device)


def masked_distance(student: Tensor, teacher: Tensor, metric: str, batch: dict[str, Tensor]) -> Tensor:
    """Mean of :func:`feature_distance` over the real positions (float32; teacher detached)."""
    dtype = torch.promote_types(student.dtype, torch.float32)
    values = feature_distance(student.to(dtype), teacher.detach().to(dtype), metric)
    mask = position_mask(student, batch)
    return masked_mean(values.reshape(-1), mask.reshape(-1))


def make_projection(student_dim: int, teacher_dim: int, like: nn.Module) -> nn.Linear:
    """A float32 ``Linear(student_dim, teacher_dim)`` on the device of ``like``'s parameters."""
    device = next((p.device for p in like.parameters()), torch.device("cpu"))
    return nn.Linear(student_dim, teacher_dim, device=device, dtype=torch.float32)


def _zero(student: ModelOutputs) -> Tensor:
    """A zero loss still connected to the student's graph (a routed teacher without examples)."""
    for value in (
        *(student.hidden_states or ()),
        *(student.attentions or ()),
        *student.features.values(),
        student.logits,
    ):
        if torch.is_tensor(value):
            return value.sum() * 0.0
    return torch.zeros(())


def _check_project(owner: str, project: Any) -> bool | None:
    if project is not None and not isinstance(project, bool):
        raise ValueError(f"{owner}: project must be true, false or null (only when sizes differ), got {project!r}")
    return project


# ---- the losses ------------------------------------------------------------------------------------
class HiddenStateLoss(DistillationLoss):
    """Hidden states of mapped layers, student vs teacher, masked to real tokens (see module docstring).

    Args:
        layer_map: "auto" | "init" | "uniform" | "last" | [[s, t], ...] | [t_1, ..., t_S].
        metric: "mse" | "cosine" | "nmse".
        project: None (a learned projection per pair when hidden sizes differ), True, False.
        include_embeddings: add the embedding outputs (0, 0) to a named map.
        teacher: with a MultiTeacher, the name of the teacher to match (its layers, its examples);
            None: the combined output (see :mod:`litdistill.models.multi_teacher`).
    """

    name = "hidden"
    needs = frozenset({"hidden_states"})

    def __init__(
        self,
        layer_map: str | list = "auto",
        metric: str = "mse",
        project: bool | None = None,
        include_embeddings: bool = False,
        teacher: str | None = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        owner = type(self).__name__
        self.layer_map = check_layer_map_spec(owner, layer_map)
        self.metric = check_metric(owner, metric)
        self.project = _check_project(owner, project)
        self.include_embeddings = bool(include_embeddings)
        self.teacher = teacher
        self.pairs: list[tuple[int, int]] | None = None
        self.projections = nn.ModuleDict()

    def teacher_layers(self, student_layers: int, teacher_layers: int) -> list[int]:
        """The teacher layers this loss reads for models of these depths, without the models: what an
        offline teacher cache must store ('init' maps need the student's copied layers and are refused)."""
        pairs = resolve_layer_map(
            self.layer_map,
            student_layers,
            teacher_layers,
            None,
            include_embeddings=self.include_embeddings,
            owner=f"{type(self).__name__}.layer_map",
        )
        return sorted({t for _, t in pairs})

    def setup(self, student: nn.Module, teacher: nn.Module) -> None:

        source = teacher_source(teacher, self.teacher, "hidden_states")
        stored = _stored_layers(self, source)
        copied_from = getattr(teacher, "primary_model", teacher)
        init = init_layers(student) if source is copied_from else None
        self.pairs = resolve_layer_map(
            self.layer_map,
            num_layers(student),
            num_layers(source),
            init,
            include_embeddings=self.include_embeddings,
            owner=f"{type(self).__name__}.layer_map",
        )
        missing = sorted({t for _, t in self.pairs} - set(stored)) if stored is not None else []
        if missing:
            raise ValueError(
                f"{type(self).__name__}: the layer map {self.pairs} reads teacher layers {missing}, but the "
                f"teacher's outputs come from {source.source}, which stores the hidden states of layers {stored}"
            )
        s_dim, t_dim = hidden_size(student), hidden_size(source)
        if s_dim != t_dim and self.project is False:
            raise ValueError(
                f"{type(self).__name__}: hidden sizes differ (student {s_dim}, teacher {t_dim}) and project=false"
            )
        if s_dim != t_dim or self.project:
            for s, t in self.pairs:
                key = f"{s}_{t}"
                existing = self.projections[key] if key in self.projections else None  # noqa: SIM401 (ModuleDict has no .get)
                if existing is None or (existing.in_features, existing.out_features) != (s_dim, t_dim):
                    self.projections[key] = make_projection(s_dim, t_dim, student)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]) -> Tensor:
        view = layer_pair_view(self, student, teacher, batch)
        if view is None:
            return _zero(student)
        student, teacher, batch = view
        hs, ht = student.hidden_states, teacher.hidden_states
        if not hs or not ht:
            raise ValueError(
                f"{type(self).__name__} needs hidden states from both models (student: {_count(hs)}, teacher: "
                f"{_count(ht)}); "
                "with a routed MultiTeacher of differently shaped teachers give teacher=<name>"
            )
        values = []
        for s, t in self.pairs:
            if s >= len(hs) or t >= len(ht) or ht[t] is None:
                raise ValueError(
                    f"{type(self).__name__}: pair [{s}, {t}] but the student returned {len(hs)} hidden states "
                    f"and the teacher's outputs hold layers {_held(ht)}"
                )
            x = hs[s]
            key = f"{s}_{t}"
            if key in self.projections:
                x = self.projections[key](x.float())
            values.append(masked_distance(x, ht[t], self.metric, batch))
        return torch.stack(values).mean()

    def extra_repr(self) -> str:
        return (
            f"layer_map={self.layer_map!r}, pairs={self.pairs}, metric={self.metric!r}, "
            f"teacher={self.teacher!r}, weight={self.weight}"
        )


def module_output_dim(model: nn.Module, name: str) -> int | None:
    """Best guess of the last-dimension size of ``model.get_submodule(name)``'s output, or None.

    Linear -> out_features, Embedding -> embedding_dim, LayerNorm -> normalized_shape[-1];
    a composite module -> the same for its last such submodule (e.g. a transformer block's
    output LayerNorm). Pass ``student_dim``/``teacher_dim`` where this guess is wrong.
    """
    module = model.get_submodule(name)
    for sub in reversed(list(module.modules())):  # the module itself comes last
        if isinstance(sub, nn.Linear):
            return sub.out_features
        if isinstance(sub, nn.Embedding):
            return sub.embedding_dim
        if isinstance(sub, nn.LayerNorm) and sub.normalized_shape:
            return int(sub.normalized_shape[-1])
    return None


class FeatureLoss(DistillationLoss):
    """Outputs of two named submodules (forward hooks), student vs teacher, on any model.

    ``student_module`` / ``teacher_module`` are dotted names as in ``model.named_modules()``
    (e.g. ``bert.encoder.layer.1.output``, ``bert.pooler``, or ``blocks.0`` of a plain
    ``nn.Module``); the module registers forward hooks for them and passes the first tensor each
    returns. Same metrics and masking as :class:`HiddenStateLoss`; a learned projection when the
    last dimensions differ (sizes inferred from the modules, or given as ``student_dim`` /
    ``teacher_dim``).
    """

    name = "feature"
    needs = frozenset({"features"})

    def __init__(
        self,
        student_module: str,
        teacher_module: str,
        metric: str = "mse",
        project: bool | None = None,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        owner = type(self).__name__
        if not student_module or not teacher_module:
            raise ValueError(f"{owner}: give student_module and teacher_module (dotted submodule names)")
        self.student_module, self.teacher_module = str(student_module), str(teacher_module)
        self.student_features = [self.student_module]
        self.teacher_features = [self.teacher_module]
        self.metric = check_metric(owner, metric)
        self.project = _check_project(owner, project)
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.teacher = teacher
        self.projection: nn.Linear | None = None

    def setup(self, student: nn.Module, teacher: nn.Module) -> None:

        source = teacher_source(teacher, self.teacher, "features")
        for model, module_name in ((student, self.student_module), (source, self.teacher_module)):
            with capture_features(model, [module_name]):  # KeyError naming similar submodules if absent
                pass
        s_dim = self.student_dim or module_output_dim(student, self.student_module)
        t_dim = self.teacher_dim or module_output_dim(source, self.teacher_module)
        if self.project is False:
            return
        if s_dim is None or t_dim is None:
            if self.project:
                raise ValueError(
                    f"{type(self).__name__}: project=true but the feature sizes are unknown; give student_dim and "
                    "teacher_dim"
                )
            return
        if s_dim != t_dim or self.project:
            p = self.projection
            if p is None or (p.in_features, p.out_features) != (s_dim, t_dim):
                self.projection = make_projection(s_dim, t_dim, student)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]) -> Tensor:
        view = _select(student, teacher, batch, self.teacher)
        if view is None:
            return _zero(student)
        student, teacher, batch = view
        if self.teacher is None and self.teacher_module not in teacher.features:
            _check_routed_feature_shapes(self, teacher)
        missing = [
            f"{who} {name!r}"
            for who, out, name in (("student", student, self.student_module), ("teacher", teacher, self.teacher_module))
            if name not in out.features
        ]
        if missing:
            raise KeyError(
                f"{type(self).__name__}: no hooked output for {', '.join(missing)} (was the loss set up by "
                "DistillationModule?)"
            )
        x, y = student.features[self.student_module], teacher.features[self.teacher_module]
        if self.projection is not None:
            if x.shape[-1] != self.projection.in_features:
                raise ValueError(
                    f"{type(self).__name__}: student feature size {x.shape[-1]} != projection input "
                    f"{self.projection.in_features}; set student_dim"
                )
            x = self.projection(x.float())
        if x.shape != y.shape:
            raise ValueError(
                f"{type(self).__name__}: student {self.student_module!r} gives {tuple(x.shape)}, teacher "
                f"{self.teacher_module!r} "
                f"{tuple(y.shape)}; with different last sizes set project=true with student_dim/teacher_dim"
            )
        return masked_distance(x, y, self.metric, batch)

    def extra_repr(self) -> str:
        return (
            f"student_module={self.student_module!r}, teacher_module={self.teacher_module!r}, metric={self.metric!r}, "
            f"teacher={self.teacher!r}, weight={self.weight}"
        )


def _check_routed_feature_shapes(loss: FeatureLoss, teacher: ModelOutputs) -> None:
    """A routed MultiTeacher leaves out a combined feature its teachers give in different shapes (or
    not at all): say so, naming teachers and shapes, instead of blaming the loss's setup."""
    per = getattr(teacher, "per_teacher", None)
    if not per or all(rows is None for rows in getattr(teacher, "rows", {}).values()):
        return  # not routed: the combined feature is the primary's, checked at setup
    shapes = {
        name: tuple(out.features[loss.teacher_module].shape[1:]) if loss.teacher_module in out.features else None
        for name, out in per.items()
    }
    raise ValueError(
        f"{type(loss).__name__}: the routed teachers' {loss.teacher_module!r} outputs cannot be put back in batch "
        "order: "
        f"per-example shapes {shapes} (None: no such submodule); routing combines a feature only when every teacher "
        "gives one shape. "
        f"Set `teacher: <name>` on the loss (one of {sorted(per)}; one loss per teacher, each on that teacher's "
        "examples)"
    )


def layer_pair_view(loss: nn.Module, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor]):
    """What a layer-mapped loss compares: ``(student, teacher, batch)`` restricted to the examples of its
    teacher (``loss.teacher`` of a MultiTeacher), or None when the batch has none of them."""
    if loss.pairs is None:
        raise RuntimeError(
            f"{type(loss).__name__}.setup(student, teacher) was not called (DistillationModule calls it)"
        )
    return _select(student, teacher, batch, loss.teacher)


def _select(student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, Tensor], name: str | None):

    if teacher is None:
        raise ValueError("feature losses need teacher outputs")
    return for_teacher(student, teacher, batch, name)


def _stored_layers(loss: nn.Module, source: nn.Module) -> list[int] | None:
    """The teacher layers whose hidden states a stand-in teacher (outputs inside the batches) holds; None
    for a real model (all of them). Refuses a stand-in that holds none, naming where its outputs come from."""
    if not getattr(source, "outputs_in_batch", False):
        return None
    stored = list(getattr(source, "hidden_layers", None) or [])
    if not stored:
        raise ValueError(
            f"{type(loss).__name__} needs the teacher's hidden states, but its outputs come from "
            f"{source.source}, which stores none (a teacher cache stores them when built for a hidden-state loss)"
        )
    return stored


def _held(states: Sequence[Tensor | None]) -> str:
    """Which layers a teacher's hidden states hold: '0..N-1', or the stored ones of a teacher cache."""
    stored = [i for i, h in enumerate(states) if h is not None]
    if len(stored) == len(states):
        return f"0..{len(states) - 1}"
    return f"{stored} only (a teacher cache stores the layers the configured losses map to: cache.hidden_states)"


def _count(values: Sequence[Tensor] | None) -> str:
    return "none" if not values else f"{len(values)}"
