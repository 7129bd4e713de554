"""SIGTERM and SIGINT stop training between meta-steps, after a checkpoint, never inside one.

The first signal is a request: the loop finishes its meta-step, commits a checkpoint and exits
with 128 + signum (143, 130). A second one stops at once, except while a checkpoint and its
manifest are being written: `deferred()` holds any signal until that commit is whole, so a
run can always be resumed from what it wrote last.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """Training stopped on a signal after committing `iteration`'s checkpoint: the job records
    `stopped` (not `failed`), and the process exits with `exit_code` (143, 130).

    A BaseException, as KeyboardInterrupt: it ends the whole sweep, which is what a user who
    presses Ctrl-C on a sweep wants; `except Exception` handlers let it through.
    """

    def __init__(self, signal_name: str, iteration: int, checkpoint: str | None, exit_code: int) -> None:
        super().__init__(f"stopped by {signal_name} after iteration {iteration}")
        self.signal_name, self.iteration, self.checkpoint, self.exit_code = (
            signal_name, iteration, checkpoint, exit_code)

    @classmethod
    def by(cls, signum: int, iteration: int, checkpoint: Any) -> "Stopped":
        return cls(signal.Signals(signum).name, iteration, None if checkpoint is None else str(checkpoint),
                   128 + signum)


class StopRequest:
    """While active, the first SIGTERM/SIGINT is only recorded; the loop polls `signum` after
    each meta-step, saves and stops. A second one raises KeyboardInterrupt (after any commit
    in progress, see `deferred`) — except in a run of several processes: torchrun forwards a
    terminal's Ctrl-C to every worker, which then receives it twice, and ends workers that
    outlast its own grace period itself."""

    def __init__(self, several: bool = False) -> None:
        self.signum: int | None = None
        self.several = several
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and not self.several:  # asked twice: the user does not want to wait
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals only go there
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


def _deliver(signum: int, handler: Any) -> None:
    """Act on a signal that arrived while deferred, as its handler would have then."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT until the block ends, then deliver them in order of arrival."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in received:
            _deliver(signum, signal.getsignal(signum))
