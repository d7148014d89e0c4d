"""Hidden-state and hooked-feature losses: layer maps, metrics, masking, projections, hooks, CLI recipe."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import tiny_bert
from torch import nn

from litdistill import DistillationModule, HardCE, SoftTargetKL
from litdistill.core.outputs import ModelOutputs
from litdistill.losses import LOSSES, FeatureLoss, HiddenStateLoss
from litdistill.losses.features import resolve_layer_map
from litdistill.models.layer_subset import student_from_teacher
from litdistill.models.saving import export_student

REPO = Path(__file__).resolve().parents[1]


def _batch(b: int = 3, t: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [t, 4, 2][:b] + [t] * max(0, b - 3)
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in lengths])
    return {
        "input_ids": torch.randint(1000, 2000, (b, t), generator=g) * mask,
        "attention_mask": mask,
        "labels": torch.arange(b) % 2,
    }


# ---- layer maps ------------------------------------------------------------------------------------
def test_named_layer_maps():
    assert resolve_layer_map("uniform", 2, 6) == [(1, 3), (2, 6)]
    assert resolve_layer_map("uniform", 3, 4) == [(1, 2), (2, 3), (3, 4)]
    assert resolve_layer_map("uniform", 4, 4) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert resolve_layer_map("last", 2, 6) == [(2, 6)]
    assert resolve_layer_map("init", 2, 6, init=[0, 3]) == [(1, 1), (2, 4)]
    assert resolve_layer_map("auto", 2, 6, init=[0, 3]) == [(1, 1), (2, 4)]
    assert resolve_layer_map("auto", 2, 6) == [(1, 3), (2, 6)]
    assert resolve_layer_map("last", 2, 6, include_embeddings=True) == [(0, 0), (2, 6)]
    assert resolve_layer_map([[0, 0], [2, 5]], 2, 6) == [(0, 0), (2, 5)]
    assert resolve_layer_map([2, 6], 2, 6) == [(1, 2), (2, 6)]  # flat: one teacher layer per student layer


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([[1, 7]], r"out of range: the student has 2 layers, the teacher 6"),
        ([[3, 1]], r"out of range: the student has 2 layers, the teacher 6"),
        ([[-1, 1]], r"out of range"),
        ([1, 2, 3], r"lists 3 teacher layers, but the student has 2 layers, the teacher 6"),
        ([[1, 2, 3]], r"pair of layer numbers.*the student has 2 layers, the teacher 6"),
        ("init", r"needs a student built from the teacher's layers"),
    ],
)
def test_bad_layer_maps_name_both_layer_counts(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_layer_map(spec, 2, 6)


def test_layer_map_is_validated_at_module_construction_and_names_the_models():
    with pytest.raises(ValueError, match=r"pair \[1, 9\] is out of range: the student has 2 layers, the teacher 4"):
        DistillationModule(tiny_bert(layers=2, seed=1), tiny_bert(layers=4), {"h": HiddenStateLoss(layer_map=[[1, 9]])})
    with pytest.raises(ValueError, match="layer_map must be one of"):
        HiddenStateLoss(layer_map="every")  # config time
    with pytest.raises(ValueError, match="metric must be one of"):
        HiddenStateLoss(metric="l1")


def test_layer_maps_are_checked_before_teacher_finetuning_without_touching_the_run(compose_train):
    """train.py calls check_layer_maps before teacher_finetune: copies of the losses are set up against
    the unfinetuned teacher and a throwaway student; the RNG state and the losses themselves are unchanged."""
    from hydra.utils import instantiate

    from litdistill.pipeline.builders import build_losses, student_factory
    from litdistill.training.finetune import check_layer_maps

    cfg = compose_train(["experiment=tiny", "loss=distilbert"])
    teacher = instantiate(cfg.teacher)
    losses = build_losses(cfg.loss)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    check_layer_maps(losses, teacher, student_factory(cfg))  # the tiny student is a from_teacher student: fine
    assert torch.equal(torch.get_rng_state(), state) and losses["cos"].pairs is None
    bad = build_losses(compose_train(["experiment=tiny", "loss=distilbert", "loss.cos.layer_map=[[1,9]]"]).loss)
    with pytest.raises(ValueError, match=r"pair \[1, 9\] is out of range: the student has 2 layers, the teacher 4"):
        check_layer_maps(bad, teacher, student_factory(cfg))
    scratch = compose_train(["experiment=tiny", "student=tiny_bert", "loss=distilbert", "loss.cos.layer_map=last"])
    check_layer_maps(build_losses(scratch.loss), teacher, student_factory(scratch))  # from_config seeds torch: restored
    assert torch.equal(torch.get_rng_state(), state)


def test_layer_subset_students_default_to_init_map():
    teacher = tiny_bert(layers=6)
    student = student_from_teacher(teacher, layers=[0, 2, 5])
    module = DistillationModule(student, teacher, {"h": HiddenStateLoss(), "ce": HardCE()})
    assert module.losses["h"].pairs == [(1, 1), (2, 3), (3, 6)]
    assert len(module.losses["h"].projections) == 0  # same hidden size: no projection
    scratch = DistillationModule(tiny_bert(layers=3, seed=1), teacher, {"h": HiddenStateLoss()})
    assert scratch.losses["h"].pairs == [(1, 2), (2, 4), (3, 6)]  # uniform


def _decoders():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_embd=32, n_layer=4, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    return {"llama": llama, "gpt2": gpt2}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoder_last_hidden_state_is_the_block_output_not_the_final_norm(family):
    """Pre-norm decoders put their final norm into hidden_states[-1] only. litdistill hands the losses
    block outputs throughout, so the layers a student copied from the teacher match exactly at init
    (with Hugging Face's last entry the (2, 2) pair of a [0, 1] student was far from zero)."""
    from litdistill.core.forward import run_model

    teacher = _decoders()[family].eval()
    student = student_from_teacher(teacher, layers=[0, 1]).eval()
    batch = {"input_ids": torch.randint(0, 64, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    with torch.no_grad():
        raw = student(**batch, output_hidden_states=True).hidden_states
        s = run_model(student, batch, frozenset({"hidden_states"}), "causal_lm")
        t = run_model(teacher, batch, frozenset({"hidden_states"}), "causal_lm")
    assert len(s.hidden_states) == 3 and len(t.hidden_states) == 5
    assert torch.equal(s.hidden_states[1], raw[1]) and not torch.allclose(
        s.hidden_states[2], raw[2]
    )  # only the last is replaced
    loss = HiddenStateLoss()
    loss.setup(student, teacher)
    assert loss.pairs == [(1, 1), (2, 2)]
    assert loss(s, t, batch).item() == pytest.approx(0.0, abs=1e-10)
    hf = ModelOutputs(hidden_states=raw)
    assert loss(hf, t, batch).item() > 1e-3  # the negative control: HF's normed last entry does not match


def test_registered_by_name():
    assert LOSSES["hidden"] is HiddenStateLoss and LOSSES["feature"] is FeatureLoss


# ---- values vs hand computation --------------------------------------------------------------------
def _hand(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, metric: str) -> float:
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not mask[b, i]:
                continue
            x, y = s[b, i].detach().double(), t[b, i].detach().double()
            if metric == "mse":
                d = float(((x - y) ** 2).mean())
            elif metric == "cosine":
                d = 1 - float(x @ y / (x.norm() * y.norm()))
            else:
                d = float(((x / x.norm() - y / y.norm()) ** 2).mean())
            total, count = total + d, count + 1
    return total / count


@pytest.mark.parametrize("metric", ["mse", "cosine", "nmse"])
def test_hidden_loss_matches_hand_computation_masked_and_grads_reach_student_only(metric):
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    s_h = tuple(torch.randn(2, 4, 5, requires_grad=True) for _ in range(3))  # embeddings + 2 layers
    t_h = tuple(torch.randn(2, 4, 5, requires_grad=True) for _ in range(5))  # embeddings + 4 layers
    loss = HiddenStateLoss(layer_map=[[1, 2], [2, 4]], metric=metric)
    loss.pairs = resolve_layer_map(loss.layer_map, 2, 4)
    value = loss(ModelOutputs(hidden_states=s_h), ModelOutputs(hidden_states=t_h), {"attention_mask": mask})
    expected = (_hand(s_h[1], t_h[2], mask, metric) + _hand(s_h[2], t_h[4], mask, metric)) / 2
    assert math.isclose(float(value), expected, rel_tol=1e-5)
    value.backward()
    assert s_h[1].grad is not None and s_h[1].grad.abs().sum() > 0
    assert torch.all(s_h[1].grad[0, 3] == 0) and torch.all(s_h[1].grad[1, 2:] == 0)  # padding gets no gradient
    assert s_h[0].grad is None  # unmapped layer
    assert all(t.grad is None for t in t_h)  # the teacher side is a constant


def test_padding_positions_do_not_count():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0]])
    s_h = (torch.randn(1, 3, 4), torch.randn(1, 3, 4))
    t_h = [torch.randn(1, 3, 4), torch.randn(1, 3, 4)]
    loss = HiddenStateLoss(layer_map="last")
    loss.pairs = [(1, 1)]
    before = loss(ModelOutputs(hidden_states=s_h), ModelOutputs(hidden_states=tuple(t_h)), {"attention_mask": mask})
    t_h[1] = t_h[1].clone()
    t_h[1][0, 2] += 100.0
    after = loss(ModelOutputs(hidden_states=s_h), ModelOutputs(hidden_states=tuple(t_h)), {"attention_mask": mask})
    assert torch.equal(before, after)


