"""Progress of long work: a tqdm bar on a terminal, a plain line now and then elsewhere.

A tqdm bar redraws itself with carriage returns; written to a log file or a pipe it becomes
one endless line. So the bar is drawn only when stderr is a terminal; otherwise a plain
line (`desc: 120/360 steps (33%), 95 s, loss=5.8788`) goes to stderr at most every
`WMG_PROGRESS_EVERY` seconds (default 30) and once at the end. `quiet()` silences both.
"""
from __future__ import annotations

import sys
import time

from .config import env_number

_QUIET = False
_LOG_TO_STDERR = False


def configure(quiet: bool = False, logs_to_stderr: bool = False) -> None:
    """`quiet`: no banners, logs or progress. `logs_to_stderr`: keep stdout for results (set
    when a machine-readable format is asked for)."""
    global _QUIET, _LOG_TO_STDERR
    _QUIET, _LOG_TO_STDERR = quiet, logs_to_stderr


def log_stream():
    return sys.stderr if _LOG_TO_STDERR else sys.stdout


def log(msg: str = "") -> None:
    """A banner or log line for people: stdout, or stderr when stdout carries JSON/CSV; nothing when quiet."""
    if not _QUIET:
        print(msg, file=log_stream(), flush=True)


def interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """The subset of tqdm's interface the loops use, printed as occasional plain lines."""

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "it", every: float | None = None):
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.every = env_number("WMG_PROGRESS_EVERY") if every is None else every
        self.start = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def _line(self) -> str:
        pct = f" ({self.n / self.total:.0%})" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {time.monotonic() - self.start:.0f} s{tail}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self._line(), file=sys.stderr, flush=True)

    def set_postfix(self, refresh: bool = True, **kw) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        if not self.closed and self.n:
            print(self._line() + " done", file=sys.stderr, flush=True)
        self.closed = True


class _Silent(PlainProgress):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def bar(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "it"):
    """A progress bar for `total` units: tqdm on a terminal, plain lines otherwise, nothing
    when disabled or quiet."""
    if not enabled or _QUIET:
        return _Silent(total, desc, initial, unit)
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=True)
    return PlainProgress(total, desc, initial, unit)


def above_bar(echo, enabled: bool = True):
    """Print a log line above a live tqdm bar instead of through it."""
    if not enabled or _QUIET or not interactive():
        return echo
    from tqdm.auto import tqdm

    return lambda msg: tqdm.write(msg, file=log_stream())
