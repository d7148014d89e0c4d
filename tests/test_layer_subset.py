"""Students made from a subset of the teacher's layers copy exactly those layers' weights."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from tests.conftest import tiny_bert
from transformers import LlamaConfig, LlamaForCausalLM

from litdistill.models.layer_subset import DEFAULT_EVERY, layer_stack, student_from_teacher


def _assert_copied(teacher, student, chosen):
    _, t_stack = layer_stack(teacher)
    _, s_stack = layer_stack(student)
    assert len(s_stack) == len(chosen)
    for s_index, t_index in enumerate(chosen):
        for (name, s_param), (_, t_param) in zip(
            s_stack[s_index].named_parameters(), t_stack[t_index].named_parameters()
        ):
            assert torch.equal(s_param, t_param), (s_index, t_index, name)
            assert s_param.data_ptr() != t_param.data_ptr()  # a copy, not shared storage


def test_bert_every_other_layer():
    teacher = tiny_bert(layers=6)
    student = student_from_teacher(teacher, every=2)
    _assert_copied(teacher, student, [0, 2, 4])
    assert student.config.num_hidden_layers == 3 and student.config.litdistill_teacher_layers == [0, 2, 4]
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert teacher.config.num_hidden_layers == 6  # the teacher is untouched


def test_llama_explicit_layers_generate_and_renumber_cache_slots():
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
        )
    )
    student = student_from_teacher(teacher, layers=[1, 3])
    _assert_copied(teacher, student, [1, 3])
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    ids = torch.randint(0, 64, (1, 5))
    out = student.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 8)


@pytest.mark.parametrize(
    ("layers", "every", "match"),
    [
        ([0, 9], None, r"out of range: the teacher has 4 layers"),
        ([2, 1], None, "strictly increasing"),
        ([0, 2], 2, "exactly one of"),
        (None, 0, "every must be >= 1"),
    ],
)
def test_bad_layer_choices_are_refused(layers, every, match):
    with pytest.raises(ValueError, match=match):
        student_from_teacher(tiny_bert(layers=4), layers=layers, every=every)


def test_neither_layers_nor_every_keeps_every_third_layer():
    teacher = tiny_bert(layers=6)
    assert DEFAULT_EVERY == 3
    student = student_from_teacher(teacher)
    _assert_copied(teacher, student, [0, 3])
    assert student.config.litdistill_teacher_layers == [0, 3]


def _student(cfg, teacher):
    return instantiate(cfg.student)(teacher=teacher)


@pytest.mark.parametrize(
    ("overrides", "chosen"),
    [
        (["student=from_teacher", "student.layers=[0,2,4]"], [0, 2, 4]),  # layers= alone, no every=null needed
        (
            ["student=from_teacher", "student.layers=[0,2,4]", "student.every=null"],
            [0, 2, 4],
        ),  # the old spelling still works
        (["student=from_teacher", "student.every=2"], [0, 2, 4]),
        (["student=from_teacher", "student.every=3"], [0, 3]),  # the README's description of the default run
        (["student=from_teacher"], [0, 3]),  # today's default: every third layer
        ([], [0, 3]),  # the default run
        (["experiment=tiny"], [0, 3]),
        (["experiment=distilbert_minilm"], [0, 2, 4]),
        (["experiment=ade_minilm"], [0, 3]),
    ],
)
def test_from_teacher_config_builds_the_chosen_layers(overrides, chosen, compose_train):
    cfg = compose_train(overrides)
    student = _student(cfg, tiny_bert(layers=6))
    assert student.config.litdistill_teacher_layers == chosen
    assert student.config.num_hidden_layers == len(chosen)


def test_from_teacher_config_refuses_layers_and_every_together(compose_train):
    cfg = compose_train(["student=from_teacher", "student.layers=[0,2,4]", "student.every=2"])
    with pytest.raises(ValueError, match="exactly one of layers= or every="):
        _student(cfg, tiny_bert(layers=6))
