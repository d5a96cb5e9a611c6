"""Relay each running step's progress to the terminal of ``rft pipeline``.

Each step's kernel writes its progress bars' state to its own file (``RFT_PROGRESS_FILE``, see
:mod:`rftlib.progress`); a :class:`Relay` thread reads those files and shows one line per running
step: its name, the time it has run, the time left estimated from the step's last recorded time
(``book/results/pipeline/timings.csv``; without one, from the outermost bar's rate), and its bars
(``runs 2/6 · alphas 5/11``). On a terminal (TTY) the lines update in place twice a second; otherwise
(CI logs) they are printed every :data:`PLAIN_INTERVAL` seconds. Messages (a step starts, ends,
fails) go through :meth:`Relay.say`, above the live lines.

Example:
    >>> state = {"bars": [{"desc": "sweep", "n": 2, "total": 6, "elapsed": 30.0, "unit": "run"}]}
    >>> step_line("fashion-interpolate", 30.0, state, recorded=120.0)
    'fashion-interpolate  0:30 run, ~1:30 left  sweep 2/6'
    >>> step_line("fashion-interpolate", 30.0, state, recorded=None)
    'fashion-interpolate  0:30 run, ~1:00 left  sweep 2/6'
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from rftlib.progress import read_state

#: Seconds between plain (non-TTY) progress lines.
PLAIN_INTERVAL = 30.0
#: Seconds between redraws on a terminal.
TTY_INTERVAL = 0.5


def format_seconds(seconds: float | None) -> str:
    """``m:ss`` (or ``h:mm:ss``); ``?`` for unknown.

    Example:
        >>> format_seconds(65.4), format_seconds(3725), format_seconds(None)
        ('1:05', '1:02:05', '?')
    """
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def time_left(elapsed: float, recorded: float | None, state: Mapping[str, Any] | None) -> float | None:
    """Seconds left: the last recorded time minus the time run (0 once past it, ``None`` if the
    bars say there is more to do); without a record, the outermost bar's rate.

    Example:
        >>> time_left(10.0, 40.0, None), time_left(50.0, 40.0, None), time_left(5.0, None, None)
        (30.0, 0.0, None)
    """
    if recorded is not None and recorded > 0:
        return max(0.0, recorded - elapsed)
    bars = (state or {}).get("bars") or []
    outer = next((b for b in bars if b.get("total") and b.get("n")), None)
    if outer is None:
        return None
    n, total, t = float(outer["n"]), float(outer["total"]), float(outer.get("elapsed") or 0.0)
    return max(0.0, t * (total - n) / n)


def bars_text(state: Mapping[str, Any] | None) -> str:
    """The bars of a progress state: ``desc n/total`` each, outermost first, joined by `` · ``.

    Example:
        >>> bars_text({"bars": [{"desc": "runs", "n": 1, "total": 3}, {"desc": "", "n": 7, "total": None}]})
        'runs 1/3 · 7'
    """
    parts = []
    for b in (state or {}).get("bars") or []:
        count = f"{b.get('n', 0)}/{b['total']}" if b.get("total") else f"{b.get('n', 0)}"
        parts.append(f"{b.get('desc') or ''} {count}".strip())
    return " · ".join(parts)


def step_line(name: str, elapsed: float, state: Mapping[str, Any] | None, recorded: float | None) -> str:
    """One line for a running step: name, time run, time left, bars."""
    left = time_left(elapsed, recorded, state)
    line = f"{name}  {format_seconds(elapsed)} run, ~{format_seconds(left)} left"
    bars = bars_text(state)
    return f"{line}  {bars}" if bars else line


@dataclass
class _Running:
    progress_file: Path
    started: float
    recorded: float | None


class Relay:
    """Show the running steps' progress (see the module docstring); use as a context manager.

    Args:
        echo: where plain lines go (default: standard error).
        tty: update lines in place (default: whether standard error is a terminal and no ``echo``
            was given).
        interval: seconds between plain lines (default :data:`PLAIN_INTERVAL`).
    """

    def __init__(self, echo: Callable[[str], None] | None = None, tty: bool | None = None,
                 interval: float | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(tty) if tty is not None else (echo is None and self.stream.isatty())
        self.echo = echo or (lambda msg: print(msg, file=self.stream, flush=True))
        self.interval = interval if interval is not None else (TTY_INTERVAL if self.tty else PLAIN_INTERVAL)
        self._steps: dict[str, _Running] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._shown = 0  # live lines now on the terminal
        self._thread = threading.Thread(target=self._loop, name="rft-relay", daemon=True)

    def __enter__(self) -> "Relay":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._clear()

    def start(self, name: str, progress_file: str | os.PathLike, recorded: float | None = None) -> None:
        """A step started; its bars report to ``progress_file``."""
        with self._lock:
            self._steps[name] = _Running(Path(progress_file), time.monotonic(), recorded)

    def stop(self, name: str) -> None:
        """A step ended."""
        with self._lock:
            self._steps.pop(name, None)

    def lines(self) -> list[str]:
        """The current line of every running step."""
        now = time.monotonic()
        with self._lock:
            items = list(self._steps.items())
        return [step_line(n, now - r.started, read_state(r.progress_file), r.recorded) for n, r in items]

    def say(self, msg: str) -> None:
        """Print a message above the live lines."""
        with self._lock:
            self._clear()
            self.echo(msg)
            self._draw()

    def _clear(self) -> None:
        if self.tty and self._shown:
            self.stream.write(f"\x1b[{self._shown}F\x1b[J")
            self.stream.flush()
        self._shown = 0

    def _draw(self) -> None:
        if not self.tty:
            return
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        lines = [ln[:width] for ln in self.lines()]
        if lines:
            self.stream.write("".join(ln + "\n" for ln in lines))
            self.stream.flush()
        self._shown = len(lines)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self.tty:
                    self._clear()
                    self._draw()
                else:
                    for ln in self.lines():
                        self.echo(f"  … {ln}")


def timing_table(rows: list[Mapping[str, Any]]) -> str:
    """The final table of step times: step, status, seconds, and the previously recorded seconds.

    Example:
        >>> print(timing_table([{"step": "a", "status": "ran", "seconds": 12.5, "recorded": 10.0},
        ...                     {"step": "bb", "status": "failed", "seconds": 1.0, "recorded": None}]))
        step  status  time  before
        a     ran     0:12  0:10
        bb    failed  0:01  ?
    """
    table = [["step", "status", "time", "before"]] + [
        [str(r["step"]), str(r["status"]), format_seconds(r.get("seconds")), format_seconds(r.get("recorded"))]
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


__all__ = ["PLAIN_INTERVAL", "Relay", "bars_text", "format_seconds", "step_line", "time_left", "timing_table"]
