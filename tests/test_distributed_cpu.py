"""The teacher under DDP and FSDP wrapping (a gloo world of one, on CPU), and mixed precision on CPU."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.distributed as dist
from tests.conftest import tiny_bert
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.nn.parallel import DistributedDataParallel as DDP

from litdistill import DistillationModule
from litdistill.training.strategies import block_classes


@pytest.fixture
def gloo_world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "input_ids": torch.randint(0, 1000, (4, 12)),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
    }


def test_ddp_buckets_hold_only_the_student_and_the_teacher_gets_no_gradients(gloo_world_of_one):
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert())
    wrapped = DDP(module)  # what Lightning's DDPStrategy does; the teacher was frozen in __init__
    synced = wrapped._get_ddp_logging_data()
    student = list(module.student.parameters())
    assert synced["num_parameter_tensors"] == len(student)
    assert synced["total_parameter_size_bytes"] == sum(p.numel() * p.element_size() for p in student)
    total, _, _ = module.loss_terms(_batch())
    total.backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert all(p.grad is not None for p in student)


@pytest.mark.parametrize("placement", ["shard", "replicate"])
def test_fsdp_wrapping_keeps_the_optimizer_on_the_student_only(placement, gloo_world_of_one):
    """What FSDPStrategy + configure_strategy do: blocks wrapped, use_orig_params, teacher sharded or ignored;
    then configure_optimizers (self.named_parameters()) runs on the wrapped module."""
    teacher, student = tiny_bert(), tiny_bert(layers=2, seed=1)
    module = DistillationModule(student, teacher)
    replicate = placement == "replicate"
    FSDP(
        module,
        auto_wrap_policy=ModuleWrapPolicy(block_classes(student, None if replicate else teacher)),
        use_orig_params=True,
        device_id=torch.device("cpu"),
        ignored_modules=[teacher] if replicate else None,
    )
    assert any(isinstance(m, FSDP) for m in student.modules())
    assert any(isinstance(m, FSDP) for m in teacher.modules()) is not replicate
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in student.parameters()}
    names = [n for n, p in module.named_parameters() if id(p) in in_optimizer]
    assert names and all(n.startswith("student.") for n in names)
    before = [p.detach().clone() for p in teacher.parameters()]
    total, _, _ = module.loss_terms(_batch())
    total.backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)])
def test_bf16_fits_on_cpu(precision, dtype, tmp_path, tiny_data):
    student = tiny_bert(layers=2, seed=1)
    before = student.classifier.weight.detach().clone()
    module = DistillationModule(student, tiny_bert())
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=tiny_data)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert student.classifier.weight.dtype == dtype  # mixed: fp32 master weights; true: bf16 weights
    assert not torch.equal(before.to(dtype), student.classifier.weight.detach())


def test_fsdp_student_is_gathered_whole_for_export(gloo_world_of_one, compose_train):
    """After an FSDP fit, rank 0 rebuilds plain models from the configs and loads the gathered student."""
    import copy
    from functools import partial
    from types import SimpleNamespace

    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    from litdistill.pipeline.builders import student_factory
    from litdistill.pipeline.fit import unsharded_models
    from litdistill.training.strategies import gather_full_student

    cfg = compose_train(["experiment=tiny"])
    teacher = instantiate(cfg.teacher)
    student = instantiate(cfg.student)(teacher=teacher)
    with torch.no_grad():
        student.classifier.weight.add_(1.0)  # "trained": differs from what the configs build
    expected = copy.deepcopy(student.state_dict())
    strategy = FSDPStrategy()
    strategy.model = FSDP(
        DistillationModule(student, teacher),
        use_orig_params=True,
        device_id=torch.device("cpu"),
        auto_wrap_policy=ModuleWrapPolicy(block_classes(student, teacher)),
    )
    gathered = gather_full_student(SimpleNamespace(strategy=strategy))
    assert gathered.keys() == expected.keys()
    fresh_teacher, plain = unsharded_models(partial(instantiate, cfg.teacher), student_factory(cfg), gathered)
    assert not any(isinstance(m, FSDP) for m in [*plain.modules(), *fresh_teacher.modules()])
    for name, value in plain.state_dict().items():
        assert torch.equal(value, expected[name]), name
