"""Exact per-token loss normalisation across gradient-accumulation micro-batches and data-parallel ranks.

Lightning divides each micro-batch loss by ``accumulate_grad_batches``; a per-micro-batch token mean
then over-weights tokens in short micro-batches. This wrapper reads the micro-batches of one
optimizer step ahead and tags each with the counts of the whole step and the accumulation factor
(``accumulate``); losses use them (see ``litdistill.losses.base.token_scale``):

* ``num_tokens_in_step``: the rows every soft-target loss averages over (a causal LM's real tokens,
  a classifier's examples);
* ``num_labelled_in_step`` (classification): the examples with a label, which hard CE averages over;
  with unlabelled transfer-set rows in the batches it is smaller than the example count.

Under data parallelism :func:`across_ranks` sums the counts over the ranks and folds the world size
into ``accumulate`` (DDP, FSDP and DeepSpeed average gradients over ranks), so the step's loss is the
mean over every rank's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

TOKENS = "num_tokens_in_step"
LABELLED = "num_labelled_in_step"
COUNTS = (TOKENS, LABELLED)


def real_tokens(batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Tokens that count in a causal-LM batch: shifted labels that are not -100."""
    return {TOKENS: int((batch["labels"][:, 1:] != -100).sum())}


def labelled_rows(batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """A classification batch: every example counts for the soft targets, the labelled ones for CE."""
    labels = batch["labels"]
    return {TOKENS: int(labels.shape[0]), LABELLED: int((labels != -100).sum())}


def step_counted(loader: Any, trainer: Any, count: Callable[[dict[str, Any]], dict[str, int]]) -> Any:
    """``loader`` wrapped in :class:`StepTokenCounts` when the trainer accumulates or runs several ranks."""
    accumulate = getattr(trainer, "accumulate_grad_batches", 1) if trainer else 1
    world = getattr(trainer, "world_size", 1) if trainer else 1  # ranks: counts summed in the step
    return StepTokenCounts(loader, accumulate, count) if accumulate > 1 or world > 1 else loader


class StepTokenCounts:
    """Iterable over ``loader`` yielding the same batches, tagged with their step's counts."""

    def __init__(
        self,
        loader: Iterable[dict[str, Any]],
        accumulate: int,
        count: Callable[[dict[str, Any]], dict[str, int]] = real_tokens,
    ) -> None:
        self.loader, self.accumulate, self.count = loader, accumulate, count

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
        counts = [self.count(b) for b in step]
        totals = {key: torch.tensor(float(sum(c[key] for c in counts))) for key in (counts[0] if counts else {})}
        for batch in step:
            yield {**batch, **totals, "accumulate": torch.tensor(float(self.accumulate))}


def across_ranks(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with its step's counts summed over the data-parallel ranks, ``accumulate`` times
    the world size; unchanged without a count or a process group of several ranks.

    Rank r's micro-batch then returns ``W A S_r / N`` (``N`` the rows of the step on all ranks);
    the ranks' averaged gradient is that of ``sum_r S_r / N``: the exact mean of the global step.
    One all-reduce of the counts per micro-batch, at the same point on every rank (equal loader lengths).
    """
    keys = [key for key in COUNTS if key in batch]
    if not keys or not (dist.is_available() and dist.is_initialized()):
        return batch
    world = dist.get_world_size()
    if world == 1:
        return batch
    totals = torch.stack([torch.as_tensor(batch[key], dtype=torch.float32) for key in keys])
    dist.all_reduce(totals)  # on the batch's device: NCCL needs CUDA tensors, gloo CPU ones
    accumulate = torch.as_tensor(batch.get("accumulate", 1.0), dtype=torch.float32, device=totals.device)
    return {**batch, **dict(zip(keys, totals.unbind())), "accumulate": accumulate * world}
