"""MultiTeacher: averaging by hand, routing per example, feature losses per teacher, quantized members, configs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from tests.conftest import tiny_bert

from litdistill import DistillationModule, HardCE, SoftTargetKL
from litdistill.losses import ForwardKL, HiddenStateLoss
from litdistill.models.compatibility import IncompatibleModelsError
from litdistill.models.loading import load_pretrained, memory_footprint
from litdistill.models.multi_teacher import MultiTeacher, MultiTeacherOutputs, teachers_memory

NEEDS = frozenset({"logits"})
REPO = Path(__file__).resolve().parents[1]


def _batch(b: int = 6, t: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return {
        "input_ids": torch.randint(1000, 2000, (b, t), generator=g) * mask,
        "attention_mask": mask,
        "labels": torch.arange(b) % 2,
    }


def _frozen(model):
    return model.eval().requires_grad_(False)


def _pair(hidden_b: int = 32, layers_b: int = 4):
    return _frozen(tiny_bert(layers=4, hidden=32, seed=0)), _frozen(tiny_bert(layers=layers_b, hidden=hidden_b, seed=1))


# ---- averaging -------------------------------------------------------------------------------------
def test_averaging_equals_the_hand_computed_mixture():
    a, b = _pair(hidden_b=16, layers_b=2)
    multi = MultiTeacher({"a": a, "b": b}, weights={"a": 3.0, "b": 1.0}, temperatures={"a": 2.0, "b": 0.5})
    batch = _batch()
    out = multi.distill_forward(batch, NEEDS, "classification")
    assert isinstance(out, MultiTeacherOutputs) and out.log_probs
    za, zb = (
        a(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
        b(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
    )
    expected = torch.log(0.75 * F.softmax(za / 2.0, -1) + 0.25 * F.softmax(zb / 0.5, -1))
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(6))
    assert torch.allclose(out.per_teacher["a"].logits, za) and out.rows == {"a": None, "b": None}


def test_logit_losses_take_the_mixture_as_the_teacher_distribution():
    """The loss temperature softens the student only; the mixture is not re-tempered."""
    a, b = _pair()
    multi = MultiTeacher({"a": a, "b": b}, temperatures=3.0)
    student = tiny_bert(layers=2, seed=2)
    batch = _batch()
    t_out = multi.distill_forward(batch, NEEDS, "classification")
    s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    from litdistill.core.outputs import ModelOutputs

    s_out = ModelOutputs(logits=s_logits)
    T = 2.0
    p_mix = t_out.logits.exp()
    expected = (p_mix * (t_out.logits - F.log_softmax(s_logits / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(SoftTargetKL(temperature=T)(s_out, t_out, batch), expected, atol=1e-5)
    assert torch.allclose(ForwardKL(temperature=T)(s_out, t_out, batch), expected, atol=1e-5)


def test_weights_and_temperatures_are_validated():
    a, b = _pair()
    with pytest.raises(ValueError, match=r"weights\['b'\] must be a finite number >= 0"):
        MultiTeacher({"a": a, "b": b}, weights={"a": 1.0, "b": -1.0})
    with pytest.raises(ValueError, match=r"unknown teachers \['c'\], missing \['b'\]"):
        MultiTeacher({"a": a, "b": b}, weights={"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        MultiTeacher({"a": a, "b": b}, temperatures=[1.0, 0.0])
    with pytest.raises(ValueError, match="weights= apply to averaging"):
        MultiTeacher({"a": a, "b": b}, weights=[1, 1], route_field="teacher_id")


def test_teachers_must_share_a_vocabulary():
    a = tiny_bert()
    other = tiny_bert()
    other.config.vocab_size = 100
    with pytest.raises(IncompatibleModelsError, match="differ in vocab_size"):
        MultiTeacher({"a": a, "b": other})
    three = tiny_bert(num_labels=3)
    with pytest.raises(IncompatibleModelsError, match="differ in num_labels"):
        MultiTeacher({"a": a, "b": three})


# ---- routing ---------------------------------------------------------------------------------------
class SeenRows:
    """Forward hooks recording the input rows each teacher receives."""

    def __init__(self, multi: MultiTeacher) -> None:
        self.seen: dict[str, list[torch.Tensor]] = {name: [] for name in multi.names}
        for name, model in multi.teachers.items():
            model.register_forward_pre_hook(
                lambda m, args, kwargs, name=name: self.seen[name].append(kwargs["input_ids"]), with_kwargs=True
            )


def test_routing_sends_each_example_to_its_teacher():
    a, b = _pair()
    multi = MultiTeacher({"a": a, "b": b}, route_field="teacher_id")
    recorder = SeenRows(multi)
    batch = {**_batch(), "teacher_id": torch.tensor([0, 1, 1, 0, 1, 1])}
    out = multi.distill_forward(batch, frozenset({"logits", "hidden_states"}), "classification")
    assert len(recorder.seen["a"]) == len(recorder.seen["b"]) == 1  # one forward per teacher
    assert torch.equal(recorder.seen["a"][0], batch["input_ids"][[0, 3]])
    assert torch.equal(recorder.seen["b"][0], batch["input_ids"][[1, 2, 4, 5]])
    full = {
        name: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        for name, model in (("a", a), ("b", b))
    }
    for row, teacher in enumerate("abbabb"):
        assert torch.allclose(out.logits[row], full[teacher].logits[row], atol=1e-5)  # raw logits of its own teacher
        assert torch.allclose(out.hidden_states[-1][row], full[teacher].hidden_states[-1][row], atol=1e-5)
    assert not out.log_probs and torch.equal(out.rows["b"], torch.tensor([1, 2, 4, 5]))


def test_routing_by_name_order_and_missing_or_bad_ids():
    a, b = _pair()
    multi = MultiTeacher({"a": a, "b": b}, route_field="lang", routes=["b", "a"], temperatures={"a": 1.0, "b": 2.0})
    recorder = SeenRows(multi)
    batch = {**_batch(4), "lang": torch.tensor([0, 0, 1, 0])}
    out = multi.distill_forward(batch, NEEDS, "classification")
    assert torch.equal(recorder.seen["b"][0], batch["input_ids"][[0, 1, 3]]) and torch.equal(
        recorder.seen["a"][0], batch["input_ids"][[2]]
    )
    zb = b(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert out.log_probs and torch.allclose(out.logits[0], F.log_softmax(zb[0] / 2.0, -1), atol=1e-5)
    with pytest.raises(KeyError, match=r"routes by batch\['lang'\].*route_column"):
        multi.distill_forward(_batch(4), NEEDS, "classification")
    with pytest.raises(ValueError, match=r"route id in 0..1"):
        multi.distill_forward({**_batch(4), "lang": torch.tensor([0, 2, 1, 0])}, NEEDS, "classification")


def test_routed_feature_losses_per_example_and_per_teacher():
    a, b = _pair()
    multi = MultiTeacher({"a": a, "b": b}, route_field="teacher_id")
    student = tiny_bert(layers=2, hidden=16, seed=3)
    module = DistillationModule(
        student,
        multi,
        {
            "h": HiddenStateLoss(layer_map="last"),
            "hb": HiddenStateLoss(layer_map="last", teacher="b"),
            "kd": SoftTargetKL(),
        },
    )
    batch = {**_batch(), "teacher_id": torch.tensor([0, 1, 1, 0, 1, 1])}
    _, terms, s_out = module.loss_terms(batch)
    rows_b = torch.tensor([1, 2, 4, 5])
    t_b = b(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    ).hidden_states[-1]
    proj = module.losses["hb"].projections["2_4"]
    d = ((proj(s_out.hidden_states[-1][rows_b]) - t_b[rows_b]) ** 2).mean(-1)
    m = batch["attention_mask"][rows_b].bool()
    assert torch.allclose(terms["hb"], d[m].mean(), atol=1e-5)  # only b's examples, b's hidden states
    assert torch.isfinite(terms["h"]) and terms["h"] > 0


def test_routed_hidden_states_need_teachers_of_one_shape_unless_a_teacher_is_named():
    a, b = _pair(hidden_b=16, layers_b=2)
    multi = MultiTeacher({"a": a, "b": b}, route_field="teacher_id")
    with pytest.raises(ValueError, match=r"teachers must share \('num_hidden_layers', 'hidden_size'\).*teacher=<name>"):
        DistillationModule(tiny_bert(layers=2, seed=3), multi, {"h": HiddenStateLoss()})
    module = DistillationModule(
        tiny_bert(layers=2, seed=3), multi, {"ha": HiddenStateLoss(teacher="a"), "hb": HiddenStateLoss(teacher="b")}
    )
    assert module.losses["ha"].pairs == [(1, 2), (2, 4)] and module.losses["hb"].pairs == [(1, 1), (2, 2)]
    assert "1_1" in module.losses["hb"].projections  # 32 -> 16
    batch = {**_batch(), "teacher_id": torch.zeros(6, dtype=torch.long)}  # no example for b in this batch
    total, terms, _ = module.loss_terms(batch)
    assert terms["hb"] == 0 and terms["ha"] > 0
    total.backward()


def test_averaged_hidden_states_come_from_the_primary_teacher():
    a, b = _pair()
    multi = MultiTeacher({"a": a, "b": b}, primary="b")
    out = multi.distill_forward(_batch(), frozenset({"logits", "hidden_states"}), "classification")
    assert out.hidden_states is out.per_teacher["b"].hidden_states
    assert multi.config is b.config


# ---- quantized members and memory ------------------------------------------------------------------
def test_8bit_teacher_in_a_multi_teacher_on_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    tiny_bert(hidden=64).save_pretrained(tmp_path / "t")
    fp32 = load_pretrained(str(tmp_path / "t"))
    int8 = load_pretrained(str(tmp_path / "t"), quantization="8bit")
    multi = MultiTeacher({"fp32": fp32, "int8": int8}, check_tokenizers=False)
    assert multi.is_quantized
    student = tiny_bert(layers=2, hidden=32, seed=4)
    module = DistillationModule(
        student, multi, {"kd": SoftTargetKL(), "ce": HardCE(), "h": HiddenStateLoss(teacher="int8")}
    )
    total, terms, _ = module.loss_terms(_batch())
    assert all(torch.isfinite(v) for v in terms.values())
    total.backward()
    assert student.classifier.weight.grad is not None
    out = module.teacher_outputs(_batch())
    assert torch.allclose(out.per_teacher["int8"].logits, out.per_teacher["fp32"].logits, atol=0.05)  # 8-bit is close
    report = multi.memory_report()
    assert report["teachers"]["int8"]["quantization"] == "8bit"
    assert report["teachers"]["int8"]["bytes"] < report["teachers"]["fp32"]["bytes"]
    assert report["total_bytes"] == memory_footprint(multi) == memory_footprint(fp32) + memory_footprint(int8)
    assert teachers_memory({"x": fp32})["total_bytes"] == memory_footprint(fp32)


def test_a_student_is_never_cut_from_quantized_weights(tmp_path):
    from litdistill.models.layer_subset import student_from_teacher

    pytest.importorskip("bitsandbytes")
    tiny_bert(hidden=64).save_pretrained(tmp_path / "t")
    int8 = load_pretrained(str(tmp_path / "t"), quantization="8bit")
    with pytest.raises(ValueError, match=r"teacher is quantized \(8bit\).*teacher.quantization=null.*student=scaled"):
        student_from_teacher(int8, every=2)
    assert student_from_teacher(load_pretrained(str(tmp_path / "t")), every=2).config.num_hidden_layers == 2


def _run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"),
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(
        [sys.executable, "-m", "litdistill", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_quantized_primary_with_a_from_teacher_student_is_refused_before_fine_tuning(tmp_path):
    pytest.importorskip("bitsandbytes")
    proc = _run_cli(["experiment=tiny", "teacher=minilm", "teacher.quantization=8bit", "report.plots=false"], tmp_path)
    assert proc.returncode != 0
    assert "teacher is quantized (8bit)" in proc.stderr and "teacher.quantization=null" in proc.stderr
    assert not (tmp_path / "cache" / "teachers").exists()  # refused before any fine-tuning step


def test_cli_multi_teacher_with_an_8bit_member_reports_its_packed_memory(tmp_path):
    """The docs' command: MiniLM loaded 8-bit beside a float tiny BERT that is the primary (the student's source)."""
    pytest.importorskip("bitsandbytes")
    proc = _run_cli(
        [
            "experiment=tiny",
            "debug=fast",
            "baseline=false",
            "teacher=multi",
            "teacher.teachers.minilm.quantization=8bit",
            "teacher.primary=tiny",
            "teacher_finetune.max_steps=2",
            "trainer.limit_train_batches=2",
            "report.plots=false",
            "report.speed=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(next((tmp_path / "outputs").glob("*/runs/*/report.json")).read_text())
    memory = report["teachers_memory"]["teachers"]
    assert memory["minilm"]["quantization"] == "8bit" and memory["tiny"]["quantization"] is None
    fp32_mb = memory["minilm"]["params"] * 4 / 2**20
    assert memory["minilm"]["mb"] < 0.75 * fp32_mb  # linear weights packed to 1 byte (embeddings stay float32)
    assert report["models"]["student"]["params_m"] < memory["tiny"]["params"] / 1e6  # cut from the float primary


def test_teachers_memory_is_the_sum_of_each_teachers_footprint():
    from litdistill.models.loading import count_parameters

    a, b = _pair(hidden_b=16, layers_b=2)
    report = teachers_memory({"a": a, "b": b})
    assert list(report["teachers"]) == ["a", "b"]
    for name, model in (("a", a), ("b", b)):
        row = report["teachers"][name]
        assert row["bytes"] == memory_footprint(model) and row["mb"] == row["bytes"] / 2**20
        assert row["params"] == count_parameters(model)
    assert report["teachers"]["a"]["bytes"] > report["teachers"]["b"]["bytes"] > 0  # b is the smaller model
    assert (
        report["total_bytes"]
        == memory_footprint(a) + memory_footprint(b)
        == memory_footprint(MultiTeacher({"a": a, "b": b}))
    )
    assert teachers_memory(MultiTeacher({"a": a, "b": b})) == report


def test_load_teachers_memory_counts_quantized_teachers_at_their_packed_size(tmp_path):
    pytest.importorskip("bitsandbytes")
    from litdistill.models.multi_teacher import load_teachers_memory

    tiny_bert(hidden=64).save_pretrained(tmp_path / "t")
    report = load_teachers_memory(str(tmp_path / "t"), quantizations=(None, "8bit", "nf4"))
    rows = report["teachers"]
    assert list(rows) == ["float32", "8bit", "nf4"] and report["name_or_path"] == str(tmp_path / "t")
    assert [rows[n]["quantization"] for n in rows] == [None, "8bit", "nf4"]
    fp32 = load_pretrained(str(tmp_path / "t"))
    assert rows["float32"]["bytes"] == memory_footprint(fp32)
    # the encoder's linear weights: 4 bytes each in float32, 1 in 8-bit, 1/2 (+ absmax) in nf4
    linear = sum(
        m.weight.numel() for n, m in fp32.named_modules() if isinstance(m, torch.nn.Linear) and ".encoder." in f".{n}"
    )
    assert rows["float32"]["bytes"] - rows["8bit"]["bytes"] >= 2.5 * linear
    assert rows["8bit"]["bytes"] - rows["nf4"]["bytes"] >= 0.25 * linear
    assert report["total_bytes"] == sum(r["bytes"] for r in rows.values())


def test_report_shows_the_memory_of_each_teacher_and_the_total():
    from litdistill.reporting.report import multi_teacher_memory, to_markdown

    a, b = _pair(hidden_b=16, layers_b=2)
    multi = MultiTeacher({"a": a, "b": b})
    extra = multi_teacher_memory(multi)
    assert extra == {"teachers_memory": teachers_memory(multi)} and multi_teacher_memory(a) == {}
    md = to_markdown({"metric": "f1", "threads": 1, "models": {"teacher": {"metrics": {}}}, **extra})
    section = md.split("## Teachers' memory", 1)[1]
    mb = {n: teachers_memory(multi)["teachers"][n]["mb"] for n in ("a", "b")}
    assert "| a | - | - |" in section and f"{mb['a']:.4f} |" in section and f"{mb['b']:.4f} |" in section
    assert f"| total (2 teachers) | | | | {sum(mb.values()):.4f} |" in section
    assert "Teachers' memory" not in to_markdown({"metric": "f1", "threads": 1, "models": {}})


# ---- data routing and configs ----------------------------------------------------------------------
def _write_csv(path: Path, rows: list[tuple[str, int, str]]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "language"])
        writer.writerows(rows)
    return str(path)


def test_data_module_passes_the_route_column_through(tmp_path, tokenizer_dir):
    from litdistill.data import TextClassificationDataModule

    rows = [
        ("aspirin caused a rash", 1, "en"),
        ("Aspirin verursachte Ausschlag", 1, "de"),
        ("ibuprofen treats pain", 0, "en"),
        ("Ibuprofen gegen Schmerzen", 0, "de"),
    ]
    files = {split: _write_csv(tmp_path / f"{split}.csv", rows) for split in ("train", "validation", "test")}
    dm = TextClassificationDataModule(
        tokenizer=tokenizer_dir, data_files=files, batch_size=4, route_column="language", route_values=["en", "de"]
    )
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["teacher_id"].tolist() == [0, 1, 0, 1]
    bad = TextClassificationDataModule(
        tokenizer=tokenizer_dir, data_files=files, route_column="language", route_values=["en"]
    )
    with pytest.raises(ValueError, match=r"holds 'de', not in route_values \['en'\]"):
        bad.setup()
    missing = TextClassificationDataModule(tokenizer=tokenizer_dir, data_files=files, route_column="lang")
    with pytest.raises(ValueError, match=r"\['lang'\] not in the data"):
        missing.setup()


def test_multi_config_builds_a_multi_teacher(compose_train):
    cfg = compose_train(
        [
            "experiment=tiny",
            "teacher=multi",
            "teacher@teacher.teachers.minilm=tiny_bert",
            "teacher.teachers.minilm.seed=3",
            "teacher.route_field=teacher_id",
        ]
    )
    assert cfg.teacher.temperatures == 2.0  # follows loss.kd.temperature
    multi = instantiate(cfg.teacher)
    assert isinstance(multi, MultiTeacher) and multi.names == ["minilm", "tiny"] and multi.mode == "route"
    assert multi.temperatures == {"minilm": 2.0, "tiny": 2.0}


def test_cli_with_a_routed_multi_teacher(tmp_path):
    """The train entry with teacher=multi: members fine-tuned, a from_teacher student of the primary,
    examples routed by their label column (route ids = labels), a per-teacher feature loss."""
    env = {
        **os.environ,
        "LITDISTILL_OUTPUTS": str(tmp_path / "outputs"),
        "LITDISTILL_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    cmd = [
        sys.executable,
        "-m",
        "litdistill",
        "experiment=tiny",
        "debug=fast",
        "baseline=false",
        "teacher=multi",
        "teacher@teacher.teachers.minilm=tiny_bert",
        "teacher.teachers.minilm.seed=3",
        "teacher.route_field=teacher_id",
        "+data.route_column=label",
        "loss=[kd_ce,hidden_cosine]",
        "+loss.hidden.teacher=tiny",
        "report.plots=false",
        "teacher_finetune.max_steps=2",
        "trainer.limit_train_batches=2",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = next((tmp_path / "outputs").glob("*/runs/*"))
    report = json.loads((run / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student"}
    assert report["models"]["teacher"]["params_m"] > 2 * report["models"]["student"]["params_m"]  # two teachers
    assert len(list((tmp_path / "cache" / "teachers").iterdir())) == 2  # each member fine-tuned and cached
    memory = report["teachers_memory"]  # the memory of the N teachers, per teacher and in total
    assert list(memory["teachers"]) == ["minilm", "tiny"]
    assert memory["total_bytes"] == sum(r["bytes"] for r in memory["teachers"].values())
    assert memory["total_mb"] == pytest.approx(report["models"]["teacher"]["size_mb"])
    md = (run / "report.md").read_text()
    assert "## Teachers' memory" in md and "| total (2 teachers) |" in md and "| minilm |" in md
    header = next((run / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "train/loss/hidden" in header
