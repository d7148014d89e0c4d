"""The student in deployment formats: ONNX (run by onnxruntime) and dynamic int8, checked.

Both are optional (``export.onnx``, ``export.int8`` in the config). Each exported file is loaded back
and run on held-out batches, and compared with the PyTorch student (argmax agreement and the largest
logit gap). :func:`export_formats` also hands back a runner for each format, so that the report can time
the formats in the same interleaved rounds as the models (``cpu_speeds``), not in a separate measurement::

    from litdistill.models.export_formats import export_onnx, onnx_session, onnx_logits
    export_onnx(student, batch, "student.onnx", task="classification")
    logits = onnx_logits(onnx_session("student.onnx", threads=2), batch)

ONNX uses the TorchScript exporter (``dynamo=False``: no onnxscript needed) with dynamic batch and
sequence axes. int8 is ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``; the file
holds the quantized state dict and loads onto the exported Hugging Face folder (:func:`load_int8`).
"""

from __future__ import annotations

import copy
import inspect
import io
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from litdistill.core.forward import MODEL_INPUTS
from litdistill.core.io import atomic_file, atomic_write_bytes
from litdistill.models.loading import auto_class

log = logging.getLogger(__name__)

ONNX_FILE = "student.onnx"
INT8_FILE = "student_int8.pt"


# ---- ONNX --------------------------------------------------------------------------------------
class _LogitsOnly(nn.Module):
    """Positional inputs in, logits out: the graph ONNX sees (no cache, no dict outputs)."""

    def __init__(self, model: nn.Module, input_names: list[str], causal: bool) -> None:
        super().__init__()
        self.model, self.input_names, self.causal = model, input_names, causal

    def forward(self, *inputs: Tensor) -> Tensor:
        kwargs: dict[str, Any] = dict(zip(self.input_names, inputs))
        if self.causal:
            kwargs["use_cache"] = False
        return self.model(**kwargs).logits


def model_input_names(model: nn.Module, batch: dict[str, Tensor]) -> list[str]:
    """The model inputs present in ``batch`` that the model's forward accepts (Llama takes no token types)."""
    params = inspect.signature(model.forward).parameters
    return [name for name in MODEL_INPUTS if name in batch and name in params]


