"""Exact mid-epoch resume on the causal-LM / SFT data path (the classification twin: test_fault_tolerance.py)."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tests.killer import KillAt
from transformers import LlamaConfig, LlamaForCausalLM

from litdistill import DistillationModule
from litdistill.data.resumable import ResumableSampler
from litdistill.data.sft import SFTDataModule
from litdistill.data.token_counts import StepTokenCounts
from litdistill.losses import ForwardKL, HardCE
from litdistill.training.checkpointing import AtomicCheckpointIO
from litdistill.training.fault_tolerance import FaultTolerance

BATCHES_PER_EPOCH = 8  # 32 training examples, batch size 4


def tiny_llama(layers: int, seed: int) -> LlamaForCausalLM:
    """A tiny Llama on the packaged BERT vocabulary, attention dropout on: the RNG state matters."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        attention_dropout=0.1,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory):
    from litdistill.data.synthetic import make_sft_dataset

    return make_sft_dataset(str(tmp_path_factory.mktemp("sft")), n_train=32, n_val=8, n_test=8, seed=0)


def sft_data(files, tokenizer_dir) -> SFTDataModule:
    return SFTDataModule(tokenizer=tokenizer_dir, data_files=files, max_length=32, batch_size=4)


def _fit(tmp_path, data, callbacks, ckpt_path=None, accumulate=1) -> DistillationModule:
    L.seed_everything(0)
    module = DistillationModule(
        tiny_llama(1, seed=1),
        tiny_llama(2, seed=0),
        task="causal_lm",
        losses={"kd": ForwardKL(weight=0.5), "ce": HardCE(weight=0.5)},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        accumulate_grad_batches=accumulate,
        plugins=[AtomicCheckpointIO()],
        callbacks=[FaultTolerance(dirpath=str(tmp_path / "ckpt")), *callbacks],
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)
    return module


@pytest.fixture(scope="module")
def references(sft_files, tokenizer_dir, tmp_path_factory):
    """Uninterrupted 2-epoch runs, per accumulation factor (made on first use)."""
    data, done = sft_data(sft_files, tokenizer_dir), {}

    def reference(accumulate: int) -> dict[str, torch.Tensor]:
        if accumulate not in done:
            module = _fit(tmp_path_factory.mktemp(f"reference{accumulate}"), data, [], accumulate=accumulate)
            done[accumulate] = module.student.state_dict()
        return done[accumulate]

    return data, reference


def _stop_and_resume(tmp_path, data, kill, step, accumulate):
    with pytest.raises(SIGTERMException):
        _fit(tmp_path, data, [KillAt(**kill)], accumulate=accumulate)
    last = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == step  # and the DataModule's position within the epoch:
    assert checkpoint[SFTDataModule.__qualname__]["batches"] == step * accumulate % BATCHES_PER_EPOCH
    return _fit(tmp_path, data, [], ckpt_path=last, accumulate=accumulate)


# ---- the data position ---------------------------------------------------------------------------
def test_sft_order_resumes_at_the_next_batch_also_under_the_token_count_wrapper(sft_files, tokenizer_dir):
    data = sft_data(sft_files, tokenizer_dir)
    data.setup("fit")
    data.trainer = SimpleNamespace(accumulate_grad_batches=2)  # what train_dataloader reads to wrap
    reference = data.train_dataloader()
    assert isinstance(reference, StepTokenCounts) and isinstance(reference.sampler, ResumableSampler)
    reference.sampler.set_epoch(1)  # what Lightning does each epoch, through the wrapper
    epoch1 = list(reference)
    reference.sampler.set_epoch(0)
    assert not torch.equal(next(iter(reference))["input_ids"], epoch1[0]["input_ids"])  # epochs are reshuffled

    data.load_state_dict({"epoch": 1, "batches": 2, "batch_size": 4})
    resumed = data.train_dataloader()
    assert len(resumed) == len(reference) == BATCHES_PER_EPOCH  # Lightning counts the skipped batches itself
    for got, want in zip(resumed, epoch1[2:], strict=True):
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["num_tokens_in_step"], want["num_tokens_in_step"])  # steps still line up
    restarted = data.train_dataloader()  # consumed: a later fit starts at the epoch's first batch
    restarted.sampler.set_epoch(1)
    assert torch.equal(next(iter(restarted))["input_ids"], epoch1[0]["input_ids"])

    # negative control: without the stored state the same resumed loader replays other batches
    data.load_state_dict({})
    stateless = data.train_dataloader()
    stateless.sampler.set_epoch(1)
    assert not torch.equal(next(iter(stateless))["input_ids"], epoch1[2]["input_ids"])


# ---- exact resume, in process --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kill", "step", "accumulate"), [({"step": 11}, 11, 1), ({"sig": "SIGINT", "step": 3}, 3, 1), ({"step": 5}, 5, 2)]
)
def test_a_stopped_and_resumed_causal_fit_matches_an_uninterrupted_one(kill, step, accumulate, tmp_path, references):
    """Mid-epoch SIGTERM (epoch 1), Ctrl+C (epoch 0), and SIGTERM mid-epoch with accumulation (token counts)."""
    data, reference = references
    expected = reference(accumulate)
    resumed = _stop_and_resume(tmp_path, data, kill, step, accumulate)
    assert expected.keys() == resumed.student.state_dict().keys()
    for name, tensor in resumed.student.state_dict().items():
        assert torch.equal(expected[name], tensor), name


def test_negative_control_a_resume_without_the_data_position_diverges(tmp_path, references, monkeypatch):
    """The same stop and resume, the DataModule's stored position ignored: the weights are no longer equal."""
    data, reference = references
    expected = reference(1)
    monkeypatch.setattr(SFTDataModule, "load_state_dict", lambda self, state: self._resume.clear())
    resumed = _stop_and_resume(tmp_path, data, {"step": 11}, 11, 1)
    differing = [
        name for name, tensor in resumed.student.state_dict().items() if not torch.equal(expected[name], tensor)
    ]
    assert differing  # so the equality above is evidence that the order was restored
