"""Change notifications: LISTEN for the trigger's NOTIFY, or plain waiting where none can arrive.

LISTEN needs a session that outlives transactions. A transaction pooler (PgBouncer in transaction
mode, Supabase's port 6543) hands each transaction to any server connection and resets it, so a
LISTEN there hears nothing: ``hears_notifications`` sends itself one and waits for it, and the
watcher falls back to polling when it does not arrive (or takes a direct ``--listen-url``).
A dropped LISTEN connection is reopened; the wait then reports a change, since one may have been
missed while it was down.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["CHANNEL", "ListenFeed", "PollFeed", "hears_notifications"]

CHANNEL = "sections_changed"
PROBE_WAIT_S = 1.5
_STEP_S = 0.5  # how often a wait looks at the stop event
_log = logging.getLogger(__name__)


def hears_notifications(listen: psycopg.Connection[Any], notify: psycopg.Connection[Any]) -> bool:
    """Whether a NOTIFY sent on ``notify`` reaches a LISTEN on ``listen`` (never through a
    transaction pooler)."""
    channel = f"sections_probe_{uuid.uuid4().hex}"
    listen.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
    try:
        notify.execute("select pg_notify(%s, 'probe')", (channel,))
        return any(True for _ in listen.notifies(timeout=PROBE_WAIT_S, stop_after=1))
    finally:
        listen.execute(sql.SQL("unlisten {}").format(sql.Identifier(channel)))


class PollFeed:
    """No notifications: every wait runs its full timeout (or until stopped)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def wait(self, timeout: float) -> bool:
        self.stop.wait(timeout)
        return False


class ListenFeed:
    """LISTEN on a session of its own; ``wait`` returns on a change to ``collection`` (None: any)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], collection: str | None, stop: threading.Event):
        self.connect, self.collection, self.stop = connect, collection, stop
        self.conn: psycopg.Connection[Any] | None = None
        self._open()

    def _open(self) -> None:
        self.conn = self.connect()
        self.conn.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))

    def _reopen(self) -> bool:
        self.close()
        try:
            self._open()
        except psycopg.Error as error:
            _log.warning("cannot listen for changes yet: %s", str(error).strip().splitlines()[0] if str(error) else error)
            return False
        return True

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.conn is None:
                if self._reopen():
                    return True  # changes may have come while it was down
                self.stop.wait(min(left, 2.0))
                continue
            try:
                for note in self.conn.notifies(timeout=min(left, _STEP_S)):
                    if self.collection is None or note.payload == self.collection:
                        return True
            except psycopg.Error:
                self.close()
        return False

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:  # already gone
                pass
