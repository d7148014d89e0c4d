"""Classification students on an LLM's labels (black-box distillation, the ADE case study).

The "LLM" is a chat-completions server on 127.0.0.1 whose responder reads the sentence the way a
competent but imperfect labeller would: cue phrases of adverse events, and a wrong answer on a
deterministic ~15% of sentences. Both stages run through the real CLI in subprocesses.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from tests.test_cli import run_cli
from tests.test_generation_client import KEY_ENV, SECRET, FakeChatServer
from tests.test_generation_run import assert_secret_nowhere, write_jsonl

from litdistill.data import TextClassificationDataModule
from litdistill.data.synthetic import make_drug_event_dataset
from litdistill.data.teacher_labels import TEACHER_LOGITS, read_teacher_labels, relabel
from litdistill.models.loading import packaged_minilm as packaged

ADE_CUES = (
    "induced",
    "developed",
    "associated with",
    "resolved after withdrawal",
    "occurred during",
    "attributed to",
    "caused recurrence",
)
WRONG_SHARE = 0.15


def llm_says_ade(sentence: str) -> bool:
    cue = any(c in sentence.lower() for c in ADE_CUES)
    wrong = int(hashlib.sha256(sentence.encode()).hexdigest(), 16) % 1000 < 1000 * WRONG_SHARE
    return cue != wrong


class LabellingServer(FakeChatServer):
    """Answers the ade_label prompt with Yes/No and the answer token's logprobs (p=0.85 for its answer)."""

    @staticmethod
    def label_logprobs(prompt: str, k: int) -> tuple[str, dict]:
        sentence = prompt.rsplit("Sentence:", 1)[-1].strip()
        ade = llm_says_ade(sentence)
        answer, other = ("Yes", "No") if ade else ("No", "Yes")
        alts = [(answer, math.log(0.85)), (other, math.log(0.15))][:k]
        first = {
            "token": answer,
            "logprob": alts[0][1],
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alts],
        }
        return answer, {"content": [first]}


def generate_cli(server: FakeChatServer, inputs: list[Path], out: Path, tmp_path: Path) -> None:
    run_cli(
        [
            "generate",
            "prompt=ade_label",
            f"teacher_api.base_url={server.url}",
            "teacher_api.model=gpt-3.5-turbo",
            f"teacher_api.api_key_env={KEY_ENV}",
            "teacher_api.backoff_base=0.01",
            "teacher_api.timeout=5",
            f"input.path=[{','.join(str(p) for p in inputs)}]",
            "input.field=text",
            f"output_dir={out}",
            "progress=false",
        ],
        tmp_path,
    )


@pytest.fixture
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def test_llm_labels_end_to_end_teacher_and_student_scored_on_gold(tmp_path, _key):
    files = {
        k: Path(v)
        for k, v in make_drug_event_dataset(str(tmp_path / "data"), n_train=160, n_val=32, n_test=96, seed=3).items()
    }
    labels_dir = tmp_path / "labels"
    with LabellingServer() as server:
        generate_cli(server, [files["train"], files["test"]], labels_dir, tmp_path)
    assert len((labels_dir / "dataset.jsonl").read_text().splitlines()) == 160 + 96

    run_cli(
        [
            "teacher=null",
            "student=pretrained",
            "student.name_or_path=${litdistill.minilm:}",
            "data=files",
            "loss=kd_ce",
            "report.repeats=3",
            "data.teacher_label_type=soft",
            f"data.teacher_labels={labels_dir}",
            *(f"data.data_files.{s}={p}" for s, p in files.items()),
            "data.max_length=32",
            "data.batch_size=16",
            "trainer.max_epochs=2",
        ],
        tmp_path,
    )
    run = next((tmp_path / "outputs" / "distill" / "runs").iterdir())
    report = json.loads((run / "report.json").read_text())
    teacher, student = report["models"]["teacher"], report["models"]["student"]

    test_rows = read_csv(files["test"])
    llm_acc = sum(llm_says_ade(r["text"]) == (r["label"] == "1") for r in test_rows) / len(test_rows)
    assert teacher["metrics"]["acc"] == pytest.approx(llm_acc, abs=1e-6)  # the LLM's labels, scored on gold
    assert teacher["metrics"]["acc"] > report["majority_class_rate"] + 0.15  # a competent teacher, not one class
    assert "gpt-3.5-turbo" in teacher["source"] and teacher["labelled_fraction"] == 1.0
    assert teacher["train_rows"] == {"kept": 160, "dropped": 0}
    assert set(student["metrics"]) == {"acc", "f1"} and 0.0 <= report["agreement"] <= 1.0
    assert "baseline" in report["models"]  # soft labels: the hard-label student trains beside it
    assert "LLM labels (gpt-3.5-turbo)" in (run / "report.md").read_text()
    assert_secret_nowhere(run)
    assert_secret_nowhere(labels_dir)


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _records(rows: list[tuple[str, int, list[float] | None]]) -> list[dict]:
    return [
        {"id": f"r{i}", "text": t, "label": y, "status": "ok", **({"soft_label": p} if p else {})}
        for i, (t, y, p) in enumerate(rows)
    ]


