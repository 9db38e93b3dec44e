"""Ctrl-C and SIGTERM while a command runs: the first stops the run cleanly, the second at once.

Python's own Ctrl-C raises KeyboardInterrupt wherever the main thread happens to be (inside a
database call, between a reply and its write), and the interpreter then waits at exit for the
worker threads still inside a request or the model: 34 s, silent, measured with the simulator;
a second Ctrl-C during that wait ended in ``Exception ignored in: <module 'threading'>`` and a C++
``terminate`` (exit 134) from torch's threads. So while a run is in progress a signal only asks it
to stop (``on_first``: the service's stop event, read between requests); the command then writes
what arrived and ends with ``leave``. A second signal prints the same line and leaves at once.

``leave`` is ``os._exit``: a thread may still be inside a request or a forward pass that nobody
will wait for, and an interpreter that finalizes around live native threads is what aborted.
Everything that matters is done before it: what was paid for is committed, the output flushed.
A second signal first gives ``on_leave`` (the command's ``store.close``) ``LEAVE_GRACE_S`` on a
thread of its own: an embedded Postgres this process started is stopped, not left running with
nobody to stop it (the main thread may be holding any lock, so it is never waited on longer).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, NoReturn

__all__ = ["EXIT_CODES", "LEAVE_GRACE_S", "Signals", "leave"]

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report it
SHOW_CURSOR = "\x1b[?25h"  # a live progress bar hides it; os._exit would leave it hidden
LEAVE_GRACE_S = 10.0  # the most a second signal waits for on_leave (a fast stop takes ~1 s)


def leave(code: int, line: str | None = None) -> NoReturn:
    """End the process now with ``code``, after ``line`` (on stderr) and whatever is buffered."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe cannot hold the exit back
            pass
    if line is not None:
        tty = sys.stderr.isatty()
        text = f"{SHOW_CURSOR}\n{line}\n" if tty else f"{line}\n"
        try:
            os.write(2, text.encode("utf-8", "replace"))  # no lock: a signal may interrupt a print
        except OSError:
            pass
    os._exit(code)


class Signals:
    """Handlers for SIGINT and SIGTERM while the block runs; the previous ones come back after.

    ``on_first()`` runs on the first signal and must only set a flag (it runs between two bytecodes
    of the main thread, wherever that is). ``last_words()`` is the line a second signal prints
    before it leaves; it must not take locks. ``on_leave()`` (what the command holds, closed) runs
    on a thread of its own before a second signal leaves, for ``LEAVE_GRACE_S`` at most.
    ``received`` is the first signal, if any.
    """

    def __init__(self, on_first: Callable[[], None], last_words: Callable[[], str],
                 on_leave: Callable[[], None] | None = None):
        self.on_first, self.last_words, self.on_leave = on_first, last_words, on_leave
        self.received: signal.Signals | None = None
        self.said = False  # the command printed its line: a second signal only leaves
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.received or signal.SIGINT]

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
            self.on_first()
            return
        line = None if self.said else self.last_words()
        if self.on_leave is not None:
            closing = threading.Thread(target=_quietly, args=(self.on_leave,), name="sections-leave", daemon=True)
            closing.start()
            closing.join(LEAVE_GRACE_S)
        leave(EXIT_CODES.get(signal.Signals(signum), 130), line)


def _quietly(action: Callable[[], None]) -> None:
    """Run ``action``; a process on its way out has nobody left to tell of a failure."""
    try:
        action()
    except Exception:
        pass
