"""Progress bars (tqdm) that stay quiet in tests and logs when asked, and report to a pipeline.

Set ``RFT_PROGRESS=0`` to silence every bar (CI logs, batch jobs).

When ``RFT_PROGRESS_FILE`` names a file (``rft pipeline`` sets it for each step's kernel), every bar
that is not disabled by its caller also writes the state of the process's open bars there, as JSON
(``{"pid", "time", "bars": [{"desc", "n", "total", "elapsed", "unit"}, ...]}``, outermost bar
first), atomically (temporary file + rename) and at most :data:`WRITES_PER_SECOND` times a second;
a bar's last state is written when it closes. The pipeline's relay reads these files
(:mod:`rftlib.book.relay`). Bars silenced only by ``RFT_PROGRESS=0`` still report to the file.

Example:
    >>> sum(bar(range(3), disable=True))
    3
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "progress.json")
    >>> os.environ[PROGRESS_FILE_ENV] = path
    >>> with bar(total=4, desc="alphas", file=open(os.devnull, "w")) as b:
    ...     b.update(3)
    >>> state = read_state(path)
    >>> [(s["desc"], s["n"], s["total"]) for s in state["bars"]]
    [('alphas', 3, 4)]
    >>> del os.environ[PROGRESS_FILE_ENV]
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: Environment variable naming the file where bars report their state.
PROGRESS_FILE_ENV = "RFT_PROGRESS_FILE"
#: At most this many writes of the progress file per second (the last state of a closed bar always).
WRITES_PER_SECOND = 2.0

_lock = threading.Lock()
_open: dict[int, Any] = {}   # id(bar) -> bar, in creation order (outermost first)
_closed_last: list[dict[str, Any]] = []  # state of the last closed bars, kept when none is open
_last_write = [0.0]


def enabled() -> bool:
    """Whether bars are shown (``RFT_PROGRESS`` is not ``0``, ``false`` or ``no``)."""
    return os.environ.get("RFT_PROGRESS", "1") not in ("0", "false", "no")


def progress_file() -> str | None:
    """The file named by ``RFT_PROGRESS_FILE``, or ``None`` when it is unset or empty."""
    return os.environ.get(PROGRESS_FILE_ENV) or None


def _state(b: Any) -> dict[str, Any]:
    """One bar's state: description, count, total, seconds since it started, unit."""
    start = getattr(b, "start_t", None)
    elapsed = (b._time() - start) if start is not None else 0.0
    return {"desc": str(b.desc or "").rstrip(": "), "n": int(b.n), "total": b.total,
            "elapsed": round(float(elapsed), 3), "unit": str(b.unit)}


def _write(force: bool = False) -> None:
    """Write the open bars' states to the progress file (throttled unless ``force``)."""
    path = progress_file()
    if path is None:
        return
    now = time.monotonic()
    with _lock:
        if not force and now - _last_write[0] < 1.0 / WRITES_PER_SECOND:
            return
        _last_write[0] = now
        bars = [_state(b) for b in _open.values()] or list(_closed_last)
        payload = json.dumps({"pid": os.getpid(), "time": time.time(), "bars": bars})
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(payload)
            os.replace(tmp, path)
        except OSError:  # progress is best effort: never fail a computation over it
            try:
                os.unlink(tmp)
            except OSError:
                pass


def read_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The state written to a progress file, or ``None`` if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("bars"), list) else None


class _ReportingBar(tqdm):  # type: ignore[misc, valid-type]
    """A tqdm bar that also reports its state to ``RFT_PROGRESS_FILE``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with _lock:
            _open[id(self)] = self
        _write(force=True)

    def update(self, n: float | None = 1) -> bool | None:
        out = super().update(n)
        _write()
        return out

    def close(self) -> None:
        with _lock:
            mine = _open.pop(id(self), None)
            if mine is not None and not _open:
                _closed_last[:] = [_state(self)]
        if mine is not None:
            _write(force=True)
        super().close()


def bar(iterable: Iterable[T] | None = None, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar, disabled when ``disable`` or ``RFT_PROGRESS=0``; it reports to
    ``RFT_PROGRESS_FILE`` when that is set (unless ``disable``: nested bars that callers hide).

    Example:
        >>> list(bar(["a", "b"], disable=True, desc="letters"))
        ['a', 'b']
    """
    if disable or progress_file() is None:
        return tqdm(iterable, disable=disable or not enabled(), dynamic_ncols=True, **kwargs)
    if not enabled():
        kwargs.setdefault("file", open(os.devnull, "w"))  # noqa: SIM115 - tqdm writes to it until closed
    return _ReportingBar(iterable, dynamic_ncols=True, **kwargs)


__all__ = ["PROGRESS_FILE_ENV", "WRITES_PER_SECOND", "bar", "enabled", "progress_file", "read_state"]
