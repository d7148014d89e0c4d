"""Exact per-token loss normalisation across gradient-accumulation micro-batches.

Lightning divides each micro-batch loss by ``accumulate_grad_batches``; a per-micro-batch token mean
then over-weights tokens in short micro-batches. This wrapper reads the micro-batches of one
optimizer step ahead and tags each with the real-token count of the whole step
(``num_tokens_in_step``) and the accumulation factor (``accumulate``); token losses use them
(see ``litdistill.losses.divergences.token_scale``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch


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
            yield {**batch, "num_tokens_in_step": torch.tensor(float(total)), "accumulate": torch.tensor(float(self.accumulate))}
