"""Augmentation builds a transfer set: real tokenizers, a real (tiny) masked LM, the packaged MiniLM's
embeddings; deterministic per seed, cached, refused when the model reads another vocabulary."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from litdistill.data import TextClassificationDataModule
from litdistill.data.augment import EmbeddingNeighbours, MaskedLMReplacement, augmented_texts
from litdistill.data.synthetic import make_drug_event_dataset
from litdistill.data.transfer import UNLABELLED
from litdistill.models.loading import load_tokenizer, packaged_minilm

TEXTS = [
    "The patient developed severe rash after starting lithium.",
    "Warfarin was effective in controlling atrial fibrillation.",
    "No seizures were observed during treatment.",
]


@pytest.fixture(scope="module")
def neighbours():
    return EmbeddingNeighbours(packaged_minilm(), n=3, rate=0.3, top_k=5)


def test_embedding_neighbours_are_whole_words_near_the_original(neighbours):
    tok = neighbours.tokenizer
    near = neighbours.neighbours(tok.convert_tokens_to_ids("doctor"))
    assert len(near) == 5 and "doctor" not in near
    assert all(word.isalpha() and not word.startswith("##") for word in near)
    assert {"physician", "doctors", "nurse", "dr"} & set(near), near  # MiniLM's embeddings place them close


def test_variants_change_words_keep_the_rest_and_are_a_function_of_the_seed(neighbours):
    variants = neighbours.variants(TEXTS[0], random.Random("7:0"))
    assert len(variants) == 3
    for variant in variants:
        assert variant != TEXTS[0] and variant.endswith(".")
        original, changed = TEXTS[0].rstrip(".").split(), variant.rstrip(".").split()
        assert len(original) == len(changed)  # one word for one word
        assert sum(a != b for a, b in zip(original, changed)) >= 1
        assert changed[0][0].isupper()  # capitalisation kept
    assert neighbours.variants(TEXTS[0], random.Random("7:0")) == variants
    assert neighbours.variants(TEXTS[0], random.Random("8:0")) != variants


class Counting(EmbeddingNeighbours):
    calls = 0

    def variants(self, text, rng):
        Counting.calls += 1
        return super().variants(text, rng)


def test_augmented_texts_are_new_deterministic_and_cached(tmp_path):
    augmenter = Counting(packaged_minilm(), n=2, rate=0.3, top_k=5)
    made = augmented_texts(augmenter, TEXTS, seed=1, cache_dir=tmp_path)
    assert Counting.calls == 3
    assert made and {i for i, _ in made} <= {0, 1, 2}
    texts = [t for _, t in made]
    assert len(set(texts)) == len(texts) and not set(texts) & set(TEXTS)
    [cached] = list(tmp_path.glob("*.json"))
    assert [tuple(x) for x in json.loads(cached.read_text())] == made
    again = augmented_texts(augmenter, TEXTS, seed=1, cache_dir=tmp_path)
    assert again == made and Counting.calls == 3  # read from the cache: no variant made again
    other = augmented_texts(augmenter, TEXTS, seed=2, cache_dir=tmp_path)
    assert other != made and Counting.calls == 6 and len(list(tmp_path.glob("*.json"))) == 2


@pytest.mark.parametrize("key, value", [("n", 0), ("rate", 0.0), ("rate", 1.5), ("top_k", 0)])
def test_bad_augmentation_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"augment.{key}={value}"):
        EmbeddingNeighbours(packaged_minilm(), **{key: value})


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A real BertForMaskedLM (random, 2 layers) with the packaged MiniLM's tokenizer, saved as a hub folder."""
    path = tmp_path_factory.mktemp("mlm")
    tok = load_tokenizer(packaged_minilm())
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_masked_lm_replacement_samples_vocabulary_words_at_the_masked_positions(tiny_mlm):
    mlm = MaskedLMReplacement(tiny_mlm, n=2, rate=0.5, top_k=5)
    variants = mlm.variants(TEXTS[1], random.Random("3:1"))
    assert len(variants) == 2 and all("[MASK]" not in v for v in variants)
    assert any(v != TEXTS[1] for v in variants)
    for v in variants:
        assert len(v.split()) == len(TEXTS[1].split())
    assert mlm.variants(TEXTS[1], random.Random("3:1")) == variants


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A byte-level BPE tokenizer trained here: another vocabulary than the data's WordPiece."""
    path = tmp_path_factory.mktemp("bpe")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<mask>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", mask_token="<mask>")
    fast.save_pretrained(path)
    return str(path)


def test_an_augmenting_model_with_another_vocabulary_is_refused_before_it_loads(bpe_folder, tmp_path):
    files = make_drug_event_dataset(str(tmp_path / "d"), n_train=20, n_val=4, n_test=4, seed=0)
    dm = TextClassificationDataModule(
        tokenizer=packaged_minilm(), data_files=files, augment=MaskedLMReplacement(bpe_folder, n=1)
    )
    with pytest.raises(ValueError, match=r"augment.source=.*bpe.*its tokenizer \(\d+ entries\) differs from the data"):
        dm.setup("fit")
    assert dm.augment._model is None  # refused on the tokenizer alone: the model was never loaded


def test_the_data_module_adds_augmented_rows_without_labels_from_the_labelled_text_only(tmp_path):
    files = make_drug_event_dataset(str(tmp_path / "d"), n_train=30, n_val=4, n_test=4, seed=0)
    augment = EmbeddingNeighbours(packaged_minilm(), n=2, rate=0.3, top_k=5)
    dm = TextClassificationDataModule(
        tokenizer=packaged_minilm(),
        data_files=files,
        label_fraction=0.2,
        augment=augment,
        augment_cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    counts = dm.transfer_counts
    assert counts.labelled == 6 and counts.hidden_labels == 24 and 6 <= counts.augmented <= 12
    train = dm.raw_splits()["train"]
    labels, texts = train["label"], train["text"]
    assert labels[30:] == [UNLABELLED] * counts.augmented
    labelled_text = {t for t, label in zip(texts[:30], labels[:30]) if label != UNLABELLED}
    # every augmented row is one word-for-word edit of a labelled sentence
    for text in texts[30:]:
        words = text.split()
        assert any(
            len(words) == len(s.split()) and sum(a != b for a, b in zip(words, s.split())) >= 1 for s in labelled_text
        )
