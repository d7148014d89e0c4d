"""Gradient clipping: it bounds the gradient norm in a fit, and under FSDP it goes to the root FSDP unit."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from tests.conftest import tiny_bert
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from litdistill import DistillationModule
from litdistill.config.checks import check_scaling
from litdistill.training.clipping import clip_gradients
from litdistill.training.strategies import configure_strategy


def _norm(params) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


class GradNorms(L.Callback):
    """The total gradient norm before clipping (on_before_optimizer_step) and what the optimizer used."""

    def __init__(self) -> None:
        self.before, self.after = [], []

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.optimizers[0].register_step_post_hook(lambda *_: self.after.append(_norm(pl_module.parameters())))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append(_norm(pl_module.parameters()))


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_gradient_clip_val_bounds_the_total_gradient_norm(clip, tmp_path, tiny_data):
    norms = GradNorms()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        gradient_clip_val=clip,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[norms],
        default_root_dir=tmp_path,
    )
    trainer.fit(DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert()), datamodule=tiny_data)
    assert len(norms.before) == len(norms.after) == 3
    assert min(norms.before) > 1e-2  # so clipping at 1e-3 has something to do
    if clip is None:
        assert norms.after == norms.before
    else:
        assert max(norms.after) <= clip * (1 + 1e-4), norms.after


@pytest.fixture
def gloo_world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp_config_clips_by_norm_through_the_root_fsdp_unit(gloo_world_of_one, compose_train, monkeypatch):
    """trainer=fsdp keeps gradient_clip_val=1.0 (by norm). Lightning's FSDPPrecision refuses norm clipping;
    the module's configure_gradient_clipping calls the root unit's clip_grad_norm_ (a global norm) instead."""
    cfg = compose_train(["trainer=fsdp", "experiment=tiny", "teacher_finetune=null", "baseline=false"])
    check_scaling(cfg)
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.get("gradient_clip_algorithm") in (None, "norm")

    strategy = instantiate(cfg.trainer.strategy)
    teacher = instantiate(cfg.teacher)
    student = instantiate(cfg.student)(teacher=teacher)
    module = DistillationModule(student, teacher)
    configure_strategy(SimpleNamespace(strategy=strategy), student, teacher)
    # As FSDPStrategy._setup_model wraps it (no mixed precision on CPU)
    strategy.model = FSDP(
        module, sharding_strategy=strategy.sharding_strategy, device_id=torch.device("cpu"), **strategy.kwargs
    )
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, 1000, (4, 12)),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
    }
    strategy.model(**batch).loss.backward()
    assert _norm(student.parameters()) > 1e-2

    roots, clip_grad_norm = [], FSDP.clip_grad_norm_

    def spy(self, *args, **kwargs):
        roots.append(self)
        return clip_grad_norm(self, *args, **kwargs)

    monkeypatch.setattr(FSDP, "clip_grad_norm_", spy)
    # What Lightning's Trainer holds and passes (clip 1e-3 instead of 1.0, to see it act on these gradients).
    # Without the override, Lightning's clip_gradients would reach FSDPPrecision, which raises for "norm".
    module.trainer = trainer = SimpleNamespace(
        strategy=strategy,
        gradient_clip_val=1e-3,
        gradient_clip_algorithm=None,
        precision_plugin=FSDPPrecision(cfg.trainer.precision),
    )
    module.configure_gradient_clipping(
        module.configure_optimizers(), trainer.gradient_clip_val, trainer.gradient_clip_algorithm
    )
    assert roots == [strategy.model]
    assert _norm(student.parameters()) <= 1e-3 * (1 + 1e-4)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize(
    ("strategy", "clip", "algorithm"),
    [
        (FSDPStrategy(), 0.5, "value"),  # elementwise: correct on shards, Lightning's FSDPPrecision does it
        (FSDPStrategy(), None, None),  # no clipping
        (FSDPStrategy(), 0, "norm"),
        (SimpleNamespace(), 0.5, "norm"),  # any other strategy
    ],
)
def test_everything_but_fsdp_norm_clipping_is_left_to_lightning(strategy, clip, algorithm):
    deferred = []
    module = SimpleNamespace(
        trainer=SimpleNamespace(strategy=strategy), clip_gradients=lambda *a, **k: deferred.append((a, k))
    )
    clip_gradients(module, "optimizer", clip, algorithm)
    assert deferred == [(("optimizer",), {"gradient_clip_val": clip, "gradient_clip_algorithm": algorithm})]
