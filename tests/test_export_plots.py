"""ONNX and dynamic-int8 students (load back, same predictions, timed) and the report pictures."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import tiny_bert
from litdistill.models.export_formats import (
    INT8_FILE,
    ONNX_FILE,
    export_formats,
    export_onnx,
    load_int8,
    onnx_logits,
    onnx_session,
    quantize_int8,
    torch_logits,
)
from litdistill.reporting.plots import plot_comparison, read_loss_curves, report_figures
from litdistill.reporting.report import to_markdown, write_report


@pytest.fixture(scope="module")
def tokenizer():
    from litdistill.models.loading import packaged_minilm

    return AutoTokenizer.from_pretrained(packaged_minilm())


def _batch(tokenizer, texts):
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


@pytest.fixture
def exported_bert(tmp_path, tokenizer):
    model = tiny_bert(layers=2, hidden=32, seed=3)
    model.save_pretrained(tmp_path / "student")
    batches = [
        _batch(
            tokenizer,
            ["Lithium-induced hypothyroidism.", "Warfarin was effective for atrial fibrillation in this cohort."],
        ),
        _batch(
            tokenizer,
            ["Rash after cisplatin.", "No seizures were seen.", "Heparin is used to treat deep vein thrombosis."],
        ),
    ]
    model.train()  # as it leaves fit(): the export must not depend on, nor change, its mode
    exports = export_formats(model, batches, tmp_path, task="classification", threads=1, hf_dir=tmp_path / "student")
    return model, exports, tmp_path


def test_export_reports_every_format_checked_with_a_runner_to_time(exported_bert, tokenizer):
    model, exports, out = exported_bert
    assert model.training
    section = exports.section()
    formats = section["formats"]
    assert list(formats) == ["pytorch", "onnx", "int8"] and section["threads"] == 1 and section["batch_size"] == 1
    assert all(row["size_mb"] > 0 for row in formats.values())
    # the formats are timed by the report beside the models (cpu_speeds), so they come back with runners
    # called like a model: the student is the pytorch row's, ONNX and int8 get their own
    assert set(exports.runners) == {"onnx", "int8"}
    batch = _batch(tokenizer, ["Neutropenia after clozapine."])
    reference = torch_logits(model.eval(), batch)
    assert torch.allclose(exports.runners["onnx"](**batch), reference, atol=1e-4)
    assert torch.allclose(exports.runners["int8"](**batch).logits, reference, atol=0.05)
    assert (
        formats["pytorch"]["agreement"] == 1.0 and formats["pytorch"]["max_abs_diff"] < 1e-5
    )  # the HF folder, reloaded
    assert formats["onnx"] == pytest.approx({**formats["onnx"], "agreement": 1.0})
    assert formats["onnx"]["max_abs_diff"] < 1e-4
    assert formats["int8"]["agreement"] == 1.0 and formats["int8"]["max_abs_diff"] < 0.05
    assert (out / ONNX_FILE).is_file() and (out / INT8_FILE).is_file()


def test_onnx_has_dynamic_batch_and_sequence_and_matches_on_new_shapes(exported_bert, tokenizer):
    model, _, out = exported_bert
    graph = onnx.load(str(out / ONNX_FILE)).graph
    onnx.checker.check_model(str(out / ONNX_FILE))
    for inp in graph.input:
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"], inp.name
    session = onnx_session(out / ONNX_FILE, threads=1)
    batch = _batch(
        tokenizer,
        [
            "A much longer sentence than any in the export example, with many more word pieces.",
            "Short.",
            "Amiodarone pneumonitis.",
            "Clozapine agranulocytosis in a 40-year-old man.",
        ],
    )
    expected = torch_logits(model.eval(), batch)
    got = onnx_logits(session, batch)
    assert got.shape == (4, 2)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


def test_int8_file_loads_onto_the_hf_folder_and_predicts_like_the_student(exported_bert, tokenizer):
    model, _, out = exported_bert
    quantized = load_int8(out / "student", out / INT8_FILE)
    assert any("quantized" in type(m).__module__ for m in quantized.modules())
    batch = _batch(tokenizer, ["Hepatotoxicity due to isoniazid.", "Metformin for type 2 diabetes.", "Gout."])
    reference = torch_logits(model.eval(), batch)
    got = torch_logits(quantized, batch)
    assert torch.equal(got.argmax(-1), reference.argmax(-1))
    assert (got - reference).abs().max() < 0.05
    assert torch.allclose(
        got, torch_logits(quantize_int8(model), batch)
    )  # the file holds exactly the quantized weights


def test_causal_lm_exports_with_dynamic_sequence(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    example = _batch(tokenizer, ["one two three", "four five six seven eight"])
    example.pop("token_type_ids")
    path = export_onnx(model, example, tmp_path / ONNX_FILE, task="causal_lm")
    batch = _batch(tokenizer, ["a longer sentence to check the sequence axis is dynamic", "short"])
    batch.pop("token_type_ids")
    got, expected = onnx_logits(onnx_session(path), batch), torch_logits(model.eval(), batch, task="causal_lm")
    mask = batch["attention_mask"].bool()
    assert got.shape == expected.shape == (2, batch["input_ids"].shape[1], tokenizer.vocab_size)
    assert (got[mask] - expected[mask]).abs().max() < 1e-4


def test_a_failed_onnx_export_leaves_the_previous_file_intact(tmp_path, tokenizer, monkeypatch):
    example = _batch(tokenizer, ["Rash after cisplatin.", "No seizures were seen."])
    path = export_onnx(tiny_bert(layers=1, hidden=32, seed=1), example, tmp_path / ONNX_FILE)
    good = path.read_bytes()
    written = []

    def dies_half_way(model, args, f, **kwargs):  # the exporter wrote part of the file, then failed
        written.append(f)
        with open(f, "wb") as out:
            out.write(good[: len(good) // 2])
        raise RuntimeError("exporter died")

    monkeypatch.setattr(torch.onnx, "export", dies_half_way)
    with pytest.raises(RuntimeError, match="exporter died"):
        export_onnx(tiny_bert(layers=1, hidden=32, seed=2), example, tmp_path / ONNX_FILE)
    assert written and written[0] != str(path)  # it wrote elsewhere, beside the target
    assert sorted(p.name for p in tmp_path.iterdir()) == [ONNX_FILE]  # no temp file left behind
    assert path.read_bytes() == good
    onnx.checker.check_model(str(path))


# ---- report pictures -------------------------------------------------------------------------------
METRICS_CSV = (
    "epoch,step,train/loss/ce_step,train/loss/kd_step,train/loss_step,"
    "train/loss/ce_epoch,train/loss/kd_epoch,train/loss_epoch,val/student/f1\n"
    """0,9,0.7,0.3,0.5,,,,