# ---- projections: trained, checkpointed, not exported ---------------------------------------------
def _trainer(tmp_path, **kw) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    return L.Trainer(**{**defaults, **kw})


def test_projection_is_trained_checkpointed_and_not_exported(tmp_path, tiny_data):
    teacher, student = tiny_bert(layers=4, hidden=32), tiny_bert(layers=2, hidden=16, seed=1)
    losses = {"h": HiddenStateLoss(metric="mse"), "kd": SoftTargetKL(), "ce": HardCE()}
    module = DistillationModule(student, teacher, losses)
    proj = module.losses["h"].projections
    assert set(proj) == {"1_2", "2_4"} and proj["1_2"].weight.shape == (32, 16)
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in proj.parameters()} <= in_optimizer
    before = proj["1_2"].weight.detach().clone()
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path, max_steps=3, callbacks=[ckpt_cb]).fit(module, datamodule=tiny_data)
    assert not torch.equal(before, proj["1_2"].weight)  # trained
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(state["losses.h.projections.1_2.weight"], proj["1_2"].weight.detach())
    # a fresh module (same config) restores the projection from the checkpoint
    fresh = DistillationModule(
        tiny_bert(layers=2, hidden=16, seed=5),
        teacher,
        {"h": HiddenStateLoss(metric="mse"), "kd": SoftTargetKL(), "ce": HardCE()},
    )
    fresh.load_state_dict(state)
    assert torch.equal(fresh.losses["h"].projections["1_2"].weight, proj["1_2"].weight.detach())
    # the exported student is the student alone
    out = export_student(student, tiny_data.tokenizer, tmp_path / "student")
    keys = set(load_file(str(out / "model.safetensors")))
    assert keys and not [k for k in keys if "projection" in k or k.startswith("losses")]
    assert keys == set(student.state_dict())


