"""DistillationModule: a frozen teacher, a trainable student and a set of weighted loss terms."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from litdistill.core.attention_impl import (
    ensure_attention_outputs,
    restore_attention_implementation,
)
from litdistill.core.forward import align_labels, run_model
from litdistill.core.metrics import agreement, metric_values, task_metrics
from litdistill.core.outputs import ModelOutputs, outputs_in_batch
from litdistill.data.token_counts import across_ranks
from litdistill.losses import DistillationLoss, HardCE, SoftTargetKL
from litdistill.training.clipping import clip_gradients
from litdistill.training.optim import adamw, parameter_groups

ModelFactory = Callable[..., nn.Module]  # a model built later, in configure_model
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


# The frozen teacher is in eval mode on purpose; Lightning warns about any module in eval mode.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# DeepSpeed warns whenever configure_gradient_clipping is overridden; it still clips, in its engine, by norm
# at trainer.gradient_clip_val (Lightning puts that in its config), and the override defers to Lightning there.
warnings.filterwarnings("ignore", message="Since DeepSpeed handles gradient clipping internally")


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term is NaN or infinite; names the step and the term."""


class DistillationModule(L.LightningModule):
    """Train ``student`` to match ``teacher`` under ``losses``; ``teacher=None`` trains on labels.

    The teacher is frozen (no gradients, eval mode, ``no_grad``) and never enters checkpoints or
    the optimizer. Each step runs each model once, asking only for the outputs the losses need.
    ``student`` and ``teacher`` are models, or factories that build them in :meth:`configure_model`.
    """

    def __init__(
        self,
        student: nn.Module | ModelFactory,
        teacher: nn.Module | ModelFactory | None = None,
        losses: Mapping[str, DistillationLoss] | Iterable[DistillationLoss] | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        task: str = "classification",
        num_labels: int | None = None,
    ) -> None:
        super().__init__()
        # A model or a factory building it; factories run in configure_model (see there).
        self.student_factory = None if isinstance(student, nn.Module) else student
        self.teacher_factory = None if teacher is None or isinstance(teacher, nn.Module) else teacher
        self.student = None if self.student_factory else student
        self.teacher = None if self.teacher_factory else teacher
        self.losses = nn.ModuleDict(_as_named_losses(losses, teacher is not None))
        self.task = task
        self.num_labels = num_labels
        self.optimizer_factory = optimizer or adamw()
        self.scheduler_factory = scheduler
        self.uses_teacher = any(loss.uses_teacher for loss in self.losses.values())
        if self.uses_teacher and teacher is None:
            teacher_losses = [name for name, loss in self.losses.items() if loss.uses_teacher]
            raise ValueError(f"losses {teacher_losses} need a teacher, but teacher=None")
        self.needs = frozenset().union(*(loss.needs for loss in self.losses.values()))
        self.student_features = sorted(
            {n for loss in self.losses.values() for n in getattr(loss, "student_features", ())}
        )
        self.teacher_features = sorted(
            {n for loss in self.losses.values() for n in getattr(loss, "teacher_features", ())}
        )
        self._teacher_val_preds: dict[
            int, Tensor
        ] = {}  # batch index -> teacher predictions, from the first full validation
        self._teacher_val_logged: dict[str, float] | None = None
        self._agree = [0, 0]
        self.strict_loading = False  # checkpoints carry no teacher weights
        if not (self.student_factory or self.teacher_factory):
            self._wire_models()

    def configure_model(self) -> None:
        """Build the models from their factories, once (later calls, e.g. a second fit, do nothing).

        Lightning calls this inside the strategy's init context, before it wraps the module: the
        weights are created on the target device and in a ``*-true`` precision's dtype. (Not on the
        meta device: Lightning enters that context without ``empty_init``, so under FSDP each rank
        builds the full weights before they are sharded.) A student factory taking ``teacher=`` gets the built
        teacher (layer
        subsets are cut from it), like the ``conf/student/*.yaml`` factories."""
        if self.student is not None and (self.teacher_factory is None or self.teacher is not None):
            return
        if self.teacher_factory is not None:
            self.teacher = self.teacher_factory()
        if self.student_factory is not None:
            takes_teacher = "teacher" in inspect.signature(self.student_factory).parameters
            self.student = self.student_factory(teacher=self.teacher) if takes_teacher else self.student_factory()
        self._wire_models()

    def _wire_models(self) -> None:
        """Freeze the teacher and fit losses and metrics to the two models (before any optimizer exists)."""
        student, teacher = self.student, self.teacher
        if teacher is not None:
            teacher.requires_grad_(False)  # before any strategy wraps the model
            teacher.eval()
        if "attentions" in self.needs:  # sdpa/flash return no attention maps: eager, only when a loss needs them
            for model in (student, teacher):
                if model is not None:
                    ensure_attention_outputs(model)
        if teacher is not None:  # layer maps and projections
            for loss in self.losses.values():
                loss.setup(student, teacher)
        num_labels = self.num_labels or _num_outputs(student, self.task)
        self.val_metrics = task_metrics(self.task, num_labels).clone(prefix="val/student/")
        self.teacher_val_metrics = task_metrics(self.task, num_labels).clone(prefix="val/teacher/")

    # ---- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DistillationModule:
        """Whatever Lightning or the user switches, the teacher stays in eval mode (no dropout)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning >= 2.2 does not call .train() for us, and from_pretrained models start in eval. Every
        # batch, not once per epoch: a mid-epoch resume skips on_train_epoch_start, and the student would
        # then train with dropout off until the epoch ends (a few microseconds a step).
        self.student.train()
        self.losses.train()
        if self.teacher is not None:
            self.teacher.eval()

    def on_fit_start(self) -> None:
        if "attentions" in self.needs:  # again, after an earlier fit's on_fit_end
            for model in (self.student, self.teacher):
                if model is not None:
                    ensure_attention_outputs(model)

    def on_fit_end(self) -> None:
        """Eager attention was for the attention loss: inference, export and timing use sdpa again."""
        if "attentions" in self.needs:
            for model in (self.student, self.teacher):
                if model is not None:
                    restore_attention_implementation(model)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, **inputs: Tensor) -> Any:
        return self.student(**inputs)

    def student_outputs(self, batch: dict[str, Tensor], needs: frozenset[str] | None = None) -> ModelOutputs:
        return run_model(self.student, batch, self.needs if needs is None else needs, self.task, self.student_features)

    @torch.no_grad()
    def teacher_outputs(self, batch: dict[str, Tensor], needs: frozenset[str] | None = None) -> ModelOutputs:
        """Teacher outputs for the batch; precomputed ``teacher_logits`` or ``teacher_topk_*`` (and
        ``teacher_hidden_states``) in the batch (an offline teacher cache, see litdistill.cache) win
        over running the teacher."""
        cached = outputs_in_batch(batch)
        if cached is not None:
            return cached
        return run_model(self.teacher, batch, self.needs if needs is None else needs, self.task, self.teacher_features)

    def loss_terms(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], ModelOutputs]:
        """Weighted total, each unweighted term, and the student's outputs for one aligned batch."""
        student = self.student_outputs(batch)
        teacher = self.teacher_outputs(batch) if self.uses_teacher else None
        terms = {name: loss(student, teacher, batch) for name, loss in self.losses.items()}
        total = sum(self.losses[name].weight * value for name, value in terms.items())
        return total, terms, student

    # ---- steps -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        batch = align_labels(across_ranks(batch), self.task)  # token losses: the mean over all ranks' tokens
        total, terms, _ = self.loss_terms(batch)
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise NonFiniteLossError(
                    f"loss term {name!r} is {value.item()} at global step {self.global_step} "
                    f"(epoch {self.current_epoch}, batch {batch_idx}); training stopped, the last checkpoint is intact"
                )
            self.log(f"train/loss/{name}", value.detach(), on_step=True, on_epoch=True)
        self.log("train/loss", total.detach(), on_step=True, on_epoch=True, prog_bar=True)
        return total

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        batch = align_labels(batch, self.task)
        needs = frozenset({"logits"})
        student_preds = self.student_outputs(batch, needs).logits.argmax(-1)
        labels = batch.get("labels")
        if labels is not None:
            self.val_metrics.update(student_preds, labels)
        teacher_preds = self._teacher_predictions(batch, batch_idx, needs)
        if teacher_preds is not None:
            agree, counted = agreement(student_preds, teacher_preds, labels if self.task == "causal_lm" else None)
            self._agree[0] += agree
            self._agree[1] += counted

    def _teacher_predictions(self, batch: dict[str, Tensor], batch_idx: int, needs: frozenset[str]) -> Tensor | None:
        """The teacher is frozen, so its validation predictions are computed once and reused."""
        in_batch = "teacher_logits" in batch or "teacher_topk_ids" in batch
        if not in_batch and (self.teacher is None or getattr(self.teacher, "outputs_in_batch", False)):
            return None  # no teacher, or a stand-in whose outputs only some splits carry
        if batch_idx in self._teacher_val_preds and not self.trainer.sanity_checking:
            return self._teacher_val_preds[batch_idx].to(self.device)
        outputs = self.teacher_outputs(batch, needs)
        preds = outputs.logits.argmax(-1) if outputs.logits is not None else outputs.topk.argmax()
        if not self.trainer.sanity_checking:
            self._teacher_val_preds[batch_idx] = preds.cpu()
            if self._teacher_val_logged is None and "labels" in batch:
                self.teacher_val_metrics.update(preds, batch["labels"])
        return preds

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_metrics.reset()
            self._agree = [0, 0]
            return
        if any(metric.update_called for metric in self.val_metrics.values()):
            self.log_dict(metric_values(self.val_metrics), sync_dist=True)
        self.val_metrics.reset()
        if self._teacher_val_preds:
            if self._teacher_val_logged is None:
                self._teacher_val_logged = metric_values(self.teacher_val_metrics)
                self.teacher_val_metrics.reset()
            self.log_dict(self._teacher_val_logged, sync_dist=True)
            agree, counted = self._agree
            self.log("val/agreement", agree / max(counted, 1), sync_dist=True)
        self._agree = [0, 0]

    # ---- optimisation and checkpoints --------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """Only student and trainable-loss parameters are optimised; the teacher never is."""
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith("teacher.")]
        optimizer = self.optimizer_factory(parameter_groups(trainable))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(
            optimizer, num_training_steps=max(1, int(self.trainer.estimated_stepping_batches))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, except norm clipping under FSDP, which goes to the root FSDP unit."""
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen teacher from checkpoints: it is reloaded from its source on resume."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load everything but the teacher strictly: a missing student key is still an error."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("teacher.")]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint does not match the student: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return result


def _as_named_losses(
    losses: Mapping[str, DistillationLoss] | Iterable[DistillationLoss] | None, has_teacher: bool
) -> dict[str, DistillationLoss]:
    if losses is None:
        return {"kd": SoftTargetKL(weight=0.5), "ce": HardCE(weight=0.5)} if has_teacher else {"ce": HardCE()}
    if isinstance(losses, Mapping):
        return dict(losses)
    return {loss.name or type(loss).__name__.lower(): loss for loss in losses}


def _num_outputs(model: nn.Module, task: str) -> int:
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("pass num_labels= for a student without a Hugging Face config")
    return config.num_labels if task == "classification" else config.vocab_size