0,19,0.6,0.2,0.4,,,,
0,19,,,,0.65,0.25,0.45,
0,19,,,,,,,0.5
1,29,0.5,0.1,0.3,,,,
"""
)

REPORT = {
    "metric": "f1",
    "threads": 2,
    "agreement": 0.9,
    "models": {
        "teacher": {
            "params_m": 22.7,
            "size_mb": 86.0,
            "latency_ms": 9.0,
            "throughput_per_s": 300.0,
            "metrics": {"acc": 0.9, "f1": 0.88},
        },
        "student": {
            "params_m": 12.0,
            "size_mb": 45.0,
            "latency_ms": 3.0,
            "throughput_per_s": 900.0,
            "metrics": {"acc": 0.88, "f1": 0.85},
        },
        "baseline": {
            "params_m": 12.0,
            "size_mb": 45.0,
            "latency_ms": 3.1,
            "throughput_per_s": 880.0,
            "metrics": {"acc": 0.8, "f1": 0.75},
        },
    },
    "exports": {
        "threads": 2,
        "batch_size": 1,
        "formats": {
            "pytorch": {"file": "student/", "size_mb": 45.0, "latency_ms": 3.0},
            "onnx": {
                "file": "student.onnx",
                "size_mb": 45.2,
                "latency_ms": 1.2,
                "agreement": 1.0,
                "max_abs_diff": 2e-6,
            },
            "int8": {
                "file": "student_int8.pt",
                "size_mb": 20.0,
                "latency_ms": 2.0,
                "agreement": 0.99,
                "max_abs_diff": 0.02,
            },
        },
    },
}


def test_loss_curves_prefer_step_values_over_epoch_means(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    curves = read_loss_curves(tmp_path / "metrics.csv")
    assert set(curves) == {"total", "ce", "kd"}
    assert curves["kd"] == [(9.0, 0.3), (19.0, 0.2), (29.0, 0.1)]
    (tmp_path / "epochs.csv").write_text("epoch,step,train/loss/kd_epoch,train/loss_epoch\n0,4,0.2,0.4\n")
    assert read_loss_curves(tmp_path / "epochs.csv") == {"kd": [(4.0, 0.2)], "total": [(4.0, 0.4)]}


def test_report_figures_are_written_and_linked(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    report = json.loads(json.dumps(REPORT))
    report["figures"] = report_figures(report, tmp_path / "run", metrics_csv=tmp_path / "metrics.csv")
    assert report["figures"] == {  # the training curves from the same log (its train/loss; no baseline log here)
        "loss_curves": "loss_curves.png",
        "training_curves": "training_curves.png",
        "comparison": "comparison.png",
    }
    for png in report["figures"].values():
        assert (tmp_path / "run" / png).read_bytes()[:4] == b"\x89PNG"
    markdown = write_report(report, tmp_path / "run").read_text()
    assert "![Training losses](loss_curves.png)" in markdown and "](comparison.png)" in markdown
    assert "| int8 | student_int8.pt | 20.0 | 2.0000 | 0.9900 | 2.00e-02 |" in markdown
    assert "Exported student" not in to_markdown({k: v for k, v in REPORT.items() if k != "exports"})


def test_comparison_plot_copes_with_missing_speed(tmp_path):
    report = {
        "metric": "f1",
        "threads": 2,
        "models": {"student": {"params_m": 1.0, "size_mb": 4.0, "metrics": {"f1": 0.5}}},
    }
    assert plot_comparison(report, tmp_path / "c.png").is_file()
    assert report_figures(report, tmp_path) == {"comparison": "comparison.png"}  # no CSV log: no loss curves


def test_weights_on_disk_is_what_save_pretrained_writes_and_leaves_nothing_behind(tmp_path):
    from litdistill.models.saving import weights_on_disk_mb

    model = tiny_bert(layers=2)
    model.save_pretrained(tmp_path / "saved", safe_serialization=True)
    expected = (tmp_path / "saved" / "model.safetensors").stat().st_size / 2**20
    assert weights_on_disk_mb(model, tmp_path) == pytest.approx(expected)
    assert weights_on_disk_mb(tiny_bert(layers=4)) > expected  # more layers, more bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # the scratch directory is gone
    assert weights_on_disk_mb(torch.nn.Linear(2, 2)) is None  # no save_pretrained: not measured
