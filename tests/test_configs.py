"""Every shipped config composes (Hydra compose API), and config-time errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from litdistill.config.checks import check_config
from litdistill.core.conf import config_dir

CONF = config_dir()
# Groups that belong to a primary config other than train.yaml.
PRIMARY_OF_GROUP = {"teacher_api": "generate", "prompt": "generate"}
# Groups whose options are dicts of named entries, not one object.
PRIMARIES = sorted(p.stem for p in CONF.glob("*.yaml"))


def _options() -> list[tuple[str, str]]:
    return sorted(
        (d.name, f.stem)
        for d in CONF.iterdir()
        if d.is_dir() and d.name not in ("hydra", "sweep")
        for f in d.glob("*.yaml")
    )


@pytest.mark.parametrize(("group", "option"), _options())
def test_every_config_option_composes_and_resolves(group, option, compose_train):
    """Every interpolation resolves (``???`` values the user must set are allowed); compose_train
    registers the HydraConfig, so ``${hydra:...}`` resolves as in a real run."""
    primary = PRIMARY_OF_GROUP.get(group, "train")
    if primary not in PRIMARIES:
        pytest.skip(f"{primary}.yaml not shipped yet")
    # labels-only options (a hard-label loss, no teacher) run on every label, not the default's 5%
    labels_only = ["data.label_fraction=1.0"] if (group, option) in (("loss", "ce"), ("teacher", "none")) else []
    cfg = compose_train([f"{group}={option}", *labels_only], config_name=primary)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    if primary == "train":
        assert resolved["task"] in ("classification", "causal_lm")
        if (group, option) == ("trainer", "fsdp"):  # refused with the shipped fine-tune and baseline, by design
            cfg = compose_train([f"{group}={option}", "teacher_finetune=null", "baseline=false"])
        check_config(cfg)  # every shipped option passes the config rules


def test_models_take_num_labels_from_the_data_and_none_from_sft_data(compose_train):
    """SFT data has no labels: the classification teacher/student configs resolve num_labels to null."""
    cfg = compose_train(["data=files", "data.num_labels=3", "student=tiny_bert"])
    assert (cfg.teacher.num_labels, cfg.student.num_labels) == (3, 3)
    cfg = compose_train(["data=sft_files", "student=tiny_bert"])
    assert cfg.teacher.num_labels is None and cfg.student.num_labels is None and cfg.teacher.label_names is None


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_configs_compose_with_defaults(primary, compose_train):
    assert compose_train([], config_name=primary)


def test_override_any_key(compose_train):
    cfg = compose_train(
        ["loss=kd_ce", "loss.kd.temperature=4", "trainer.max_epochs=3", "student.layers=[0,2,4]", "student.every=null"]
    )
    assert cfg.loss.kd.temperature == 4 and cfg.trainer.max_epochs == 3 and list(cfg.student.layers) == [0, 2, 4]


def test_shipped_loss_configs_instantiate(compose_train):
    for option in sorted(p.stem for p in (CONF / "loss").glob("*.yaml")):
        cfg = compose_train([f"loss={option}"])
        for name, term in cfg.loss.items():
            loss = instantiate(term)
            assert loss.weight >= 0, (option, name)


def test_tiny_experiment_with_other_data_leaks_no_synthetic_sizes(compose_train):
    cfg = compose_train(
        [
            "experiment=tiny",
            "data=files",
            "data.data_files.train=a.csv",
            "data.data_files.validation=b.csv",
            "data.data_files.test=c.csv",
        ]
    )
    assert dict(cfg.data.data_files) == {"train": "a.csv", "validation": "b.csv", "test": "c.csv"}
    assert compose_train(["experiment=tiny"]).data.data_files.n_train == 128


def test_default_optimizer_is_fused_adamw_and_another_class_drops_the_flag(compose_train):
    import torch

    params = [torch.nn.Parameter(torch.randn(3, 2))]
    optimizer = instantiate(compose_train([]).optimizer)(params)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    params[0].grad = torch.ones(3, 2)
    optimizer.step()  # the fused kernel runs on CPU
    cfg = compose_train(["optimizer._target_=torch.optim.SGD", "~optimizer.fused", "~optimizer.weight_decay"])
    assert isinstance(instantiate(cfg.optimizer)(params), torch.optim.SGD)


@pytest.mark.parametrize("override", ["teacher=none", "~teacher"])
def test_no_teacher_composes(override, compose_train):
    cfg = compose_train([override, "student=tiny_bert", "tokenizer=x"])
    assert not cfg.get("teacher")


def test_configs_ship_inside_the_wheel():
    """The wheel carries conf/ as litdistill/conf so an installed package finds its configs anywhere."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"conf" = "litdistill/conf"' in text


def test_scaled_student_shrinks_a_teacher_built_from_a_config(compose_train):
    """student=scaled reads the teacher's config when the teacher has no name_or_path (experiment=tiny)."""
    cfg = compose_train(
        ["experiment=tiny", "student=scaled", "student.config.hidden_size=32", "student.config.intermediate_size=64"]
    )
    assert cfg.student.base is None
    teacher = instantiate(cfg.teacher)
    student = instantiate(cfg.student)(teacher=teacher)
    assert student.config.model_type == teacher.config.model_type == "bert"
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (2, 32)
    assert (
        student.config.vocab_size == teacher.config.vocab_size
        and student.config.num_labels == teacher.config.num_labels
    )
    assert (
        student.config.max_position_embeddings == teacher.config.max_position_embeddings
    )  # the rest comes from the teacher