def test_relabel_replaces_train_labels_drops_unlabelled_and_keeps_log_probs(tmp_path, tokenizer_dir):
    files = make_drug_event_dataset(str(tmp_path / "data"), n_train=40, n_val=8, n_test=12, seed=1)
    dm = TextClassificationDataModule(tokenizer=tokenizer_dir, data_files=files, max_length=24, batch_size=8)
    gold = dm.raw_splits()
    train_texts, test_texts = gold["train"]["text"], gold["test"]["text"]
    labelled = [
        (t, 1 - y, [0.3, 0.7] if y == 0 else [0.6, 0.4]) for t, y in zip(train_texts[:30], gold["train"]["label"][:30])
    ]
    labelled += [(t, 1, [0.1, 0.9]) for t in test_texts[:10]]
    source = write_jsonl(tmp_path / "dataset.jsonl", _records(labelled))

    dm = TextClassificationDataModule(
        tokenizer=tokenizer_dir,
        data_files=files,
        max_length=24,
        batch_size=8,
        teacher_labels=str(source),
        teacher_label_type="soft",
    )
    raw = dm.raw_splits()
    assert raw["train"]["text"] == train_texts[:30]  # the 10 rows the LLM did not label are dropped
    assert raw["train"]["label"] == [1 - y for y in gold["train"]["label"][:30]]
    assert raw["validation"]["label"] == gold["validation"]["label"]  # held-out splits keep gold
    assert raw["test"]["label"] == gold["test"]["label"]
    assert dm.teacher_test_labels.tolist() == [1] * 10 + [-1] * 2
    assert dm.teacher_label_counts == {"kept": 30, "dropped": 10}
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch[TEACHER_LOGITS].shape == (8, 2)
    assert torch.allclose(batch[TEACHER_LOGITS].exp().sum(-1), torch.ones(8), atol=1e-5)
    assert TEACHER_LOGITS not in next(iter(dm.val_dataloader()))
    stand_in = dm.labels_teacher  # the teacher is the soft labels: no weights, nothing to run
    assert stand_in.outputs_in_batch and not list(stand_in.parameters())
    with pytest.raises(
        RuntimeError, match=r"come from the soft labels in .*dataset.jsonl, which covers only the splits \['train'\]"
    ):
        stand_in.distill_forward({"input_ids": batch["input_ids"]}, frozenset({"logits"}), "classification")
    with pytest.raises(ValueError, match=r"data.teacher_label_type='fuzzy'; valid types: \['hard', 'soft'\]"):
        TextClassificationDataModule(
            tokenizer=tokenizer_dir, data_files=files, teacher_labels=str(source), teacher_label_type="fuzzy"
        )
    hard = TextClassificationDataModule(tokenizer=tokenizer_dir, data_files=files, teacher_labels=str(source))
    assert hard.labels_teacher is None  # hard labels are plain labels: no teacher at all


def test_teacher_label_errors_name_the_bad_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_teacher_labels(tmp_path / "missing", 2)
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"id": "a", "prompt": "q", "response": "r", "status": "ok"}])
    with pytest.raises(ValueError, match="holds no labelled records"):
        read_teacher_labels(answers, 2)
    out_of_range = write_jsonl(tmp_path / "bad.jsonl", _records([("s", 3, None)]))
    with pytest.raises(ValueError, match=r"label 3, outside 0..1"):
        read_teacher_labels(out_of_range, 2)
    conflict = write_jsonl(tmp_path / "conflict.jsonl", _records([("s", 0, None), ("s", 1, None)]))
    with pytest.raises(ValueError, match="both 0 and 1"):
        read_teacher_labels(conflict, 2)
    hard_only = read_teacher_labels(write_jsonl(tmp_path / "hard.jsonl", _records([("s", 1, None)])), 2)
    from datasets import Dataset

    ds = Dataset.from_dict({"text": ["s", "t"], "label": [0, 0]})
    with pytest.raises(ValueError, match="no soft_label"):
        relabel(ds, hard_only, "text", "label", "soft", "train")
    with pytest.raises(ValueError, match=r"teacher_label_type='fuzzy'; valid types: \['hard', 'soft'\]"):
        relabel(ds, hard_only, "text", "label", "fuzzy", "train")
    with pytest.raises(ValueError, match="none of the 1 'train' sentences"):
        relabel(ds.select([1]), hard_only, "text", "label", "hard", "train")


