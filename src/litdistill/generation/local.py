"""A local Hugging Face causal LM as the teacher: batched ``model.generate`` with left padding.

The prompt is the tokenizer's chat template (``add_generation_prompt=True``) when it has one, else the
messages' contents joined by newlines (the same text :func:`litdistill.data.sft.encode_example` builds
for the student). ``temperature: 0`` is greedy decoding; ``temperature > 0`` samples (``top_p``,
``seed``). For label templates the soft label is the softmax of the first generated position's logits,
summed over each class's answer-word tokens and renormalised over the classes.

Results go through the same store as the HTTP teacher, so resume semantics are identical; a batch
that raises (out of memory, say) becomes failed records for its prompts, retried on the next run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from litdistill.generation.client import ChatResult, ConfigError, Usage

if TYPE_CHECKING:
    from litdistill.generation.templates import PromptTemplate

log = logging.getLogger("litdistill.generation")


class LocalHFTeacher:
    """``model.generate`` over batches of chat prompts."""

    def __init__(
        self,
        name_or_path: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "float32",
        quantization: str | None = None,
        max_prompt_length: int | None = None,
        model_name: str | None = None,
    ) -> None:
        import torch

        from litdistill.models.loading import DTYPES, QUANTIZATIONS, load_tokenizer

        if dtype not in DTYPES:
            raise ConfigError(f"teacher_api.dtype={dtype!r} is not a dtype; valid: {sorted(DTYPES)}")
        if quantization is not None and quantization not in QUANTIZATIONS:
            raise ConfigError(f"teacher_api.quantization={quantization!r}; valid: {list(QUANTIZATIONS)} or null")
        if model is None and not name_or_path:
            raise ConfigError(
                "teacher_api.name_or_path is empty; set it to a Hugging Face model id or a local "
                "directory, e.g. teacher_api.name_or_path=Qwen/Qwen2.5-0.5B-Instruct"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"teacher_api.batch_size={batch_size!r} must be an integer >= 1")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name_or_path)  # type: ignore[arg-type]
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
        self.tokenizer.truncation_side = "left"
        if model is not None:
            model.eval()
            if not getattr(model, "is_quantized", False) and next(model.parameters()).device != self.device:
                model.to(self.device)
        self._model = model
        self._load = (name_or_path, dtype, quantization)
        self.model_name = model_name or name_or_path or getattr(model, "name_or_path", "local")
        self.batch_size = batch_size
        self.max_prompt_length = max_prompt_length
        self.usage = Usage()
        self.stop_requested = False

    @property
    def model(self) -> Any:
        """The model, loaded on first use (a rerun with nothing left to do never loads it)."""
        if self._model is None:
            from litdistill.models.loading import load_pretrained

            name_or_path, dtype, quantization = self._load
            self._model = load_pretrained(name_or_path, task="causal_lm", dtype=dtype, quantization=quantization)
            if quantization is None:
                self._model.to(self.device)
            self._model.eval()
        return self._model

    # -- prompts ------------------------------------------------------------------------------------
    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_text(self, messages: Sequence[Mapping[str, str]]) -> str:
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
            )
        return "\n".join(m["content"] for m in messages) + "\n"

    def settings(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The generation settings that identify a result (part of the store key)."""
        temperature = float(params.get("temperature") or 0.0)
        out = {"max_new_tokens": int(params.get("max_tokens") or 256), "do_sample": temperature > 0}
        if temperature > 0:
            out.update(temperature=temperature, top_p=float(params.get("top_p") or 1.0), seed=params.get("seed"))
        if self.max_prompt_length:
            out["max_prompt_length"] = int(self.max_prompt_length)
        out["chat_template"] = self.uses_chat_template
        return out

    def _label_token_ids(self, template: PromptTemplate) -> list[list[int]]:
        """Token ids that start each class's answer words (ids claimed by two classes are dropped)."""
        per_class: list[set[int]] = []
        for cls in template.labels:
            ids: set[int] = set()
            for word in {*cls.words, cls.name}:
                for variant in {
                    word,
                    word.lower(),
                    word.capitalize(),
                    " " + word,
                    " " + word.lower(),
                    " " + word.capitalize(),
                }:
                    enc = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
                    if len(enc) == 1 and enc[0] != self.tokenizer.unk_token_id:
                        ids.add(enc[0])
            per_class.append(ids)
        shared = {
            i for a in range(len(per_class)) for b in range(a + 1, len(per_class)) for i in per_class[a] & per_class[b]
        }
        return [sorted(ids - shared) for ids in per_class]

    # -- generation ---------------------------------------------------------------------------------
    def generate_batch(
        self,
        batch: Sequence[Sequence[Mapping[str, str]]],
        params: Mapping[str, Any],
        template: PromptTemplate | None = None,
    ) -> list[ChatResult]:
        import torch

        start = time.monotonic()
        settings = self.settings(params)
        texts = [self.prompt_text(m) for m in batch]
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=not self.uses_chat_template,
            truncation=bool(self.max_prompt_length),
            max_length=self.max_prompt_length,
        )
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        want_soft = template is not None and template.parser == "label" and template.soft_labels
        eos = self.tokenizer.eos_token_id
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings["max_new_tokens"],
            "do_sample": settings["do_sample"],
            "pad_token_id": self.tokenizer.pad_token_id,
            "return_dict_in_generate": True,
            "output_logits": want_soft,
        }
        if eos is not None:
            kwargs["eos_token_id"] = eos
        if settings["do_sample"]:
            kwargs.update(temperature=settings["temperature"], top_p=settings["top_p"])
            if settings.get("seed") is not None:
                torch.manual_seed(int(settings["seed"]))
        else:  # plain greedy, whatever the model's generation_config suggests
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        new_tokens = out.sequences[:, width:]
        soft: list[list[float] | None] = [None] * len(batch)
        if want_soft and getattr(out, "logits", None):
            class_ids = self._label_token_ids(template)  # type: ignore[arg-type]
            if all(class_ids):
                probs = torch.softmax(out.logits[0].float(), dim=-1)
                mass = torch.stack([probs[:, ids].sum(-1) for ids in class_ids], dim=-1)
                mass = mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)
                soft = [row.tolist() for row in mass.cpu()]
            else:
                log.warning(
                    "template %r: no single-token answer word for some class in this tokenizer; no soft labels",
                    template.name,
                )  # type: ignore[union-attr]
        results = []
        elapsed = time.monotonic() - start
        for i in range(len(batch)):
            ids = new_tokens[i].tolist()
            finish = "length"
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos) + 1]
                finish = "stop"
            completion = len(ids)
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            usage = {"prompt_tokens": int(enc["attention_mask"][i].sum()), "completion_tokens": completion}
            self.usage.add(usage)
            results.append(
                ChatResult(
                    True,
                    content=text,
                    finish_reason=finish,
                    usage=usage,
                    attempts=1,
                    latency_s=elapsed / len(batch),
                    soft_label=soft[i],
                )
            )
        return results

    def map(
        self,
        requests: Sequence[tuple[Any, Sequence[Mapping[str, str]]]],
        params: Mapping[str, Any],
        on_result: Callable[[Any, ChatResult], None],
        progress: bool = True,
        desc: str = "generate",
        template: PromptTemplate | None = None,
    ) -> None:
        """Generate ``(tag, messages)`` requests in batches; ``on_result`` after each batch. Prompts are
        sorted by length so batches pad little."""
        from tqdm.auto import tqdm

        if not requests:
            return
        _ = self.model  # load it here: a model that cannot load is an error, not a failed record per prompt
        order = sorted(range(len(requests)), key=lambda i: len(self.prompt_text(requests[i][1])))
        with tqdm(total=len(order), desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True) as bar:
            for lo in range(0, len(order), self.batch_size):
                if self.stop_requested:
                    break
                chunk = [requests[i] for i in order[lo : lo + self.batch_size]]
                try:
                    results = self.generate_batch([m for _, m in chunk], params, template)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as err:  # noqa: BLE001  (recorded as failures, retried on the next run)
                    log.warning("a batch of %d prompts failed: %s: %s", len(chunk), type(err).__name__, err)
                    results = [
                        ChatResult(False, error=f"generate failed: {type(err).__name__}: {err}"[:500], attempts=1)
                        for _ in chunk
                    ]
                for (tag, _), result in zip(chunk, results):
                    on_result(tag, result)
                bar.update(len(chunk))
