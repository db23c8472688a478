"""Stopping a training run cleanly, and telling whether a run's process still lives.

`GracefulStop` turns the first SIGINT (Ctrl-C) or SIGTERM into a request the
training loop sees after its current optimizer step: it writes a checkpoint and
stops, and the run is marked `interrupted`. A second signal stops at once (the
checkpoint of the last epoch end stays intact).

A SIGKILL cannot be caught. A running run records its host, pid and the pid's
start time; `reap_dead` (called by `wmg runs` and `wmg train --resume`) finds
runs whose process is gone.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Callable


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training: unwinds like Ctrl-C, so a comparison in progress is marked failed."""


def terminate_as_interrupt() -> None:
    """Make SIGTERM raise `Terminated` in the main thread (its default ends the process on the spot)."""
    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):
            raise Terminated

        signal.signal(signal.SIGTERM, handler)


class RunInterrupted(Exception):
    """Training stopped by a signal; the run is marked interrupted and can be resumed."""

    def __init__(self, message: str, signal_name: str | None):
        super().__init__(message)
        self.signal_name = signal_name


def _boot_relative_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def process_identity() -> tuple[str, int, int | None]:
    pid = os.getpid()
    return socket.gethostname(), pid, _boot_relative_start(pid)


def process_alive(host: str | None, pid: int | None, start: int | None) -> bool | None:
    """True or False for a process of this host; None when it cannot be told (another host, no pid)."""
    if not host or not pid or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return None
    if start is not None:
        now = _boot_relative_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    return True


class GracefulStop:
    """Context manager: the first SIGINT/SIGTERM sets `requested`; a second one raises KeyboardInterrupt."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.requested is not None

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = name
        self.echo(f"\n{name} received: finishing this step, saving a checkpoint, then stopping "
                  "(send it again to stop at once; the last epoch's checkpoint stays intact)")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
