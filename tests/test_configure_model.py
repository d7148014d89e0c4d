"""Models built in ``DistillationModule.configure_model`` from factories: once, inside the strategy's init context."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from tests.conftest import tiny_bert

from litdistill import DistillationModule, HardCE, SoftTargetKL
from litdistill.models.layer_subset import student_from_teacher
from litdistill.training.checkpointing import AtomicCheckpointIO


class Factory:
    """Builds a tiny BERT and records how often, and the default dtype it was built under."""

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.built, self.dtypes = kwargs, [], []

    def __call__(self) -> torch.nn.Module:
        self.dtypes.append(torch.get_default_dtype())
        with torch.random.fork_rng():  # tiny_bert seeds; leave the fit's dropout stream alone
            self.built.append(tiny_bert(**self.kwargs))
        return self.built[-1]


def _trainer(tmp_path, **kw) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        plugins=[AtomicCheckpointIO()],
    )
    return L.Trainer(**{**defaults, **kw})


def test_factories_build_once_in_configure_model_and_train_like_built_models(tmp_path, tiny_data):
    teacher_factory, student_factory = Factory(seed=0), Factory(layers=2, seed=1)
    module = DistillationModule(student_factory, teacher_factory, {"kd": SoftTargetKL(), "ce": HardCE()})
    assert module.student is None and module.teacher is None and not student_factory.built  # nothing built yet
    _trainer(tmp_path, max_steps=3).fit(module, datamodule=tiny_data)
    student, teacher = module.student, module.teacher
    assert student_factory.built == [student] and teacher_factory.built == [teacher]
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert not torch.equal(student.state_dict()["classifier.weight"], tiny_bert(layers=2, seed=1).classifier.weight)

    module.configure_model()  # idempotent: by hand, and on a second fit
    _trainer(tmp_path, max_steps=4).fit(module, datamodule=tiny_data)
    assert module.student is student and module.teacher is teacher and len(student_factory.built) == 1

    # the same run with models built up front reaches the same weights
    L.seed_everything(0)
    eager = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert(seed=0), {"kd": SoftTargetKL(), "ce": HardCE()})
    L.seed_everything(0)
    lazy = DistillationModule(Factory(layers=2, seed=1), Factory(seed=0), {"kd": SoftTargetKL(), "ce": HardCE()})
    for m in (eager, lazy):
        L.seed_everything(0)
        _trainer(tmp_path, max_steps=3).fit(m, datamodule=tiny_data)
    for (name, a), b in zip(eager.student.state_dict().items(), lazy.student.state_dict().values()):
        assert torch.equal(a, b), name


def test_factories_run_under_the_precision_init_context(tmp_path, tiny_data):
    """bf16-true: Lightning enters the precision's module-init context around configure_model, so the
    factories build in bf16 directly (an eager model would be built in float32 and converted)."""
    teacher_factory, student_factory = Factory(seed=0), Factory(layers=2, seed=1)
    module = DistillationModule(student_factory, teacher_factory)
    _trainer(tmp_path, max_steps=1, precision="bf16-true").fit(module, datamodule=tiny_data)
    assert teacher_factory.dtypes == [torch.bfloat16] and student_factory.dtypes == [torch.bfloat16]
    assert torch.get_default_dtype() == torch.float32  # the context ends with the hook
    assert {p.dtype for p in module.student.parameters()} == {torch.bfloat16}


def test_a_student_factory_taking_teacher_is_cut_from_the_built_teacher(tmp_path, tiny_data):
    teacher_factory = Factory(layers=4, seed=0)
    module = DistillationModule(partial(student_from_teacher, layers=[0, 3]), teacher_factory)
    module.configure_model()
    teacher = teacher_factory.built[0]
    assert module.student.config.num_hidden_layers == 2
    assert torch.equal(
        module.student.bert.encoder.layer[1].output.dense.weight, teacher.bert.encoder.layer[3].output.dense.weight
    )


def test_checkpoint_of_a_factory_module_resumes_into_a_new_one(tmp_path, tiny_data):
    module = DistillationModule(Factory(layers=2, seed=1), Factory(seed=0))
    trainer = _trainer(tmp_path, max_steps=2, max_epochs=-1)
    trainer.fit(module, datamodule=tiny_data)
    ckpt = tmp_path / "two.ckpt"
    trainer.save_checkpoint(ckpt)
    assert not [k for k in torch.load(ckpt, weights_only=False)["state_dict"] if k.startswith("teacher.")]

    resumed = DistillationModule(Factory(layers=2, seed=7), Factory(seed=0))  # different init: the checkpoint wins
    weights = {}

    class Capture(L.Callback):
        def on_train_start(self, trainer, pl_module):
            weights.update({k: v.clone() for k, v in pl_module.student.state_dict().items()})

    second = _trainer(tmp_path, max_steps=3, max_epochs=-1, callbacks=[Capture()])
    second.fit(resumed, datamodule=tiny_data, ckpt_path=ckpt, weights_only=False)
    assert second.global_step == 3
    for name, value in module.student.state_dict().items():
        assert torch.equal(weights[name], value), name
