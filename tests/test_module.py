"""DistillationModule: frozen teacher, modes, optimizer, checkpoints, one forward each, NaN guard."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tests.conftest import tiny_bert

from litdistill import DistillationModule, HardCE, NonFiniteLossError, SoftTargetKL
from litdistill.losses import DistillationLoss
from litdistill.training.checkpointing import AtomicCheckpointIO


def _trainer(tmp_path, **kw) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
    )
    return L.Trainer(**{**defaults, **kw})


class ModeRecorder(L.Callback):
    """Records the modes of teacher and student (and whether autograd records) inside every forward."""

    def __init__(self, module):
        self.teacher_modes, self.student_modes, self.dropout_modes = [], [], []
        self.grad_enabled = {"teacher": [], "student": []}
        self.calls = {"teacher": 0, "student": 0}
        self.kwargs = {"teacher": [], "student": []}
        for name in ("teacher", "student"):
            model = getattr(module, name)
            model.register_forward_pre_hook(self._pre(name), with_kwargs=True)

    def _pre(self, name):
        def hook(model, args, kwargs):
            self.calls[name] += 1
            self.grad_enabled[name].append(torch.is_grad_enabled())
            self.kwargs[name].append(sorted(k for k in kwargs if k.startswith("output_")))
            (self.teacher_modes if name == "teacher" else self.student_modes).append(model.training)
            if name == "teacher":
                self.dropout_modes.extend(m.training for m in model.modules() if isinstance(m, torch.nn.Dropout))

        return hook


class BatchCounter(L.Callback):
    """Counts the training batches a fit actually runs (a resume must not rerun finished ones)."""

    def __init__(self) -> None:
        self.n = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.n += 1


def test_teacher_is_frozen_in_eval_and_bit_identical_after_fit(tmp_path, tiny_data):
    teacher, student = tiny_bert(seed=0), tiny_bert(layers=2, seed=1)
    student.eval()  # like from_pretrained: the module must switch it to train mode itself
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = DistillationModule(student, teacher, {"kd": SoftTargetKL(), "ce": HardCE()})
    recorder = ModeRecorder(module)
    _trainer(tmp_path, callbacks=[recorder], limit_val_batches=0).fit(module, datamodule=tiny_data)
    steps = len(tiny_data.train_dataloader())
    assert recorder.calls == {"teacher": steps, "student": steps}  # one forward of each per step
    assert recorder.teacher_modes and not any(recorder.teacher_modes) and not any(recorder.dropout_modes)
    assert all(recorder.student_modes)
    # the teacher runs under no_grad: no autograd graph (memory) for a model that is never updated
    assert len(recorder.grad_enabled["teacher"]) == steps and not any(recorder.grad_enabled["teacher"])
    assert all(recorder.grad_enabled["student"])  # the hook sees grad mode: the student's forward records it
    assert recorder.kwargs["teacher"][0] == [] and recorder.kwargs["student"][0] == []  # no hidden states asked for
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad for p in teacher.parameters())


def test_hidden_states_are_requested_only_when_a_loss_needs_them(tmp_path, tiny_data):
    class HiddenMSE(DistillationLoss):
        name = "test_hidden_mse"
        needs = frozenset({"hidden_states"})

        def forward(self, student, teacher, batch):
            return (student.hidden_states[-1].mean() - teacher.hidden_states[-1].mean()) ** 2

    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert(), {"h": HiddenMSE(), "ce": HardCE()})
    recorder = ModeRecorder(module)
    _trainer(tmp_path, callbacks=[recorder], limit_val_batches=0, max_steps=2).fit(module, datamodule=tiny_data)
    assert recorder.kwargs["teacher"][0] == ["output_hidden_states"] == recorder.kwargs["student"][0]


def test_optimizer_holds_only_student_parameters(tiny_data):
    teacher, student = tiny_bert(), tiny_bert(layers=2, seed=1)
    module = DistillationModule(student, teacher)
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in student.parameters()}


def test_checkpoint_has_no_teacher_keys_and_resumes(tmp_path, tiny_data):
    teacher = tiny_bert()
    module = DistillationModule(tiny_bert(layers=2, seed=1), teacher)
    trainer = _trainer(
        tmp_path,
        max_epochs=1,
        limit_val_batches=2,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(module, datamodule=tiny_data)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and not [k for k in ckpt["state_dict"] if k.startswith("teacher.")]
    assert any(k.startswith("student.") for k in ckpt["state_dict"])

    steps = len(tiny_data.train_dataloader())
    # resuming with the max already reached runs no step: the student is exactly the checkpoint's,
    # not its own (different) init
    restored = DistillationModule(tiny_bert(layers=2, seed=7), teacher)
    batches = BatchCounter()
    _trainer(tmp_path, max_epochs=1, limit_val_batches=2, callbacks=[batches]).fit(
        restored, datamodule=tiny_data, ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert batches.n == 0
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(restored.state_dict()[key], value), key

    # one more epoch continues from the checkpoint's epoch: it runs one epoch of steps, not two
    resumed = DistillationModule(tiny_bert(layers=2, seed=7), teacher)
    batches = BatchCounter()
    trainer2 = _trainer(tmp_path, max_epochs=2, limit_val_batches=2, callbacks=[batches])
    trainer2.fit(resumed, datamodule=tiny_data, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert batches.n == steps and trainer2.current_epoch == 2 and trainer2.global_step == 2 * steps


def test_loading_a_checkpoint_missing_student_keys_is_an_error():
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert())
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("teacher.")}
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError, match="missing"):
        module.load_state_dict(state)


def test_validation_logs_student_teacher_and_agreement(tmp_path, tiny_data):
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert())
    trainer = _trainer(tmp_path, max_epochs=2)
    calls = {"n": 0}
    module.teacher.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    trainer.fit(module, datamodule=tiny_data)
    logged = trainer.callback_metrics
    for key in (
        "val/student/f1",
        "val/student/acc",
        "val/teacher/f1",
        "val/teacher/acc",
        "val/agreement",
        "train/loss",
        "train/loss/kd",
        "train/loss/ce",
    ):
        assert key in logged, key
    train_steps = 2 * len(tiny_data.train_dataloader())
    assert calls["n"] == train_steps + len(tiny_data.val_dataloader())  # teacher validated once, then cached


def test_teacher_none_trains_on_labels_alone_and_refuses_teacher_losses(tmp_path, tiny_data):
    student = tiny_bert(layers=2, seed=1)
    module = DistillationModule(student, None)
    assert list(module.losses) == ["ce"]
    before = student.classifier.weight.clone()
    trainer = _trainer(tmp_path, limit_val_batches=1)
    trainer.fit(module, datamodule=tiny_data)
    assert not torch.equal(before, student.classifier.weight)
    assert "val/student/f1" in trainer.callback_metrics and "val/teacher/f1" not in trainer.callback_metrics
    with pytest.raises(ValueError, match=r"\['kd'\] need a teacher"):
        DistillationModule(tiny_bert(layers=2), None, {"kd": SoftTargetKL()})


@pytest.mark.parametrize(("bad", "shown"), [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_non_finite_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(bad, shown, tmp_path, tiny_data):
    class ExplodesAtStep3(DistillationLoss):
        name = "test_explodes"
        uses_teacher = False

        def forward(self, student, teacher, batch):
            self.calls = getattr(self, "calls", 0) + 1
            return student.logits.sum().abs() * 0.0 + (bad if self.calls == 3 else 0.0)

    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    module = DistillationModule(tiny_bert(layers=2, seed=1), None, {"ce": HardCE(), "boom": ExplodesAtStep3()})
    with pytest.raises(NonFiniteLossError, match=rf"loss term 'boom' is {shown} at global step 2"):
        _trainer(tmp_path, callbacks=[ckpt_cb], limit_val_batches=0).fit(module, datamodule=tiny_data)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)  # intact and loadable
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