# ---- hooks by name ---------------------------------------------------------------------------------
def test_feature_loss_on_named_hf_submodules():
    teacher, student = tiny_bert(layers=4, hidden=32), tiny_bert(layers=2, hidden=16, seed=1)
    loss = FeatureLoss("bert.encoder.layer.1.output", "bert.encoder.layer.3.output", metric="cosine")
    module = DistillationModule(student, teacher, {"f": loss})
    assert module.student_features == ["bert.encoder.layer.1.output"]
    assert module.teacher_features == ["bert.encoder.layer.3.output"]
    assert loss.projection.weight.shape == (32, 16)
    batch = _batch()
    s_out, t_out = module.student_outputs(batch), module.teacher_outputs(batch)
    assert s_out.features["bert.encoder.layer.1.output"].shape == (3, 7, 16)
    assert t_out.features["bert.encoder.layer.3.output"].shape == (3, 7, 32)
    # the hooked output is the block's output, i.e. the matching hidden state
    full = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
    assert torch.allclose(t_out.features["bert.encoder.layer.3.output"], full.hidden_states[4], atol=1e-6)
    value = loss(s_out, t_out, batch)
    projected = loss.projection(s_out.features["bert.encoder.layer.1.output"])
    assert math.isclose(
        float(value),
        _hand(projected.detach(), t_out.features["bert.encoder.layer.3.output"], batch["attention_mask"], "cosine"),
        rel_tol=1e-5,
    )
    value.backward()
    assert student.bert.encoder.layer[1].output.dense.weight.grad.abs().sum() > 0
    assert loss.projection.weight.grad.abs().sum() > 0


