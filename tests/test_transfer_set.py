"""The transfer set: hidden labels, unlabelled text and augmented sentences in the train split; hard CE
on the labelled rows only, exact across accumulation and data-parallel ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf

from litdistill.config.checks import check_transfer_set
from litdistill.core.outputs import ModelOutputs
from litdistill.data import TextClassificationDataModule
from litdistill.data.synthetic import make_drug_event_dataset
from litdistill.data.token_counts import StepTokenCounts, across_ranks, labelled_rows
from litdistill.data.transfer import UNLABELLED, hide_labels, load_unlabeled, with_unlabelled_rows
from litdistill.losses import HardCE, SoftTargetKL
from litdistill.models.loading import packaged_minilm


# ---- hidden labels ----------------------------------------------------------------------------------
def test_label_fraction_keeps_a_seeded_sample_of_the_labels():
    ds = Dataset.from_dict({"text": [f"s{i}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    kept = hide_labels(ds, "label", 0.25, seed=3)
    labels = kept["label"]
    assert sum(label != UNLABELLED for label in labels) == 10
    assert kept["text"] == ds["text"]  # the hidden rows' text stays, as transfer text
    assert all(label in (UNLABELLED, i % 2) for i, label in enumerate(labels))  # kept labels are the originals
    assert hide_labels(ds, "label", 0.25, seed=3)["label"] == labels  # a function of the seed
    assert hide_labels(ds, "label", 0.25, seed=4)["label"] != labels
    assert hide_labels(ds, "label", 1.0, seed=3)["label"] == ds["label"]


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, True, "half"])
def test_label_fraction_outside_0_1_is_refused_naming_the_key(bad):
    with pytest.raises(ValueError, match=r"data.label_fraction=.*\(0, 1\]"):
        hide_labels(Dataset.from_dict({"text": ["a"], "label": [0]}), "label", bad, seed=0)


# ---- unlabelled sources -----------------------------------------------------------------------------
def test_unlabelled_text_is_read_from_csv_txt_and_a_generate_output_dir(tmp_path):
    (tmp_path / "pool.csv").write_text("sentence,source\nFirst one.,a\n,b\nSecond one.,c\n", encoding="utf-8")
    (tmp_path / "pool.txt").write_text("Line one.\n\n  Line two.  \n", encoding="utf-8")
    gen = tmp_path / "generated"
    gen.mkdir()
    rows = [{"id": "1", "prompt": "p", "response": "A paraphrase."}, {"id": "2", "prompt": "q", "response": "Another."}]
    (gen / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    csv = load_unlabeled(str(tmp_path / "pool.csv"), "sentence", {"text": "text"})
    assert csv["text"] == ["First one.", "Second one."]  # the empty row dropped, renamed to the data's column
    assert load_unlabeled(str(tmp_path / "pool.txt"), None, {"text": "text"})["text"] == ["Line one.", "Line two."]
    assert load_unlabeled(str(gen), None, {"text": "text"})["text"] == ["A paraphrase.", "Another."]


def test_bad_unlabelled_sources_are_refused_naming_the_source_and_what_it_has(tmp_path):
    (tmp_path / "pool.csv").write_text("sentence\nOne.\n", encoding="utf-8")
    (tmp_path / "blank.csv").write_text('text\n""\n" "\n', encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"data.unlabeled=.*pool.csv: no column \['text'\] \(columns: \['sentence'\]\)"
    ):
        load_unlabeled(str(tmp_path / "pool.csv"), None, {"text": "text"})
    with pytest.raises(ValueError, match="blank.csv: column 'text' holds no text"):
        load_unlabeled(str(tmp_path / "blank.csv"), None, {"text": "text"})
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        load_unlabeled(str(tmp_path / "empty.txt"), None, {"text": "text"})
    with pytest.raises(FileNotFoundError, match="missing.csv: no such file"):
        load_unlabeled(str(tmp_path / "missing.csv"), None, {"text": "text"})
    with pytest.raises(FileNotFoundError, match="without dataset.jsonl"):
        load_unlabeled(str(tmp_path), None, {"text": "text"})


def test_unlabelled_rows_join_the_train_split_with_label_minus_100():
    train = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    joined = with_unlabelled_rows(train, Dataset.from_dict({"text": ["c"]}), "label")
    assert joined["text"] == ["a", "b", "c"] and joined["label"] == [0, 1, UNLABELLED]
    assert joined.features == train.features


# ---- the data module ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drug_files(tmp_path_factory):
    return make_drug_event_dataset(str(tmp_path_factory.mktemp("drug")), n_train=60, n_val=12, n_test=12, seed=1)


def test_the_data_module_counts_the_transfer_set_and_its_labelled_view_holds_only_labels(drug_files, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(f"Unlabelled sentence number {i}." for i in range(25)) + "\n", encoding="utf-8")
    dm = TextClassificationDataModule(
        tokenizer=packaged_minilm(), data_files=drug_files, label_fraction=0.2, unlabeled=str(pool), seed=5
    )
    dm.setup("fit")
    counts = dm.transfer_counts.as_dict()
    assert counts == {"labelled": 12, "hidden_labels": 48, "unlabeled": 25, "augmented": 0, "total": 85}
    labels = dm.splits["train"][:]["labels"]
    assert len(labels) == 85 and int((labels != UNLABELLED).sum()) == 12
    view = dm.labelled_only()
    assert len(view.splits["train"]) == 12 and bool((view.splits["train"][:]["labels"] != UNLABELLED).all())
    assert len(dm.splits["train"]) == 85  # the view is a copy: the run's own split is untouched
    assert view.splits["validation"] is dm.splits["validation"]
    batch = next(iter(view.train_dataloader()))
    assert bool((batch["labels"] != UNLABELLED).all())


def test_text_pairs_with_a_transfer_set_are_refused(drug_files, tmp_path):
    with pytest.raises(ValueError, match="data.text_pair_column=other: sentence pairs cannot take unlabelled"):
        TextClassificationDataModule(
            tokenizer=packaged_minilm(), data_files=drug_files, text_pair_column="other", unlabeled="x.txt"
        )


# ---- config checks (before any model loads) -----------------------------------------------------------
def _cfg(*dotlist: str):
    base = OmegaConf.create(
        {
            "task": "classification",
            "teacher": {"_target_": "x"},
            "augment": {},
            "data": {"_target_": "d", "label_fraction": 1.0, "unlabeled": None, "teacher_labels": None},
            "loss": {
                "kd": {"_target_": "litdistill.losses.SoftTargetKL"},
                "ce": {"_target_": "litdistill.losses.HardCE"},
            },
        }
    )
    return OmegaConf.merge(base, OmegaConf.from_dotlist(list(dotlist)))


def test_a_transfer_set_needs_a_teacher_and_a_soft_target_loss():
    check_transfer_set(_cfg("data.label_fraction=0.1"))  # kd + ce: fine
    check_transfer_set(_cfg("data.label_fraction=0.1", "loss.kd=null", "data.teacher_labels=dir"))  # LLM labels
    cfg = _cfg("data.unlabeled=pool.txt", "loss.kd=null")
    with pytest.raises(ValueError, match=r"loss=\['ce'\] has only hard-label terms.*add a soft-target term"):
        check_transfer_set(cfg)
    with pytest.raises(ValueError, match="rows without a label need a teacher to score them, but teacher=null"):
        check_transfer_set(_cfg("data.label_fraction=0.5", "teacher=null"))
    with pytest.raises(ValueError, match=r"data.label_fraction=1.5"):
        check_transfer_set(_cfg("data.label_fraction=1.5"))
    with pytest.raises(ValueError, match="apply to classification data"):
        check_transfer_set(_cfg("data.label_fraction=0.5", "task=causal_lm"))


# ---- hard CE over the labelled rows of a step: exact under accumulation ----------------------------
def _micro_batches() -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    torch.manual_seed(4)
    logits_t = torch.randn(10, 3, dtype=torch.float64)
    labels = torch.tensor([0, UNLABELLED, UNLABELLED, UNLABELLED, 2, 1, 0, UNLABELLED, 2, UNLABELLED])
    sizes = [4, 4, 2]  # micro-batches with 1, 3 and 1 labelled rows
    batches, start = [], 0
    for size in sizes:
        batches.append({"labels": labels[start : start + size], "rows": torch.arange(start, start + size)})
        start += size
    return batches, logits_t, labels


def _hand_loss(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """0.5 * mean over ALL rows of T^2 KL(teacher_T || student_T) + 0.5 * mean over LABELLED rows of CE."""
    p = torch.softmax(t / temperature, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(s / temperature, -1))).sum(-1) * temperature**2
    labelled = labels != UNLABELLED
    ce = -torch.log_softmax(s[labelled], -1).gather(1, labels[labelled, None]).squeeze(1)
    return 0.5 * kl.mean() + 0.5 * ce.mean()


def test_accumulated_micro_batches_give_the_step_mean_over_labelled_rows_for_ce_and_all_rows_for_kd():
    batches, t, labels = _micro_batches()
    s0 = torch.randn(10, 3, dtype=torch.float64)
    kd, ce = SoftTargetKL(temperature=2.0, weight=0.5), HardCE(weight=0.5)
    accumulate = 3

    s_acc = s0.clone().requires_grad_()
    for batch in StepTokenCounts(batches, accumulate, labelled_rows):  # the real wrapper tags the step's counts
        rows = batch["rows"]
        student, teacher = ModelOutputs(logits=s_acc[rows]), ModelOutputs(logits=t[rows])
        loss = kd.weight * kd(student, teacher, batch) + ce.weight * ce(student, teacher, batch)
        (loss / accumulate).backward()  # what Lightning does with accumulate_grad_batches=3

    s_ref = s0.clone().requires_grad_()
    _hand_loss(s_ref, t, labels, 2.0).backward()
    assert torch.allclose(s_acc.grad, s_ref.grad, atol=1e-12)

    # without the step's counts each micro-batch averages its own rows: the lone labelled row of batch 0
    # would weigh as much as batch 1's three. The check above must be able to fail.
    s_naive = s0.clone().requires_grad_()
    for batch in batches:
        rows = batch["rows"]
        student, teacher = ModelOutputs(logits=s_naive[rows]), ModelOutputs(logits=t[rows])
        loss = kd.weight * kd(student, teacher, batch) + ce.weight * ce(student, teacher, batch)
        (loss / accumulate).backward()
    assert not torch.allclose(s_naive.grad, s_ref.grad, atol=1e-6)


# ---- ... and across data-parallel ranks (real gloo processes) -----------------------------------------
RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from tests.test_transfer_set import rank_gradient

dist.init_process_group("gloo")  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
try:
    grad = rank_gradient(dist.get_rank(), **torch.load(sys.argv[1]))
    if dist.get_rank() == 0:
        torch.save(grad, sys.argv[2])
finally:
    dist.destroy_process_group()
"""


