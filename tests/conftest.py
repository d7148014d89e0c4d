"""Shared fixtures: tiny models built from configs, the packaged tokenizer, Hydra composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from transformers import BertConfig, BertForSequenceClassification

from litdistill.core.conf import config_dir
from litdistill.models.loading import packaged_minilm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tokenizer_dir() -> str:
    return packaged_minilm()


def tokenizer_with_renamed_ids(source: str, target: Path) -> Path:
    """A copy of the tokenizer at ``source`` whose ids 1000 and 1001 are renamed ``[UNUSED_A]``/``[UNUSED_B]``."""
    import json
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx"))
    vocab = (target / "vocab.txt").read_text().splitlines()
    vocab[1000], vocab[1001] = "[UNUSED_A]", "[UNUSED_B]"
    (target / "vocab.txt").write_text("\n".join(vocab) + "\n")
    fast = target / "tokenizer.json"
    if fast.exists():
        data = json.loads(fast.read_text())
        model_vocab = data["model"]["vocab"]
        for token, i in list(model_vocab.items()):
            if i in (1000, 1001):
                del model_vocab[token]
        model_vocab["[UNUSED_A]"], model_vocab["[UNUSED_B]"] = 1000, 1001
        fast.write_text(json.dumps(data))
    return target


def tiny_bert(
    layers: int = 4, hidden: int = 32, seed: int = 0, num_labels: int = 2, dropout: float = 0.1
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


@pytest.fixture
def compose_train(tmp_path: Path):
    """Compose the train config like the CLI would, with outputs and caches under tmp_path."""

    def _compose(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            if "paths" in cfg:
                cfg.paths.output_dir = str(tmp_path / "out")
                cfg.paths.cache_dir = str(tmp_path / "cache")
            del cfg["hydra"]
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def tiny_data(tmp_path: Path, tokenizer_dir: str):
    """A small labelled drug-event dataset as CSV files, wrapped in the real DataModule."""
    from litdistill.data import TextClassificationDataModule
    from litdistill.data.synthetic import make_drug_event_dataset

    files = make_drug_event_dataset(str(tmp_path / "data"), n_train=64, n_val=16, n_test=16, seed=0)
    return TextClassificationDataModule(tokenizer=tokenizer_dir, data_files=files, max_length=24, batch_size=8)
