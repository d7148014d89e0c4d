"""Export the trained student as a plain Hugging Face folder (loadable without litdistill)."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from litdistill.io import atomic_directory


def export_student(student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """``save_pretrained`` model and tokenizer into ``out_dir``, swapped in atomically.

    Only the student's own modules are saved: feature projections live in the losses, not here.
    """
    with atomic_directory(out_dir) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def directory_size_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20