def rank_gradient(rank: int, s0: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One rank's step: 5 of the 10 rows, DDP averaging the gradient of a stand-in parameter."""
    student = torch.nn.Linear(1, 1, bias=False)  # a stand-in parameter set, so DDP averages real gradients
    student.weight.data.fill_(1.0)
    ddp = torch.nn.parallel.DistributedDataParallel(student)
    rows = torch.arange(rank * 5, rank * 5 + 5)  # rank 0: 1 labelled row of 5, rank 1: 4 of 5
    batch = {"labels": labels[rows], "rows": rows}
    [batch] = list(StepTokenCounts([batch], 1, labelled_rows))
    batch = across_ranks(batch)  # the counts summed over ranks, the world size folded into accumulate
    logits = ddp(torch.ones(5, 1)).view(5, 1) * s0[rows]  # [5, 3]: d loss / d weight = the loss's sum
    student_out, teacher_out = ModelOutputs(logits=logits), ModelOutputs(logits=t[rows])
    loss = 0.5 * SoftTargetKL(2.0)(student_out, teacher_out, batch) + 0.5 * HardCE()(student_out, teacher_out, batch)
    loss.backward()
    return student.weight.grad.clone()


def test_ddp_ranks_with_unequal_labelled_rows_give_the_global_mean_gradient(tmp_path):
    """Two processes launched as torchrun would (env://), each waited on with a bound: a rank that hangs
    fails the test instead of the suite."""
    from tests.test_cache_ddp import base_env, free_port

    torch.manual_seed(8)
    s0 = torch.randn(10, 3, dtype=torch.float64).float()
    t = torch.randn(10, 3)
    labels = torch.tensor([1, UNLABELLED, UNLABELLED, UNLABELLED, UNLABELLED, 0, 2, 1, UNLABELLED, 2])
    inputs, out, script = tmp_path / "inputs.pt", tmp_path / "grad.pt", tmp_path / "rank.py"
    torch.save({"s0": s0, "t": t, "labels": labels}, inputs)
    script.write_text(RANK_SCRIPT)
    env = partial(base_env, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(inputs), str(out)],
            env=env(RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        codes = [proc.wait(180) for proc in ranks]
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait(30)
    assert codes == [0, 0], [proc.stdout.read()[-2000:] for proc in ranks]
    got = torch.load(out)

    weight = torch.ones(1, requires_grad=True)
    _hand_loss((weight * s0).double(), t.double(), labels, 2.0).backward()  # one process, all 10 rows
    assert torch.allclose(got.double().flatten(), weight.grad.double(), atol=1e-5)
