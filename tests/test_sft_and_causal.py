"""Causal-LM distillation: SFT data (chat template, prompt masking, truncation, packing), token
normalisation across accumulation, quantized teachers on CPU, and the tiny causal recipe's CLI."""

from __future__ import annotations

import json

import pytest
import torch
from tests.test_cli import only_run_dir, run_cli
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from litdistill.data.sft import SFTDataModule, collate, encode_example, pack
from litdistill.data.token_counts import StepTokenCounts, real_tokens
from litdistill.models.loading import load_pretrained, memory_footprint

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_prompt_tokens_are_masked_and_response_kept(tok):
    ex = encode_example(tok, "What causes rash?", "Penicillin can cause rash.", max_length=64)
    response = tok("Penicillin can cause rash.", add_special_tokens=False)["input_ids"]
    n_prompt = len(ex["input_ids"]) - len(response)
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == response == ex["input_ids"][n_prompt:]


def test_chat_template_is_used_when_the_tokenizer_has_one(tok):
    tok = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok.chat_template = CHAT_TEMPLATE
    ex = encode_example(tok, "hi there", "hello", max_length=64, system_prompt="be brief")
    prompt_text = tok.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab == -100])
    assert "< system > be brief" in prompt_text and "< assistant >" in prompt_text


def test_truncation_keeps_the_response_and_cuts_the_prompt_from_the_left(tok):
    long_prompt = " ".join(f"word{i}" for i in range(200))
    ex = encode_example(tok, long_prompt, "keep this answer", max_length=24)
    response = tok("keep this answer", add_special_tokens=False)["input_ids"]
    assert len(ex["input_ids"]) == 24 and ex["input_ids"][-len(response) :] == response
    assert tok.decode(ex["input_ids"][:2]).startswith("##") or "word199" in tok.decode(ex["input_ids"])


def test_packing_and_collate_keep_labels_and_mask_padding():
    examples = [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
        {"input_ids": [4, 5], "labels": [-100, 5]},
        {"input_ids": [6, 7, 8, 9], "labels": [-100, -100, 8, 9]},
    ]
    blocks = pack(examples, block=4)
    assert [b["input_ids"] for b in blocks] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert [b["labels"] for b in blocks] == [[-100, 2, 3, -100], [5, -100, -100, 8], [9]]
    batch = collate(blocks, pad_id=0)
    assert batch["input_ids"].tolist()[2] == [9, 0, 0, 0]
    assert batch["labels"].tolist()[2] == [9, -100, -100, -100] and batch["attention_mask"].tolist()[2] == [1, 0, 0, 0]


def test_missing_columns_are_named(tmp_path, tokenizer_dir):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(
        ValueError, match=r"\['prompt', 'response'\] not in the data; columns present: \['question', 'answer'\]"
    ):
        SFTDataModule(tokenizer_dir, data_files={"train": str(path)}).setup()


def test_step_token_counts_make_accumulated_loss_the_exact_token_mean():
    """sum_k loss_k / A over micro-batches equals the token mean of the whole step."""
    torch.manual_seed(0)
    batches = []
    for n_real in (3, 9):  # very uneven micro-batches
        labels = torch.full((1, 12), -100)
        labels[0, 1 : 1 + n_real] = torch.randint(0, 5, (n_real,))
        batches.append({"labels": labels, "values": torch.rand(1, 11)})
    tagged = list(StepTokenCounts(batches, accumulate=2))
    assert all(float(b["num_tokens_in_step"]) == 12 for b in tagged)
    from litdistill.losses import token_mean

    accumulated = sum(
        token_mean(b["values"].reshape(-1), (b["labels"][:, 1:] != -100).reshape(-1), b) / 2 for b in tagged
    )
    all_values = torch.cat([b["values"][b["labels"][:, 1:] != -100] for b in batches])
    assert accumulated.item() == pytest.approx(all_values.mean().item(), rel=1e-6)
    assert real_tokens(batches[0]) == {"num_tokens_in_step": 3}


@pytest.fixture(scope="module")
def saved_tiny_llama(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=256,
        )
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("quantization", ["8bit", "nf4"])
def test_quantized_teacher_loads_on_cpu_smaller_and_close_to_full_precision(quantization, saved_tiny_llama):
    full = load_pretrained(str(saved_tiny_llama), task="causal_lm")
    quant = load_pretrained(str(saved_tiny_llama), task="causal_lm", quantization=quantization)
    assert memory_footprint(quant) < 0.7 * memory_footprint(full)
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        p_full = full(input_ids=ids).logits.float().softmax(-1)
        p_quant = quant(input_ids=ids).logits.float().softmax(-1)
    tvd = 0.5 * (p_full - p_quant).abs().sum(-1).mean()
    assert tvd < 0.1, tvd


def test_unknown_quantization_is_refused(saved_tiny_llama):
    with pytest.raises(ValueError, match=r"unknown quantization 'int3'; valid: \['8bit', 'nf4', 'fp4'\]"):
        load_pretrained(str(saved_tiny_llama), task="causal_lm", quantization="int3")


def test_tiny_causal_recipe_end_to_end(tmp_path):
    run_cli(["experiment=tiny_causal", "trainer.accumulate_grad_batches=2"], tmp_path)
    report = json.loads((only_run_dir(tmp_path) / "report.json").read_text())
    assert report["task"] == "causal_lm" and report["metric"] == "token_acc"
    for name in ("teacher", "student", "baseline"):
        assert report["models"][name]["metrics"]["perplexity"] > 1.0
    assert 0.0 <= report["agreement"] <= 1.0