def test_unknown_submodule_name_is_refused_at_setup_with_similar_names():
    with pytest.raises(
        KeyError,
        match=r"no submodule named 'bert.encoder.layer.1.outptu'.*similar names: \['bert.encoder.layer.1.output'",
    ):
        DistillationModule(
            tiny_bert(layers=2, seed=1), tiny_bert(), {"f": FeatureLoss("bert.encoder.layer.1.outptu", "bert.pooler")}
        )


class PlainNet(nn.Module):
    """Not a Hugging Face model: an embedding, blocks in a ModuleList, a head."""

    def __init__(self, dim: int, blocks: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(3000, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(blocks))
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask=None, **_):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return SimpleNamespace(logits=self.head(x.mean(1)))


def test_feature_loss_hooks_a_plain_nn_module():
    teacher, student = PlainNet(12, blocks=3), PlainNet(8, blocks=1, seed=1)
    loss = FeatureLoss("blocks.0", "blocks.2", metric="mse")  # sizes from the blocks' Linear layers
    module = DistillationModule(student, teacher, {"f": loss, "kd": SoftTargetKL()}, num_labels=2)
    assert loss.projection.weight.shape == (12, 8)
    batch = _batch()
    total, terms, _ = module.loss_terms(batch)
    s_feat = student.blocks[0](student.embed(batch["input_ids"]))
    t_feat = teacher.blocks[2](teacher.blocks[1](teacher.blocks[0](teacher.embed(batch["input_ids"]))))
    expected = _hand(loss.projection(s_feat).detach(), t_feat.detach(), batch["attention_mask"], "mse")
    assert math.isclose(float(terms["f"]), expected, rel_tol=1e-5)
    total.backward()
    assert student.blocks[0][0].weight.grad.abs().sum() > 0 and loss.projection.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


# ---- several teachers --------------------------------------------------------------------------------
def _two_teachers() -> tuple[nn.Module, nn.Module]:
    """Two teachers of different shapes (a: 4 layers x 32, b: 2 layers x 16), so a test can tell them apart."""
    return tiny_bert(layers=4, hidden=32, seed=0, dropout=0.0), tiny_bert(layers=2, hidden=16, seed=5, dropout=0.0)


def _terms_alone(student: nn.Module, teacher: nn.Module, loss: nn.Module, like: nn.Module, batch: dict) -> torch.Tensor:
    """The term of ``loss`` distilling from ``teacher`` alone, with the projection weights of ``like``."""
    module = DistillationModule(student, teacher, {"x": loss})
    module.losses["x"].load_state_dict(like.state_dict())  # the same (random) projection on both sides
    return module.loss_terms(batch)[1]["x"]


def test_averaging_multi_teacher_feature_loss_named_teacher_matches_that_teacher_alone():
    from litdistill.models.multi_teacher import MultiTeacher

    a, b = _two_teachers()
    student = tiny_bert(layers=2, hidden=16, seed=1, dropout=0.0)
    multi = MultiTeacher({"a": a, "b": b}, weights=[0.3, 0.7])
    losses = {
        name: FeatureLoss("bert.encoder.layer.1.output", module, metric="mse", teacher=name)
        for name, module in (("a", "bert.encoder.layer.3.output"), ("b", "bert.encoder.layer.1.output"))
    }
    module = DistillationModule(student, multi, losses)
    assert module.losses["a"].projection.weight.shape == (32, 16) and module.losses["b"].projection is None
    batch = _batch()
    _, terms, _ = module.loss_terms(batch)
    for name, teacher in (("a", a), ("b", b)):
        alone = _terms_alone(
            student,
            teacher,
            FeatureLoss("bert.encoder.layer.1.output", losses[name].teacher_module, metric="mse"),
            module.losses[name],
            batch,
        )
        torch.testing.assert_close(terms[name], alone, atol=1e-6, rtol=0)
    assert not torch.allclose(terms["a"], terms["b"])  # the two teachers give different terms


