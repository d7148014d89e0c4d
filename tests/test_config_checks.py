"""Typed config nodes refuse a wrong type or an unknown key when the config is composed; the rules of
config/checks.py refuse a bad value before anything is loaded, naming the key, the value and what is valid."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from litdistill.config.checks import check_config
from litdistill.config.schema import SCHEMAS

REPO = Path(__file__).resolve().parents[1]


def litdistill(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """The real command, its outputs and caches under ``tmp_path``, offline."""
    env = {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"),
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(["litdistill", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("report.threads=two", "report.threads"),
        ("export.onnx=maybe", "export.onnx"),
        ("teacher_finetune.max_steps=many", "teacher_finetune.max_steps"),
        ("cache=use", None),  # composes: the schema takes the group's values
        ("cache.k=x", "cache.k"),
    ],
)
def test_a_wrong_type_is_refused_at_compose_naming_the_full_key(compose_train, override, key):
    if key is None:
        assert compose_train([override]).cache.mode == "use"
        return
    with pytest.raises(ConfigCompositionException) as error:
        compose_train([override])
    assert f"full_key: {key}" in str(error.value.__cause__)


def test_an_unknown_key_of_a_typed_node_is_refused(compose_train):
    with pytest.raises(ConfigCompositionException, match="report.thread"):
        compose_train(["report.thread=2"])
    with pytest.raises(ValueError, match=r"report.thread is not a key of report; valid keys: \['disk_size'"):
        check_config(compose_train(["+report.thread=2"]))  # Hydra's + adds it past the schema: the checks refuse


def test_every_typed_node_of_the_default_config_matches_its_schema(compose_train):
    """The shipped YAML and the dataclasses agree: every schema key is set, and nothing else is."""
    cfg = compose_train([])
    for node, schema in SCHEMAS.items():
        assert set(cfg[node]) == set(schema.__dataclass_fields__), node


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=regression"], "task='regression' is not valid; valid values: ['classification', 'causal_lm']"),
        (["report.threads=0"], "report.threads=0 is not valid; it must be a number >= 1"),
        (["report.repeats=-1"], "report.repeats=-1 is not valid"),
        (["export.check_batches=0"], "export.check_batches=0 is not valid"),
        (["teacher_finetune.max_steps=0"], "teacher_finetune.max_steps=0 is not valid"),
        (["teacher_finetune.lr=0"], "teacher_finetune.lr=0.0 is not valid; it must be > 0"),
        (["teacher_finetune.warmup_ratio=1.0"], "teacher_finetune.warmup_ratio=1.0 is not valid"),
        (["teacher_finetune.max_epochs=0"], "teacher_finetune.max_epochs=0 is not valid"),
        (["report.seeds=0"], "report.seeds=0 is not valid; it must be a number >= 1"),
        (["report.seeds=3", "report.metric=perplexity"], "report.metric (with report.seeds > 1)='perplexity'"),
        (["report.seeds=3", "trainer=ddp_cpu"], "report.seeds=3 with trainer.devices=2"),
        (["data.label_fraction=0"], "data.label_fraction=0: must be a number in (0, 1]"),
        (["data.label_fraction=0.5", "teacher=none"], "rows without a label need a teacher to score them"),
        (["augment=neighbours", "task=causal_lm", "data=sft_files"], "apply to classification data"),
        (["cache=use", "cache.dtype=float8"], "cache.dtype='float8' is not valid; valid values: ['float16'"),
        (["cache=use", "cache.codec=zip"], "cache.codec='zip' is not valid; valid values: ['raw', 'packed']"),
        (["cache=use", "cache.k=0"], "cache.k=0 is not valid"),
        (["data.batch_size=0"], "data.batch_size=0 is not valid; it must be a number >= 1"),
        (["data.max_length=0"], "data.max_length=0 is not valid; it must be a number >= 1"),
        (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 with trainer.max_steps=-1 never ends"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not valid"),
        (["resume=maybe"], "resume='maybe'; valid: false, true"),
        (["teacher_placement=both"], "teacher_placement='both'; valid: ['shard', 'replicate']"),
    ],
)
def test_each_rule_names_the_key_the_value_and_what_is_valid(compose_train, overrides, message):
    with pytest.raises(ValueError) as error:
        check_config(compose_train(overrides))
    assert message in str(error.value)


def test_the_shipped_recipes_pass_every_rule(compose_train):
    for overrides in (
        [],
        ["experiment=tiny"],
        ["experiment=tiny_causal"],
        ["trainer.max_epochs=-1", "trainer.max_steps=10"],
    ):
        check_config(compose_train(overrides))


def test_the_cli_refuses_before_any_model_loads_and_writes_no_run(tmp_path):
    """Through the real command: the refusal names the key, and no output or cache appears."""
    for args, message in (
        (["report.threads=two"], "full_key: report.threads"),
        (["data.batch_size=0"], "data.batch_size=0 is not valid"),
        (["+trainer.strategy=foo"], "trainer: ValueError: You selected an invalid strategy name: `strategy='foo'`"),
        *(
            [(["trainer=ddp"], "trainer: MisconfigurationException: No supported gpu backend found!")]
            if not torch.cuda.is_available()
            else []
        ),
    ):
        proc = litdistill(args, tmp_path)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "cache").exists()  # no data written, no teacher fine-tuned


def test_the_generate_command_types_its_settings(compose_train):
    cfg = compose_train(["input.path=prompts.jsonl"], config_name="generate")
    assert cfg.generation.max_tokens == 512 and cfg.input.path == "prompts.jsonl"
    with pytest.raises(ConfigCompositionException) as error:
        compose_train(["generation.max_tokens=lots"], config_name="generate")
    assert "full_key: generation.max_tokens" in str(error.value.__cause__)


def test_a_bad_cut_or_a_small_teacher_vocabulary_is_refused_before_the_teacher_is_fine_tuned(tmp_path):
    """The teacher is loaded (from its config: tiny), checked, and refused before any fine-tuning step."""
    for args, message in (
        (
            ["student.layers=[0,7]"],
            "student.layers=[0, 7], student.every=None: layer indices [7] out of range: "
            "the teacher has 4 layers (0..3)",
        ),
        (
            ["teacher.config.vocab_size=1000"],
            "the teacher's embedding has vocab_size=1000 rows, but the data tokenizer",
        ),
    ):
        proc = litdistill(["experiment=tiny", *args], tmp_path)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "cache" / "teachers").exists()  # no fine-tuned teacher was written


def test_a_key_like_value_in_a_new_training_override_is_refused_before_hydra_writes_anything(tmp_path):
    pasted = "sk-" + "a1B2c3D4" * 4
    proc = litdistill(["experiment=tiny", f"+foo={pasted}"], tmp_path)
    assert proc.returncode == 2 and "the value given to foo looks like an API key" in proc.stderr
    assert pasted not in proc.stdout + proc.stderr and not (tmp_path / "outputs").exists()
