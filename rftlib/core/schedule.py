"""Learning-rate schedule: linear warmup, then cosine decay to zero, in optimizer steps.

Example:
    >>> [round(cosine_with_warmup(s, warmup=2, total=6), 3) for s in range(7)]
    [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0]
"""

from __future__ import annotations

import math

from rftlib.errors import ParameterError


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if total <= 0 or warmup < 0:
        raise ParameterError(f"schedule needs total > 0 and warmup >= 0 steps, got total={total}, warmup={warmup}.")
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