def test_teacher_labels_with_a_teacher_model_is_refused_before_training(tmp_path, _key):
    files = make_drug_event_dataset(str(tmp_path / "data"), n_train=16, n_val=8, n_test=8, seed=2)
    source = write_jsonl(tmp_path / "dataset.jsonl", _records([(r["text"], 0, None) for r in read_csv(files["train"])]))
    proc = run_cli(
        [
            "teacher=tiny_bert",
            "student=tiny_bert",
            "tokenizer=${litdistill.minilm:}",
            "data=files",
            f"data.teacher_labels={source}",
            *(f"data.data_files.{s}={p}" for s, p in files.items()),
        ],
        tmp_path,
        check=False,
    )
    assert proc.returncode != 0 and "add teacher=null" in proc.stderr


def test_ade_splits_command_writes_the_splits_and_names_a_missing_corpus(tmp_path):
    import subprocess
    import sys

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "DRUG-AE.rel").write_text(
        "".join(f"{i}|Drug {i} caused rash {i}.|rash|1|2|drug|3|4\n" for i in range(10))
    )
    (corpus / "ADE-NEG.txt").write_text("".join(f"{i} NEG Drug {i} treated gout {i}.\n" for i in range(10)))
    out = tmp_path / "splits"
    cmd = [sys.executable, "-m", "litdistill.data.ade", "--corpus-dir", str(corpus), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {split: read_csv(out / f"{split}.csv") for split in ("train", "validation", "test")}
    assert [len(r) for r in rows.values()] == [14, 2, 4]
    texts = [r["text"] for split in rows.values() for r in split]
    assert len(set(texts)) == 20  # no sentence in two splits
    missing = subprocess.run(
        [*cmd[:4], str(tmp_path / "nope"), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode != 0 and "DRUG-AE.rel" in missing.stderr and "not found" in missing.stderr


def test_an_llm_labels_an_unlabelled_pool_which_joins_the_train_split(tmp_path, tokenizer_dir):
    """The ADE case study end to end on the data side: the LLM labelled the gold train sentences and an
    unlabelled pool; every pool sentence it labelled trains with its label, the rest are dropped."""
    files = make_drug_event_dataset(str(tmp_path / "data"), n_train=20, n_val=4, n_test=4, seed=2)
    pool = [f"Patient {i} developed rash on lithium." for i in range(6)]
    (tmp_path / "pool.txt").write_text("\n".join(pool) + "\n")
    gold = TextClassificationDataModule(tokenizer=tokenizer_dir, data_files=files).raw_splits()
    labelled = [(t, 0, None) for t in gold["train"]["text"]] + [(t, 1, None) for t in pool[:4]]
    source = write_jsonl(tmp_path / "dataset.jsonl", _records(labelled))
    dm = TextClassificationDataModule(
        tokenizer=tokenizer_dir,
        data_files=files,
        unlabeled=str(tmp_path / "pool.txt"),
        teacher_labels=str(source),
    )
    train = dm.raw_splits()["train"]
    assert (
        list(train["text"]) == list(gold["train"]["text"]) + pool[:4]
    )  # the 2 pool sentences the LLM skipped: dropped
    assert list(train["label"]) == [0] * 20 + [1] * 4
    assert dm.transfer_counts.unlabeled == 6 and dm.teacher_label_counts == {"kept": 24, "dropped": 2}


def test_llm_paraphrases_from_generate_feed_the_transfer_set(tmp_path, _key):
    """`litdistill generate prompt=paraphrase` against a real HTTP server; its output dir is data.unlabeled."""
    files = make_drug_event_dataset(str(tmp_path / "data"), n_train=12, n_val=4, n_test=4, seed=4)
    out = tmp_path / "paraphrases"
    with FakeChatServer() as server:
        run_cli(
            [
                "generate",
                "prompt=paraphrase",
                f"teacher_api.base_url={server.url}",
                f"teacher_api.api_key_env={KEY_ENV}",
                f"input.path={files['train']}",
                "input.field=text",
                f"output_dir={out}",
                "progress=false",
            ],
            tmp_path,
        )
        assert all("Rewrite the sentence" in body["messages"][0]["content"] for body in server.bodies)
    train_texts = [r["text"] for r in read_csv(files["train"])]
    dm = TextClassificationDataModule(tokenizer=packaged(), data_files=files, label_fraction=0.5, unlabeled=str(out))
    train = dm.raw_splits()["train"]
    assert dm.transfer_counts.unlabeled == 12
    assert list(train["text"])[12:] == [f"Answer to: {t}" for t in train_texts]  # the server's "paraphrases"
    assert list(train["label"])[12:] == [-100] * 12
