"""Vocabulary and label-space checks name exactly what differs."""

from __future__ import annotations

import pytest
from tests.conftest import tiny_bert, tokenizer_with_renamed_ids
from transformers import AutoTokenizer

from litdistill.models.compatibility import (
    IncompatibleModelsError,
    check_output_spaces,
    check_student_tokenizer,
    check_tokenizers,
)


def test_same_tokenizer_passes(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    check_tokenizers(tok, AutoTokenizer.from_pretrained(tokenizer_dir))


def test_vocabulary_mismatch_names_both_vocabularies_and_first_differing_ids(tmp_path, tokenizer_dir):
    other = tokenizer_with_renamed_ids(tokenizer_dir, tmp_path / "other_tok")
    teacher_tok, student_tok = AutoTokenizer.from_pretrained(tokenizer_dir), AutoTokenizer.from_pretrained(other)
    with pytest.raises(IncompatibleModelsError) as err:
        check_tokenizers(teacher_tok, student_tok)
    message = str(err.value)
    assert str(tokenizer_dir) in message and str(other) in message
    assert "id 1000: teacher" in message and "'[UNUSED_A]'" in message and "sequence-level" in message


def test_pretrained_student_tokenizer_must_match_the_data_tokenizer(tmp_path, tokenizer_dir):
    data_tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    check_student_tokenizer(str(tokenizer_dir), data_tok)  # same vocabulary: passes
    other = tokenizer_with_renamed_ids(tokenizer_dir, tmp_path / "other_tok")
    with pytest.raises(IncompatibleModelsError) as err:
        check_student_tokenizer(str(other), data_tok)
    message = str(err.value)
    assert f"student's tokenizer {str(other)!r}" in message and f"data tokenizer {str(tokenizer_dir)!r}" in message
    assert "id 1000: student '[UNUSED_A]'" in message and f"tokenizer={other}" in message


def test_a_student_saved_without_a_tokenizer_is_let_through(tmp_path, tokenizer_dir):
    weights_only = tmp_path / "weights_only"
    tiny_bert().save_pretrained(weights_only)
    check_student_tokenizer(str(weights_only), AutoTokenizer.from_pretrained(tokenizer_dir))


def test_label_space_mismatch():
    with pytest.raises(IncompatibleModelsError, match="teacher has 2 labels, student 3"):
        check_output_spaces(tiny_bert(num_labels=2), tiny_bert(num_labels=3), "classification")
    teacher, student = tiny_bert(), tiny_bert()
    teacher.config.vocab_size = 30000
    with pytest.raises(IncompatibleModelsError, match="30000 tokens, student logits 30522"):
        check_output_spaces(teacher, student, "causal_lm")
