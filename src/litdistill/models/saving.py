"""Export the trained student as a plain Hugging Face folder (loadable without litdistill)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from litdistill.core.io import atomic_directory
from litdistill.models.loading import transformers_quiet

log = logging.getLogger(__name__)


def export_student(student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """``save_pretrained`` model and tokenizer into ``out_dir``, swapped in atomically.

    Only the student's own modules are saved: feature projections live in the losses, not here.
    """
    with atomic_directory(out_dir) as tmp, transformers_quiet():  # no "Writing model shards" bar per save
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def directory_size_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def weights_on_disk_mb(model: PreTrainedModel, scratch_dir: str | Path | None = None) -> float | None:
    """Size of the model's weights as ``save_pretrained`` writes them (safetensors), measured by writing them.

    Written to a temporary directory (under ``scratch_dir``) that is removed afterwards. None for a
    model without ``save_pretrained`` (several teachers, a cache reader) or one that cannot be
    serialised (the reason is logged).
    """
    if not hasattr(model, "save_pretrained"):
        return None
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix=".disk-size-") as tmp:
        try:
            with transformers_quiet():
                model.save_pretrained(tmp, safe_serialization=True)
        except Exception as err:  # e.g. a quantization backend without serialisation
            log.warning("size on disk of %s not measured: %s", type(model).__name__, err)
            return None
        return sum(f.stat().st_size for f in Path(tmp).rglob("*.safetensors")) / 2**20
