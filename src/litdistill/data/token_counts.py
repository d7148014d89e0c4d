"""Exact per-token loss normalisation across gradient-accumulation micro-batches and data-parallel ranks.

Lightning divides each micro-batch loss by ``accumulate_grad_batches``; a per-micro-batch token mean
then over-weights tokens in short micro-batches. This wrapper reads the micro-batches of one
optimizer step ahead and tags each with the real-token count of the whole step
(``num_tokens_in_step``) and the accumulation factor (``accumulate``); token losses use them
(see ``litdistill.losses.base.token_scale``). Under data parallelism :func:`across_ranks` sums the
count over the ranks and folds the world size into ``accumulate`` (DDP, FSDP and DeepSpeed average
gradients over ranks), so the step's loss is the token mean over every rank's real tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that count in a causal-LM batch: shifted labels that are not -100."""
    return int((batch["labels"][:, 1:] != -100).sum())


class StepTokenCounts:
    """Iterable over ``loader`` yielding the same batches, tagged with their step's token count."""

    def __init__(self, loader: Iterable[dict[str, Any]], accumulate: int) -> None:
        self.loader, self.accumulate = loader, accumulate

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self) -> Any:
        """The loader's sampler, so Lightning's per-epoch ``set_epoch`` reaches it through this wrapper."""
        return getattr(self.loader, "sampler", None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        step: list[dict[str, Any]] = []
        for batch in self.loader:
            step.append(batch)
            if len(step) == self.accumulate:
                yield from self._tag(step)
                step = []
        yield from self._tag(step)  # a last, shorter step: Lightning still divides by the full factor

    def _tag(self, step: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        total = sum(real_tokens(b) for b in step)
        for batch in step:
            yield {
                **batch,
                "num_tokens_in_step": torch.tensor(float(total)),
                "accumulate": torch.tensor(float(self.accumulate)),
            }


def across_ranks(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with its step's token count summed over the data-parallel ranks, ``accumulate`` times
    the world size; unchanged without a count or a process group of several ranks.

    Rank r's micro-batch then returns ``W A S_r / N`` (``N`` the real tokens of the step on all ranks);
    the ranks' averaged gradient is that of ``sum_r S_r / N``: the exact token mean of the global step.
    One all-reduce of a scalar per micro-batch, at the same point on every rank (equal loader lengths).
    """
    if "num_tokens_in_step" not in batch or not (dist.is_available() and dist.is_initialized()):
        return batch
    world = dist.get_world_size()
    if world == 1:
        return batch
    total = torch.as_tensor(batch["num_tokens_in_step"], dtype=torch.float32).clone()
    dist.all_reduce(total)  # on the batch's device: NCCL needs CUDA tensors, gloo CPU ones
    accumulate = torch.as_tensor(batch.get("accumulate", 1.0), dtype=torch.float32, device=total.device)
    return {**batch, "num_tokens_in_step": total, "accumulate": accumulate * world}
