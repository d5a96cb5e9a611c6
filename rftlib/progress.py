"""Progress bars (tqdm) that stay quiet in tests and logs when asked.

Set ``RFT_PROGRESS=0`` to silence every bar (CI logs, batch jobs).

Example:
    >>> sum(bar(range(3), disable=True))
    3
"""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    return os.environ.get("RFT_PROGRESS", "1") not in ("0", "false", "no")


def bar(iterable: Iterable[T] | None = None, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar, disabled when ``disable`` or ``RFT_PROGRESS=0``."""
    return tqdm(iterable, disable=disable or not enabled(), dynamic_ncols=True, **kwargs)
