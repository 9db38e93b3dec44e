"""Waiting out a database that is away, instead of spending what cannot be kept.

A run's calls into the backend (its writes, and the reads and leases that feed the embedder) go
through one ``Patience``. When a call fails because the database cannot be reached (the
backend's ``outage`` says so: a dropped connection, a pooler or server that is down), the run
holds its sending at once (the embedder's ``hold_sending``: replies in flight still arrive and are
kept), probes the database every ``probe_s`` (``Backend.reconnect``, a quick direct try that
renews the pool, so no reconnection backoff is waited out) and retries the call as soon as it
answers. Sending resumes when no call is waiting any more. After ``window_s`` without an answer
the call raises ``DatabaseAway`` and ``on_expire`` stops the run's sending for good (the replies
in flight get their grace); the writer spools what was answered (``sections.pipeline.spool``),
and the next run writes it before it sends anything.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sections.pipeline.backend import Backend

__all__ = ["DEFAULT_WAIT_S", "DatabaseAway", "OutagePolicy", "Patience"]

_log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_WAIT_S = 120.0


class DatabaseAway(RuntimeError):
    """The database stayed out of reach for the whole window: the run stops (what was answered is spooled)."""


@dataclass(frozen=True, slots=True)
class OutagePolicy:
    window_s: float = DEFAULT_WAIT_S  # how long a run waits for the database; 0: not at all
    probe_s: float = 1.0  # between tries while it is away (so a run is back within about a second)


class Patience:
    """One run's calls into its backend, retried through an outage. ``on_change(True)`` when the
    first call finds the database away, ``on_change(False)`` when the last waiting call got
    through (both from the thread that saw it)."""

    def __init__(self, backend: Backend, policy: OutagePolicy = OutagePolicy(),
                 on_change: Callable[[bool], None] | None = None, on_expire: Callable[[], None] | None = None):
        self.backend, self.policy, self.on_change, self.on_expire = backend, policy, on_change, on_expire
        self._lock = threading.Lock()
        self._waiting = 0  # calls waiting for the database now
        self.outages = 0  # how many times the database went away during the run
        self.given_up = threading.Event()  # no more waiting: the window passed, or the run was interrupted
        self.expired = False  # the window passed: ``on_expire`` was told (it stops the run's sending for good)

    def call(self, action: Callable[[], T]) -> T:
        try:
            return action()
        except Exception as error:
            if self.policy.window_s <= 0 or not self.backend.outage(error):
                raise
            return self._wait_out(action, error)

    def _wait_out(self, action: Callable[[], T], error: Exception) -> T:
        self._enter(error)
        deadline = time.monotonic() + self.policy.window_s
        try:
            while not self.given_up.is_set():
                if self.given_up.wait(min(self.policy.probe_s, max(0.0, deadline - time.monotonic()))):
                    break
                if self.backend.reconnect():
                    try:
                        return action()
                    except Exception as again:
                        if not self.backend.outage(again):
                            raise
                        error = again
                if time.monotonic() >= deadline:
                    self._expire()
                    break
            self.given_up.set()
            raise DatabaseAway(f"the database was out of reach for {self.policy.window_s:.0f} s "
                               f"({_first_line(error)})") from error
        finally:
            self._leave()

    def _expire(self) -> None:
        with self._lock:
            first, self.expired = not self.expired, True
        self.given_up.set()
        if first and self.on_expire is not None:
            self.on_expire()

    def give_up(self) -> None:
        """Stop waiting now (the run was interrupted): calls waiting for the database raise
        ``DatabaseAway`` at once, and the writer spools."""
        self.given_up.set()

    def _enter(self, error: Exception) -> None:
        with self._lock:
            self._waiting += 1
            first = self._waiting == 1
            self.outages += first
        if first:
            _log.info("database unreachable, sending held: %s", _first_line(error))
            if self.on_change is not None:
                self.on_change(True)

    def _leave(self) -> None:
        with self._lock:
            self._waiting -= 1
            last = self._waiting == 0
        if last and not self.given_up.is_set():
            _log.info("database back, sending resumed")
            if self.on_change is not None:
                self.on_change(False)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
