"""In-process fault tolerance: reproducible data order, exact resume, graceful stops, atomic writes, safe loggers."""

from __future__ import annotations

import logging
import os
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tests.conftest import tiny_bert
from tests.killer import KillAt

import litdistill.core.io
from litdistill import DistillationModule
from litdistill.data.resumable import ResumableSampler
from litdistill.models.saving import export_student
from litdistill.reporting.tracking import log_run
from litdistill.training.checkpointing import AtomicCheckpointIO
from litdistill.training.fault_tolerance import FaultTolerance
from litdistill.training.safe_logger import guard_logger


# ---- data order -----------------------------------------------------------------------------
def test_order_is_a_function_of_seed_and_epoch_and_ranks_split_it():
    data = list(range(20))
    first = list(ResumableSampler(data, seed=3))
    assert first == list(ResumableSampler(data, seed=3)) and sorted(first) == data
    sampler = ResumableSampler(data, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != first
    ranks = [list(ResumableSampler(data, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [i for pair in zip(*ranks) for i in pair] == first  # what one process sees, batch by batch


def test_resume_skips_what_was_trained_on_once():
    sampler = ResumableSampler(list(range(20)), seed=0, resume={"epoch": 0, "samples": 8})
    full = list(ResumableSampler(list(range(20)), seed=0))
    assert list(sampler) == full[8:] and list(sampler) == full
    sampler.resume.update(epoch=0, samples=8)
    sampler.set_epoch(1)  # iterated only past the epoch it was for: dropped, nothing skipped
    assert len(list(sampler)) == 20 and not sampler.resume


def test_datamodule_state_puts_the_next_batch_first(tiny_data):
    tiny_data.setup("fit")
    reference = tiny_data.train_dataloader()
    reference.sampler.set_epoch(1)
    expected = list(reference)[2]
    tiny_data.load_state_dict({"epoch": 1, "batches": 2, "batch_size": 8})  # an earlier loader exists (finetune)
    resumed = tiny_data.train_dataloader()
    assert len(resumed) == len(reference)  # Lightning counts the skipped batches itself
    assert torch.equal(next(iter(resumed))["input_ids"], expected["input_ids"])
    assert len(list(tiny_data.train_dataloader())) == len(reference)  # consumed: a later fit starts at batch 0


# ---- exact resume, in process ----------------------------------------------------------------
def _fit(tmp_path, tiny_data, callbacks, ckpt_path=None) -> DistillationModule:
    L.seed_everything(0)
    module = DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert())  # dropout 0.1: the RNG matters
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        plugins=[AtomicCheckpointIO()],
        callbacks=[FaultTolerance(dirpath=str(tmp_path / "ckpt")), *callbacks],
    )
    trainer.fit(module, datamodule=tiny_data, ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)
    return module


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory, tokenizer_dir):
    from litdistill.data import TextClassificationDataModule
    from litdistill.data.synthetic import make_drug_event_dataset

    files = make_drug_event_dataset(str(tmp_path_factory.mktemp("data")), n_train=64, n_val=16, n_test=16, seed=0)
    data = TextClassificationDataModule(tokenizer=tokenizer_dir, data_files=files, max_length=24, batch_size=8)
    reference = _fit(tmp_path_factory.mktemp("reference"), data, [])  # uninterrupted: 2 epochs of 8 steps
    return data, reference.student.state_dict()


@pytest.mark.parametrize(
    ("kill", "step"), [({"step": 11}, 11), ({"sig": "SIGINT", "step": 3}, 3), ({"val_batch": 0, "val_epoch": 0}, 8)]
)
def test_a_stopped_and_resumed_fit_matches_an_uninterrupted_one(kill, step, tmp_path, resume_data):
    """Mid-epoch SIGTERM, Ctrl+C, and a stop during validation at the epoch's end."""
    data, reference = resume_data
    with pytest.raises(SIGTERMException):
        _fit(tmp_path, data, [KillAt(**kill)])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the stop
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == step
    resumed = _fit(tmp_path, data, [], ckpt_path=last)
    for (name, a), b in zip(reference.items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name


# ---- atomic writes ---------------------------------------------------------------------------
def _fail(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_a_failed_checkpoint_write_leaves_the_previous_file_intact(where, tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    good = path.read_bytes()
    monkeypatch.setattr(litdistill.core.io.os, where, _fail)
    with pytest.raises(OSError, match="No space"):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == good and torch.load(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left behind


def test_a_failed_export_leaves_the_previous_export_intact(tmp_path, tokenizer_dir, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    export_student(tiny_bert(layers=1, seed=1), tokenizer, tmp_path / "student")
    before = sorted(p.name for p in (tmp_path / "student").iterdir())
    monkeypatch.setattr(type(tokenizer), "save_pretrained", _fail)  # dies half-way: weights written, tokenizer not
    with pytest.raises(OSError):
        export_student(tiny_bert(layers=1, seed=2), tokenizer, tmp_path / "student")
    replace = os.replace
    monkeypatch.undo()
    calls = []
    second_fails = lambda a, b: calls.append(a) or (_fail() if len(calls) == 2 else replace(a, b))  # noqa: E731
    monkeypatch.setattr(litdistill.core.io.os, "replace", second_fails)
    with pytest.raises(OSError):  # the swap itself fails after the old export was moved aside
        export_student(tiny_bert(layers=1, seed=3), tokenizer, tmp_path / "student")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == before
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert torch.equal(reloaded.classifier.weight, tiny_bert(layers=1, seed=1).classifier.weight)


# ---- loggers ---------------------------------------------------------------------------------
class UnreachableLogger(Logger):
    name, version = "unreachable", "0"

    def log_metrics(self, metrics, step=None):
        raise OSError(122, "Disk quota exceeded")

    def log_hyperparams(self, params, *args, **kwargs):
        raise ConnectionError("wandb.ai unreachable")


def test_a_failing_logger_is_reported_and_training_goes_on(tmp_path, tiny_data, caplog):
    csv = guard_logger(CSVLogger(tmp_path, name="csv"))
    assert isinstance(csv, CSVLogger)  # code that looks for a CSVLogger still finds it
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        limit_val_batches=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
        logger=[guard_logger(UnreachableLogger()), csv],
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    with caplog.at_level(logging.WARNING, logger="litdistill.training.safe_logger"):
        trainer.fit(DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert()), datamodule=tiny_data)
    assert trainer.global_step == 4
    messages = [r.getMessage() for r in caplog.records]
    assert any("UnreachableLogger.log_metrics failed (OSError" in m and "training continues" in m for m in messages)
    assert sum("log_metrics failed" in m for m in messages) == 1  # reported once, not every step
    assert "train/loss" in (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()


REPORT = {"models": {"student": {"params_m": 1.0, "metrics": {"f1": 0.5}}}, "agreement": 0.9}
WANDB_CONFIG = {"task": "classification", "logger": {"wandb": {"log_model": False}}}


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B kept on this machine: offline, its files under tmp_path."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    import wandb

    return wandb


def test_unreachable_wandb_is_tried_once_reported_once_and_log_run_does_not_raise(
    tmp_path, tiny_data, caplog, monkeypatch, offline_wandb
):
    attempts = []

    def unreachable(**kwargs):
        attempts.append(kwargs)
        raise offline_wandb.errors.CommError("Run initialization has timed out after 90.0 sec.")

    monkeypatch.setattr(offline_wandb, "init", unreachable)
    wb = guard_logger(WandbLogger(project="litdistill-test", save_dir=str(tmp_path)))
    csv = guard_logger(CSVLogger(tmp_path, name="csv"))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        limit_val_batches=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
        logger=[wb, csv],
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    with caplog.at_level(logging.WARNING, logger="litdistill"):
        trainer.fit(DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert()), datamodule=tiny_data)
        assert log_run(trainer, REPORT, tmp_path, WANDB_CONFIG) == 0  # the report is written: W&B must not fail it
    assert trainer.global_step == 4
    assert len(attempts) == 1  # not once per log call (each can block ~90 s), nor again in log_run
    failures = [r.getMessage() for r in caplog.records if "WandbLogger" in r.getMessage()]
    assert len(failures) == 1 and "CommError" in failures[0] and "switched off" in failures[0], failures
    assert "train/loss" in (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()  # the others log on

    never_used = L.Trainer(
        accelerator="cpu",
        logger=WandbLogger(project="litdistill-test", save_dir=str(tmp_path)),
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with caplog.at_level(logging.WARNING, logger="litdistill"):  # its first wandb.init is log_run's own
        assert log_run(never_used, REPORT, tmp_path, WANDB_CONFIG) == 0
    assert len(attempts) == 2 and "W&B is unreachable (CommError" in caplog.records[-1].getMessage()


def test_a_failing_wandb_finish_does_not_fail_the_run(tmp_path, caplog, monkeypatch, offline_wandb):
    run = WandbLogger(project="litdistill-test", save_dir=str(tmp_path))
    trainer = L.Trainer(accelerator="cpu", logger=run, enable_progress_bar=False, default_root_dir=tmp_path)
    finish = offline_wandb.finish

    def unreachable(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(offline_wandb, "finish", unreachable)
    try:
        with caplog.at_level(logging.WARNING, logger="litdistill"):
            assert log_run(trainer, REPORT, tmp_path, WANDB_CONFIG) == 1  # logged; only the upload at the end failed
    finally:
        finish()
    assert any("could not finish the W&B run (ConnectionError" in r.getMessage() for r in caplog.records)