def export_onnx(
    model: nn.Module, example: dict[str, Tensor], path: str | Path, task: str = "classification", opset: int = 17
) -> Path:
    """Write ``model`` (logits only) to ``path`` with dynamic batch and sequence axes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = model_input_names(model, example)
    causal = task == "causal_lm"
    was_training = model.training
    device = next(model.parameters()).device
    wrapper = _LogitsOnly(model.cpu().eval(), names, causal).eval()
    inputs = tuple(example[name][:2].cpu() for name in names)  # two rows: nothing specialises to batch 1
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if causal else {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            with atomic_file(path) as tmp:  # a failed export leaves the previous file, and no partial one
                torch.onnx.export(
                    wrapper,
                    inputs,
                    str(tmp),
                    dynamo=False,
                    input_names=names,
                    output_names=["logits"],
                    dynamic_axes=axes,
                    opset_version=opset,
                    do_constant_folding=True,
                )
    finally:
        model.to(device).train(was_training)
    return path


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (what the report times).

    Spinning is off: by default onnxruntime's idle threads busy-wait after each run, which takes
    the cores from whatever runs next in the process (the PyTorch models timed beside it).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: Any, batch: dict[str, Tensor]) -> Tensor:
    feeds = {i.name: batch[i.name].detach().cpu().long().numpy() for i in session.get_inputs()}
    return torch.from_numpy(session.run(["logits"], feeds)[0])


# ---- int8 --------------------------------------------------------------------------------------
def quantize_int8(model: nn.Module) -> nn.Module:
    """A dynamic-int8 copy of ``model`` (weights of every ``nn.Linear`` in int8, activations float)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def save_int8(quantized: nn.Module, path: str | Path) -> Path:
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_int8(hf_dir: str | Path, path: str | Path, task: str = "classification") -> nn.Module:
    """Rebuild the int8 student: load the exported Hugging Face folder, quantize, load the int8 weights."""

    model = auto_class(task).from_pretrained(str(hf_dir))
    quantized = quantize_int8(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    quantized.load_state_dict(state)
    return quantized.eval()


# ---- checks and timing ---------------------------------------------------------------------------
def torch_logits(model: nn.Module, batch: dict[str, Tensor], task: str = "classification") -> Tensor:
    names = model_input_names(model, batch)
    device = next(model.parameters()).device
    with torch.inference_mode():
        return _LogitsOnly(model, names, task == "causal_lm")(*(batch[n].to(device) for n in names)).float().cpu()


def compare_logits(
    reference: Callable[[dict[str, Tensor]], Tensor],
    candidate: Callable[[dict[str, Tensor]], Tensor],
    batches: Iterable[dict[str, Tensor]],
    task: str = "classification",
) -> dict[str, float]:
    """Argmax agreement and largest absolute logit difference of ``candidate`` vs ``reference``
    (causal LMs: over real tokens only)."""
    agree = counted = 0
    max_diff = 0.0
    for batch in batches:
        ref, cand = reference(batch).float(), candidate(batch).float()
        if task == "causal_lm":
            mask = batch["attention_mask"].bool().cpu()
            ref, cand = ref[mask], cand[mask]
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        counted += ref.shape[0]
        max_diff = max(max_diff, float((ref - cand).abs().max()) if ref.numel() else 0.0)
    return {"agreement": agree / max(counted, 1), "max_abs_diff": max_diff}


def file_size_mb(*paths: str | Path) -> float:
    files = [Path(p) for p in paths]
    files += [Path(str(p) + ".data") for p in paths if Path(str(p) + ".data").is_file()]  # ONNX external data
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


@dataclass
class ExportedFormats:
    """The exported formats' report rows (file, size, fidelity) and, for timing, a callable per format
    that runs it on keyword tensor inputs (``runner(**batch)``), as a model is called."""

    threads: int
    rows: dict[str, dict[str, Any]]
    runners: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def section(self) -> dict[str, Any]:
        """The report's ``exports`` section."""
        return {"threads": self.threads, "batch_size": 1, "formats": self.rows}


def export_formats(
    student: nn.Module,
    batches: list[dict[str, Tensor]],
    out_dir: str | Path,
    *,
    task: str = "classification",
    onnx: bool = True,
    int8: bool = True,
    threads: int = 1,
    opset: int = 17,
    hf_dir: str | Path | None = None,
) -> ExportedFormats:
    """Export, reload and check the student, on held-out ``batches`` (the first is the ONNX export
    example). The ``pytorch`` row is the Hugging Face folder ``hf_dir`` loaded back (its speed is the
    student's own); ``onnx`` and ``int8`` get runners. ONNX sessions get ``threads`` intra-op threads,
    the thread count the report times at.
    """
    out_dir = Path(out_dir)
    example = batches[0]
    was_training = student.training
    student = student.cpu().eval()
    ref_cache: dict[int, Tensor] = {}

    def reference(batch: dict[str, Tensor]) -> Tensor:
        key = id(batch)
        if key not in ref_cache:
            ref_cache[key] = torch_logits(student, batch, task)
        return ref_cache[key]

    steps = ["pytorch"] + (["onnx"] if onnx else []) + (["int8"] if int8 else [])
    exported = ExportedFormats(threads, {})  # the pytorch row is the student: timed as the student
    try:
        with tqdm(total=len(steps), desc="exporting the student", unit="format") as bar:
            weights = sorted(Path(hf_dir).glob("*.safetensors")) if hf_dir else []
            row: dict[str, Any] = {
                "file": str(Path(hf_dir).name) + "/" if hf_dir else None,
                "size_mb": file_size_mb(*weights) if weights else None,
            }
            if hf_dir:  # the folder a user deploys, loaded back as plain transformers would
                reloaded = auto_class(task).from_pretrained(str(hf_dir)).eval()
                row.update(compare_logits(reference, lambda b: torch_logits(reloaded, b, task), batches, task))
            exported.rows["pytorch"] = row
            bar.update()
            if onnx:
                bar.set_postfix_str("onnx")
                path = export_onnx(student, example, out_dir / ONNX_FILE, task, opset)
                session = onnx_session(path, threads)
                exported.rows["onnx"] = {
                    "file": path.name,
                    "size_mb": file_size_mb(path),
                    **compare_logits(reference, lambda b: onnx_logits(session, b), batches, task),
                }
                exported.runners["onnx"] = lambda **inputs: onnx_logits(session, inputs)
                bar.update()
            if int8:
                bar.set_postfix_str("int8")
                path = save_int8(quantize_int8(student), out_dir / INT8_FILE)
                quantized = (
                    load_int8(hf_dir, path, task) if hf_dir else quantize_int8(student)
                )  # what a user would load
                exported.rows["int8"] = {
                    "file": path.name,
                    "size_mb": file_size_mb(path),
                    **compare_logits(reference, lambda b: torch_logits(quantized, b, task), batches, task),
                }
                exported.runners["int8"] = quantized
                bar.update()
    finally:
        student.train(was_training)
    return exported
