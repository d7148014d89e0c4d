"""Value checks shared by the losses and the teachers, so both refuse a bad value the same way."""

from __future__ import annotations

import math


def check_temperature(owner: str, value: float) -> float:
    """Temperatures divide logits: refuse zero, negatives and non-finite values wherever one is set."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: temperature must be a finite number > 0, got {value}")
    return value
