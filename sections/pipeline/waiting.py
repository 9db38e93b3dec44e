"""Waiting for another run: a section a concurrent run holds is not done until it is stored.

An ingest skips the due sections another live run has leased (that run is paying for them). If
the run then ended well, exit 0 would claim work that is not done, and if the other run dies,
nobody reports the gap. So after its own work the run waits: every ``poll_s`` it drops the
sections the other run has stored since (they count as unchanged: done, not by this run), takes
over those whose holder died (``Leases.take_over`` reaps dead workers first: a heartbeat a
minute old, or a process gone on this host) and embeds them itself. The progress display shows
``waiting`` meanwhile. A stop (the embedder's ``stop_requested``) ends the wait with
``Interrupted``.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from sections.engine.errors import Interrupted
from sections.fingerprint import Due
from sections.pipeline.backend import Backend, Leases
from sections.pipeline.outage import Patience
from sections.pipeline.stream import attach_result, embed_into
from sections.pipeline.tally import Tally
from sections.pipeline.writer import Writer
from sections.records import Embedder

__all__ = ["WAIT_POLL_S", "wait_for_others"]

WAIT_POLL_S = 1.0


def wait_for_others(backend: Backend, leases: Leases, embedder: Embedder, busy: dict[str, Due], tally: Tally,
                    patience: Patience, new_writer: Callable[[], Writer], poll_s: float = WAIT_POLL_S) -> None:
    """Wait until every section of ``busy`` (id → what this run wanted to embed) is stored by its
    holder or taken over and embedded here; ``busy`` empties as they are."""
    settings = embedder.settings
    stop = getattr(embedder, "stop_requested", None)
    if not isinstance(stop, threading.Event):
        stop = threading.Event()  # an embedder that cannot be stopped: the wait ends when the work does
    while busy:
        tally.waiting_for(len(busy))
        if stop.wait(poll_s):
            break
        stored = patience.call(lambda: backend.stored_hashes(settings.model, list(busy)))
        done = [section_id for section_id, due in busy.items() if stored.get(section_id) == due.digest]
        for section_id in done:
            del busy[section_id]
        tally.done_elsewhere(len(done))
        wanted = {section_id: due.digest for section_id, due in busy.items()}
        taken = patience.call(lambda: leases.take_over(settings, wanted)) if wanted else set()
        if taken:
            dues = [busy.pop(section_id) for section_id in sorted(taken)]
            tally.taken_over(len(dues))
            embed_into(embedder, iter(dues), new_writer(), tally)
    tally.waiting_for(0)
    if busy and stop.is_set():
        error = Interrupted(f"stopped while waiting for another run: {len(busy):,} sections")
        attach_result(error, tally.result())
        raise error
