"""How teacher outputs are laid out in a shard: full logits, or top-k rows in one of two codecs.

Every shard holds the rows of a run of consecutive examples; ``offsets`` [n+1] (int32) says which
rows belong to which example (one row per example for classification, one per real token for
causal LMs). The payload, per row:

``logits``   ``logits`` [R, C] in the store dtype (float16 | bfloat16 | float32): C * (2 or 4) bytes.

``topk`` / codec ``raw`` (default): ``logprobs`` [R, k] in the store dtype, ``ids`` [R, k] as uint16
(vocabularies up to 65,536) or int32, ``log_tail`` [R] in the store dtype:
k * (2 + 2) + 2 bytes at float16 on a 32k vocabulary (514 bytes at k = 128).

``topk`` / codec ``packed``: ``row_max`` [R] float32 (the top-1 log-prob) and ``log_tail`` [R]
float16, and one zlib blob of, per row, the ids sorted ascending as byte planes of their gaps
(``id[j] - id[j-1]``: low bytes, then high bytes) and an 8-bit code per entry,
``round((row_max - logprob) * 16)``: a log-probability grid of 1/16 nat (relative error of each
stored probability <= 3.2%) reaching 15.9 nats below the top-1. Entries further down (code 255)
carry less than 1.3e-7 of the top-1's probability each; their mass is added to the tail bucket and
their slot decodes as empty (id -1), which keeps the k+1-bucket divergence exact for what is kept.
Sorted gaps of k ids out of V are small numbers, so the high planes compress to about a bit per id.

``hidden`` (next to either, when a hidden-state loss needs them; train split only): the teacher's raw
hidden states of the stored layers, ``hidden_states`` [R_h, L, H] in the store dtype, one row per real
token (attention mask 1: the positions :class:`~litdistill.losses.HiddenStateLoss` averages over),
and ``hidden_offsets`` [n+1] (int32) for them: L * H * (2 or 4) bytes per token.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor

from litdistill.core.outputs import TopK
from litdistill.losses.features import position_mask
from litdistill.losses.sparse import FLOOR

CODECS = ("raw", "packed")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
PACKED_STEP = 1.0 / 16.0  # nats per 8-bit code
PACKED_FOLDED = 255  # code of an entry folded into the tail


def value_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"cache.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def id_dtype(vocab: int) -> torch.dtype:
    return torch.uint16 if vocab <= 65536 else torch.int32


def _gap_bytes(vocab: int) -> int:
    return 2 if vocab <= 1 << 16 else 3 if vocab <= 1 << 24 else 4


# ---- encode ---------------------------------------------------------------------------------------
def encode_logits(rows: Tensor, dtype: str) -> dict[str, Tensor]:
    return {"logits": rows.to(value_dtype(dtype)).contiguous()}


def encode_topk(topk: TopK, vocab: int, dtype: str, codec: str) -> dict[str, Tensor]:
    """Payload tensors for top-k rows ``topk`` ([R, k] sorted largest first, [R] log tails)."""
    if codec == "raw":
        vdt = value_dtype(dtype)
        return {
            "logprobs": topk.logprobs.to(vdt).contiguous(),
            "ids": topk.ids.to(torch.int32).to(id_dtype(vocab)).contiguous(),
            "log_tail": topk.log_tail.to(vdt).contiguous(),
        }
    if codec == "packed":
        return _encode_packed(topk, vocab)
    raise ValueError(f"cache.codec must be one of {list(CODECS)}, got {codec!r}")


def _encode_packed(topk: TopK, vocab: int) -> dict[str, Tensor]:
    lp = topk.logprobs.double().cpu().numpy()
    ids = topk.ids.cpu().numpy().astype(np.int64)
    tail = topk.log_tail.double().cpu().numpy()
    rows, k = lp.shape
    row_max = lp.max(axis=1) if k else np.zeros(rows)
    row_max32 = row_max.astype(np.float32)
    q = np.rint((row_max32.astype(np.float64)[:, None] - lp) / PACKED_STEP)
    folded = q >= PACKED_FOLDED
    codes = np.where(folded, PACKED_FOLDED, q).astype(np.uint8)
    if folded.any():  # their mass joins the tail bucket
        folded_lse = np.log(np.where(folded, np.exp(lp), 0.0).sum(axis=1))
        tail = np.where(folded.any(axis=1), np.logaddexp(tail, folded_lse), tail)
    order = np.argsort(np.where(folded, vocab, ids), axis=1, kind="stable")  # valid ids ascending, folded last
    ids_s = np.take_along_axis(ids, order, axis=1)
    codes_s = np.take_along_axis(codes, order, axis=1)
    ids_s = np.maximum.accumulate(np.where(codes_s == PACKED_FOLDED, -1, ids_s), axis=1)  # folded: gap 0
    gaps = np.diff(ids_s, axis=1, prepend=0).astype(np.uint32)
    planes = [((gaps >> (8 * b)) & 0xFF).astype(np.uint8).tobytes() for b in range(_gap_bytes(vocab))]
    blob = zlib.compress(b"".join(planes) + codes_s.tobytes(), 9)
    return {
        "packed": torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy()),
        "row_max": torch.from_numpy(row_max32.copy()),
        "log_tail": torch.from_numpy(np.maximum(tail, FLOOR).astype(np.float16)),
    }


# ---- decode ---------------------------------------------------------------------------------------
def decode_topk(tensors: dict[str, Tensor], k: int, vocab: int, codec: str) -> TopK:
    if codec == "raw":
        return TopK(tensors["logprobs"], tensors["ids"].to(torch.int64), tensors["log_tail"])
    rows = tensors["row_max"].shape[0]
    raw = np.frombuffer(zlib.decompress(tensors["packed"].numpy().tobytes()), dtype=np.uint8)
    nb = _gap_bytes(vocab)
    if raw.size != (nb + 1) * rows * k:
        raise ValueError(f"packed payload has {raw.size} bytes, expected {(nb + 1) * rows * k}")
    planes = raw[: nb * rows * k].reshape(nb, rows, k).astype(np.int64)
    gaps = sum(planes[b] << (8 * b) for b in range(nb)) if nb else np.zeros((rows, k), np.int64)
    ids = np.cumsum(gaps, axis=1)
    codes = raw[nb * rows * k :].reshape(rows, k)
    folded = codes == PACKED_FOLDED
    row_max = tensors["row_max"].numpy().astype(np.float32)
    lp = row_max[:, None] - codes.astype(np.float32) * np.float32(PACKED_STEP)
    lp = np.where(folded, np.float32(FLOOR), lp)
    ids = np.where(folded, -1, ids)
    return TopK(torch.from_numpy(lp), torch.from_numpy(ids), tensors["log_tail"])


# ---- hidden states ---------------------------------------------------------------------------------
def hidden_positions(batch: dict[str, Tensor]) -> Tensor:
    """[B, T] bool: the positions a stored hidden row covers. The attention mask where the batch has
    one, else every position: what ``losses.features.position_mask`` averages a [B, T, H] feature over."""

    return position_mask(batch["input_ids"].unsqueeze(-1), batch)  # one definition: the loss's own


def encode_hidden(rows: Tensor, counts: list[int], dtype: str) -> dict[str, Tensor]:
    """``hidden_states`` [R, L, H] in the store dtype and ``hidden_offsets`` [n+1] int32 from ``counts`` rows per
    example."""
    offsets = torch.zeros(len(counts) + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(torch.as_tensor(counts, dtype=torch.int64), 0).to(torch.int32)
    return {"hidden_states": rows.to(value_dtype(dtype)).contiguous(), "hidden_offsets": offsets}


def pop_hidden(tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
    """Take a shard's hidden states out of ``tensors``: (offsets [n+1] int64, rows [R, L, H]), or None."""
    if "hidden_states" not in tensors:
        return None
    return tensors.pop("hidden_offsets").to(torch.int64), tensors.pop("hidden_states")


def payload_rows(tensors: dict[str, Tensor]) -> int:
    for name in ("logits", "logprobs", "row_max"):
        if name in tensors:
            return int(tensors[name].shape[0])
    raise KeyError("shard payload without rows")