def test_averaging_multi_teacher_hidden_state_loss_named_teacher_matches_that_teacher_alone():
    from litdistill.models.multi_teacher import MultiTeacher

    a, b = _two_teachers()
    student = tiny_bert(layers=2, hidden=16, seed=1, dropout=0.0)
    module = DistillationModule(
        student,
        MultiTeacher({"a": a, "b": b}, weights=[0.3, 0.7]),
        {"a": HiddenStateLoss(metric="cosine", teacher="a"), "b": HiddenStateLoss(metric="cosine", teacher="b")},
    )
    assert module.losses["a"].pairs == [(1, 2), (2, 4)] and module.losses["b"].pairs == [(1, 1), (2, 2)]
    batch = _batch()
    _, terms, _ = module.loss_terms(batch)
    for name, teacher in (("a", a), ("b", b)):
        alone = _terms_alone(student, teacher, HiddenStateLoss(metric="cosine"), module.losses[name], batch)
        torch.testing.assert_close(terms[name], alone, atol=1e-6, rtol=0)
    assert not torch.allclose(terms["a"], terms["b"])


def test_routed_teachers_of_different_shapes_need_a_named_feature_loss():
    from litdistill.models.multi_teacher import MultiTeacher

    a, b = _two_teachers()
    student = tiny_bert(layers=2, hidden=16, seed=1, dropout=0.0)
    routed = MultiTeacher({"a": a, "b": b}, route_field="teacher_id")
    batch = {**_batch(), "teacher_id": torch.tensor([0, 1, 1])}
    module = DistillationModule(
        student, routed, {"f": FeatureLoss("bert.encoder.layer.1.output", "bert.encoder.layer.1.output")}
    )
    with pytest.raises(
        ValueError,
        match=r"per-example shapes \{'a': \(7, 32\), 'b': \(7, 16\)\}.*Set `teacher: <name>` on the loss "
        r"\(one of \['a', 'b'\]",
    ):
        module.loss_terms(batch)
    named = DistillationModule(
        student, routed, {"f": FeatureLoss("bert.encoder.layer.1.output", "bert.encoder.layer.1.output", teacher="b")}
    )
    _, terms, _ = named.loss_terms(batch)  # named: b's examples only, no error
    assert torch.isfinite(terms["f"])


# ---- the CLI recipe --------------------------------------------------------------------------------
def test_experiment_distilbert_minilm_composes(compose_train):
    cfg = compose_train(["experiment=distilbert_minilm"])
    assert cfg.teacher.name_or_path.endswith("model") and cfg.student.every == 2 and cfg.student.layers is None
    assert set(cfg.loss) == {"kd", "ce", "cos"}
    assert cfg.loss.cos._target_ == "litdistill.losses.HiddenStateLoss" and cfg.loss.cos.metric == "cosine"
    assert cfg.loss.cos.layer_map == "auto"


def test_cli_loss_distilbert_end_to_end(tmp_path):
    env = {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"),
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-m", "litdistill", "experiment=tiny", "loss=distilbert", "debug=fast", "baseline=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = next((tmp_path / "outputs").glob("*/runs/*"))
    report = json.loads((run / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student"}
    header = next((run / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    for key in ("train/loss/kd", "train/loss/ce", "train/loss/cos"):
        assert key in header
    assert (run / "student" / "model.safetensors").is_file()


def test_cli_experiment_distilbert_minilm_smoke(tmp_path):
    """The recipe end to end on the packaged MiniLM teacher, a few steps on the test-size data (~30 s)."""
    from omegaconf import OmegaConf
    from tests.test_cli import only_run_dir, run_cli

    run_cli(
        [
            "experiment=distilbert_minilm",
            "data=drug_events_tiny",
            "debug=fast",
            "teacher_finetune.max_steps=2",
            "trainer.max_steps=2",
            "baseline=false",
            "report.plots=false",
        ],
        tmp_path,
    )
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student"}
    header = next((run / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    terms = set(OmegaConf.load(REPO / "conf" / "loss" / "distilbert.yaml"))
    assert terms == {"kd", "ce", "cos"}
    for term in terms:
        assert f"train/loss/{term}" in header
    config = json.loads((run / "student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["litdistill_teacher_layers"] == [0, 2, 4]  # every other of 6
