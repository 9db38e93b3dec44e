"""``sections.pipeline`` ingest and sync over ``MemoryBackend`` with ``FakeStreamingEmbedder``: no Postgres.

``test_backend_contract.py`` shows the memory backend keeps PostgresBackend's promises, so these
tests exercise what production runs, in milliseconds.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
import time

import numpy as np
import pytest

from sections.engine.errors import ProviderFatalError
from sections.fingerprint import fingerprint, section_text
from sections.pipeline.ingest import IngestOptions, ingest
from sections.pipeline.outage import OutagePolicy
from sections.pipeline.spool import Spool
from sections.pipeline.stream import Keeping
from sections.pipeline.sync import SyncOptions, sync
from sections.records import Section, VectorRow
from fake_embedder import FakeStreamingEmbedder, StreamedSections
from memory_backend import MemoryBackend

MODEL = "fake-model"
FAST = IngestOptions(chunk_size=40, write_batch=32, flush_interval=0.01)


def _sections(n, prefix="s", content="content number {i} with some words"):
    return [{"id": f"{prefix}{i}", "title": f"Title {i}", "content": content.format(i=i)} for i in range(n)]


def _text(section):
    return section_text(section["title"], section["content"])


def _ingest(backend, sections, embedder, options=FAST, on_progress=None):
    return ingest(backend, sections, embedder, options, on_progress).summary


# -- ingest ------------------------------------------------------------------------------------------


def test_ingest_embeds_everything_then_a_rerun_skips_what_is_unchanged():
    backend = MemoryBackend()
    sections = _sections(150)
    embedder = FakeStreamingEmbedder()
    run = ingest(backend, iter(sections), embedder, FAST)
    assert run.summary == {"success_count": 150, "failed_count": 0, "skipped_count": 0, "failed_ids": [],
                           "errors": {}, "total_tokens": sum(len(_text(s).split()) for s in sections)}
    assert run.dimensions == {16}
    assert sorted(embedder.embedded) == sorted(_text(s) for s in sections)
    for s in (sections[0], sections[77], sections[-1]):
        assert np.array_equal(backend.vector(s["id"], MODEL), embedder.vector(_text(s)))  # none got another's
    again = FakeStreamingEmbedder()
    result = _ingest(backend, sections, again)
    assert result["skipped_count"] == 150 and result["success_count"] == 0 and again.embedded == []
    # other settings are other vectors: everything is due again
    assert _ingest(backend, sections[:5], FakeStreamingEmbedder(dimensions=8))["success_count"] == 5


def test_only_an_edited_section_is_re_embedded():
    backend = MemoryBackend()
    sections = _sections(60)
    _ingest(backend, sections, FakeStreamingEmbedder())
    edited = [dict(s) for s in sections]
    edited[3]["content"] = "new words"
    edited[9]["metadata"] = {"only": "metadata changed"}  # not part of the text: no new vector
    embedder = FakeStreamingEmbedder()
    result = _ingest(backend, edited, embedder)
    assert embedder.embedded == [section_text("Title 3", "new words")]
    assert result["success_count"] == 1 and result["skipped_count"] == 59
    assert np.array_equal(backend.vector("s3", MODEL), embedder.vector(section_text("Title 3", "new words")))
    assert backend.sections["s9"].metadata == {"only": "metadata changed"}


def test_blank_content_fails_with_empty_content_and_is_never_sent():
    backend = MemoryBackend()
    sections = _sections(10)
    sections[2]["content"] = "   \n\t "
    sections[5]["content"] = "POISON pill"
    embedder = FakeStreamingEmbedder()
    result = _ingest(backend, sections, embedder)
    assert result["success_count"] == 8 and result["failed_count"] == 2
    assert result["errors"] == {"s2": "empty content", "s5": "rejected by provider: poison"}
    assert not any("Title 2" in text for text in embedder.embedded)
    assert backend.failure("s2", MODEL) == ("empty content", 1)
    assert backend.failure("s5", MODEL) == ("rejected by provider: poison", 1)
    # a rerun tries them again (attempts go up) and skips the rest
    result = _ingest(backend, sections, FakeStreamingEmbedder())
    assert result["skipped_count"] == 8 and result["failed_count"] == 2
    assert backend.failure("s2", MODEL) == ("empty content", 2)


def test_an_unstorable_section_is_counted_as_failed_with_its_reason():
    backend = MemoryBackend()
    sections = _sections(5)
    sections[1]["content"] = "bad \x00 byte"
    sections.append({"id": None, "title": "no id", "content": "x"})
    embedder = FakeStreamingEmbedder()
    result = _ingest(backend, sections, embedder)
    assert result["success_count"] == 4 and result["failed_count"] == 2 and result["failed_ids"] == ["s1"]
    assert "NUL" in result["errors"]["s1"]
    assert "s1" not in backend.sections and backend.failure("s1", MODEL) is None  # nothing to refer to
    assert len(embedder.embedded) == 4


def test_a_fatal_provider_error_keeps_what_arrived_and_attaches_the_partial_summary():
    backend = MemoryBackend()
    sections = _sections(100)
    embedder = FakeStreamingEmbedder(window=20, fatal_after=45)
    with pytest.raises(ProviderFatalError) as caught:
        _ingest(backend, sections, embedder, IngestOptions(chunk_size=30, write_batch=1000))
    partial = caught.value.result
    assert partial["success_count"] == 45 and partial["failed_count"] == 0
    assert partial["total_tokens"] == embedder.total_tokens
    assert len(backend.vectors) == 45 and backend.failures == {}  # nothing recorded for the unanswered
    rerun = FakeStreamingEmbedder()
    result = _ingest(backend, sections, rerun)
    assert result["skipped_count"] == 45 and result["success_count"] == 55 and len(rerun.embedded) == 55


NO_WAITING = Keeping(OutagePolicy(window_s=0))  # a run that does not wait for its database


class BrokenWrites(MemoryBackend):
    """Stores ``good`` batches, then every write fails (the database went away)."""

    def __init__(self, good):
        super().__init__()
        self.good = good
        self.broke = threading.Event()

    def write_batch(self, settings, successes, failures):
        if self.good == 0:
            self.broke.set()
            raise ConnectionError("database went away")
        self.good -= 1
        return super().write_batch(settings, successes, failures)


def test_a_failing_write_stops_the_run_and_the_error_carries_the_result():
    backend = BrokenWrites(good=1)

    def wait_for_the_failure(i):
        if i == 200:
            assert backend.broke.wait(5)  # the writer has failed by now: the run must stop soon

    sections = StreamedSections(5000, before=wait_for_the_failure)
    with pytest.raises(ConnectionError) as caught:
        _ingest(backend, sections, FakeStreamingEmbedder(window=10),
                IngestOptions(chunk_size=50, write_batch=10, flush_interval=0.01, keeping=NO_WAITING))
    assert caught.value.result["success_count"] == 10 == len(backend.vectors)  # the batch that was stored
    assert sections.pulled <= 250  # stopped within a chunk of the failure, not at the end of the input


class SpyBackend(MemoryBackend):
    """A slow database that notes, at each write, how far the input was read and how much is stored."""

    def __init__(self, sections):
        super().__init__()
        self.input = sections
        self.writes = []  # (sections read so far, vectors stored before this batch)

    def write_batch(self, settings, successes, failures):
        self.writes.append((self.input.pulled, len(self.vectors)))
        time.sleep(0.01)  # the reading side must wait for it, not pile up outcomes in memory
        return super().write_batch(settings, successes, failures)


def test_memory_stays_bounded_while_streaming():
    sections = StreamedSections(3000)
    backend = SpyBackend(sections)
    embedder = FakeStreamingEmbedder(window=50)
    result = _ingest(backend, sections, embedder, IngestOptions(chunk_size=100, write_batch=50, flush_interval=0.02))
    assert result["success_count"] == 3000 and len(backend.vectors) == 3000
    assert embedder.max_held <= 50
    assert backend.writes[0][0] <= 500 and len(backend.writes) >= 30  # writing overlaps reading
    # read but not yet stored: at most a chunk + the embedder's window + the queue + a batch
    assert max(read - stored for read, stored in backend.writes) <= 100 + 50 + 100 + 50 + 50


def test_a_trickle_of_outcomes_is_written_within_the_flush_interval():
    backend = MemoryBackend()

    def wait_until_the_last_is_stored(i):
        deadline = time.monotonic() + 2
        while i and backend.vector(f"g{i - 1}", MODEL) is None:
            assert time.monotonic() < deadline, "an outcome sat unwritten past the flush interval"
            time.sleep(0.005)

    sections = StreamedSections(4, before=wait_until_the_last_is_stored)
    options = IngestOptions(chunk_size=1, write_batch=1000, flush_interval=0.02)
    assert _ingest(backend, sections, FakeStreamingEmbedder(window=1), options)["success_count"] == 4


def test_progress_reports_counts_as_the_run_goes():
    backend = MemoryBackend()
    sections = _sections(100)
    sections[0]["content"] = ""
    _ingest(backend, sections[50:], FakeStreamingEmbedder())
    seen = []
    result = _ingest(backend, sections, FakeStreamingEmbedder(), on_progress=seen.append)
    assert len(seen) >= 3 and all(set(counts) == {"success", "failed", "skipped", "pending", "tokens"}
                                  for counts in seen)
    assert [counts["success"] for counts in seen] == sorted(counts["success"] for counts in seen)
    assert seen[-1] == {"success": result["success_count"], "failed": result["failed_count"],
                        "skipped": result["skipped_count"], "pending": 0, "tokens": result["total_tokens"]}
    assert seen[-1] == {"success": 49, "failed": 1, "skipped": 50, "pending": 0, "tokens": seen[-1]["tokens"]}
    assert seen[-1]["tokens"] > 0


class BillsRetries(FakeStreamingEmbedder):
    """Bills ``extra`` tokens per stream beyond its outcomes' (a retried request is paid twice)."""

    extra = 7

    def stream_embeddings(self, items):
        self.usage.tokens += self.extra
        yield from super().stream_embeddings(items)


def test_total_tokens_is_what_the_embedder_billed_during_the_run():
    backend = MemoryBackend()
    sections = _sections(20)
    embedder = BillsRetries()
    embedder.usage.tokens = 1000  # billed before this run: not this run's
    seen = []
    result = _ingest(backend, sections, embedder, on_progress=seen.append)
    assert result["total_tokens"] == sum(len(_text(s).split()) for s in sections) + 7
    assert result["total_tokens"] == embedder.total_tokens - 1000
    assert seen[-1]["tokens"] == result["total_tokens"]  # the bar shows the bill, not the answers' sum
    assert [counts["tokens"] for counts in seen] == sorted(counts["tokens"] for counts in seen)


class SlowAnswers(FakeStreamingEmbedder):
    """Answers one text every ``pause`` seconds, as a slow provider's requests complete."""

    pause = 0.02

    def stream_embeddings(self, items):
        for outcome in super().stream_embeddings(items):
            time.sleep(self.pause)
            yield outcome


@pytest.mark.parametrize("run", ["ingest", "sync"])
def test_progress_moves_as_answers_arrive_not_only_when_they_commit(run):
    """A sync commits a whole claim at once and an ingest every write batch: the display must still
    move as requests complete (at least every REPORT_INTERVAL_S while answers arrive)."""
    backend = MemoryBackend()
    sections = _sections(60)
    seen = []

    def record(counts):
        seen.append((time.monotonic(), counts))

    if run == "sync":
        _stored(backend, sections)
        result = sync(backend, SlowAnswers(), claim_batch=500, on_progress=record).summary
    else:
        result = _ingest(backend, sections, SlowAnswers(),
                         IngestOptions(chunk_size=500, write_batch=1000, flush_interval=60), record)
    assert result["success_count"] == 60
    done = [c["success"] + c["failed"] + c["skipped"] + c["pending"] for _, c in seen]
    assert done == sorted(done) and done[-1] == 60 and seen[-1][1]["pending"] == 0
    moving = [(t, d) for (t, _), d in zip(seen, done) if 0 < d < 60]
    assert len(moving) >= 5, done  # 60 answers over ~1.2 s: reported while they arrive
    gaps = [b[0] - a[0] for a, b in zip(moving, moving[1:])]
    assert max(gaps) < 1.0, gaps


# -- sync --------------------------------------------------------------------------------------------


def _stored(backend, sections):
    backend.upsert_sections([Section(s["id"], s["title"], s["content"]) for s in sections])


def test_sync_embeds_only_the_sections_that_are_due():
    backend = MemoryBackend()
    sections = _sections(40)
    _ingest(backend, sections[:30], FakeStreamingEmbedder())
    _stored(backend, sections[30:] + [{"id": "s4", "title": "Title 4", "content": "edited"},
                                      {"id": "s5", "title": "Title 5", "content": ""}])
    embedder = FakeStreamingEmbedder()
    result = sync(backend, embedder, claim_batch=7).summary
    expected = sorted([_text(s) for s in sections[30:]] + [section_text("Title 4", "edited")])
    assert sorted(embedder.embedded) == expected
    assert result["success_count"] == 11 and result["skipped_count"] == 0
    assert result["errors"] == {"s5": "empty content"} and result["total_tokens"] == embedder.total_tokens
    again = FakeStreamingEmbedder()
    assert sync(backend, again).summary["failed_count"] == 1 and again.embedded == []  # only the blank one


def test_sync_claims_at_most_limit_sections():
    backend = MemoryBackend()
    _stored(backend, _sections(30))
    first = FakeStreamingEmbedder()
    assert sync(backend, first, claim_batch=5, limit=12).summary["success_count"] == 12
    assert len(first.embedded) == 12 and len(backend.vectors) == 12
    rest = FakeStreamingEmbedder()
    assert sync(backend, rest, claim_batch=5).summary["success_count"] == 18
    assert not set(first.embedded) & set(rest.embedded)


def test_sync_on_a_fatal_error_commits_what_arrived():
    backend = MemoryBackend()
    _stored(backend, _sections(50))
    with pytest.raises(ProviderFatalError) as caught:
        sync(backend, FakeStreamingEmbedder(window=10, fatal_after=15), claim_batch=50)
    assert caught.value.result["success_count"] == 15 == len(backend.vectors)
    assert backend.failures == {} and backend.leases == {}


BATCHES_OF_10 = SyncOptions(write_batch=10, flush_interval=60, keeping=NO_WAITING)


class InterruptedAfter(FakeStreamingEmbedder):
    """Answers ``n`` items, then the user presses Ctrl-C."""

    def __init__(self, n):
        super().__init__(window=5)
        self.n = n

    def stream_embeddings(self, items):
        for count, outcome in enumerate(super().stream_embeddings(items)):
            if count == self.n:
                raise KeyboardInterrupt
            yield outcome


def test_sync_on_a_failing_write_keeps_what_was_committed_and_carries_the_result():
    backend = BrokenWrites(good=1)
    _stored(backend, _sections(30))
    with pytest.raises(ConnectionError) as caught:
        sync(backend, FakeStreamingEmbedder(), claim_batch=10, options=BATCHES_OF_10)
    assert caught.value.result["success_count"] == 10 == len(backend.vectors)  # the batch that was written
    assert backend.leases == {}


def test_sync_interrupted_while_its_write_fails_raises_the_interrupt_with_the_result():
    backend = BrokenWrites(good=0)
    _stored(backend, _sections(30))
    with pytest.raises(KeyboardInterrupt) as caught:
        sync(backend, InterruptedAfter(3), claim_batch=10)
    assert caught.value.result["success_count"] == 0 and len(backend.vectors) == 0


class MeetsOthers(FakeStreamingEmbedder):
    """Waits, on its first stream, until every worker holds a claim: they hold claims at once."""

    def __init__(self, barrier, **kwargs):
        super().__init__(**kwargs)
        self.barrier = barrier

    def stream_embeddings(self, items):
        if self.barrier is not None:
            self.barrier.wait(timeout=5)
            self.barrier = None
        yield from super().stream_embeddings(items)


def test_syncs_in_threads_never_embed_a_section_twice():
    backend = MemoryBackend()
    _stored(backend, _sections(300))
    barrier = threading.Barrier(3)
    embedders = [MeetsOthers(barrier, seed=i, window=4) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda embedder: sync(backend, embedder, claim_batch=10), embedders))  # re-raises
    done = [text for e in embedders for text in e.embedded]
    assert len(done) == len(set(done)) == 300
    assert all(e.embedded for e in embedders)  # all three held work at once
    assert len(backend.vectors) == 300


# -- a database that blinks ------------------------------------------------------------------------------


class Blinks(MemoryBackend):
    """A database away from the ``after``-th write on, for ``writes`` failed writes (None: for good)."""

    def __init__(self, after, writes=None):
        super().__init__()
        self.after, self.writes = after, writes
        self.attempts = 0

    def write_batch(self, settings, successes, failures):
        self.attempts += 1
        if self.attempts > self.after and (self.writes is None or self.attempts <= self.after + self.writes):
            raise ConnectionError("server closed the connection unexpectedly")
        return super().write_batch(settings, successes, failures)


class HeldSends(FakeStreamingEmbedder):
    """Notes whether it was asked to hold its sending (as ``EmbeddingService.hold_sending`` is)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hold_sending = threading.Event()
        self.stop_requested = threading.Event()
        self.held = 0

    def stream_embeddings(self, items):
        for outcome in super().stream_embeddings(items):
            self.held += self.hold_sending.is_set()
            yield outcome


QUICK_PROBES = OutagePolicy(window_s=30, probe_s=0.01)


@pytest.mark.parametrize("run", ["ingest", "sync"])
def test_a_database_that_blinks_is_waited_out_and_every_answer_is_kept(run):
    backend = Blinks(after=2, writes=3)
    sections = _sections(200)
    embedder = HeldSends(window=10)
    changes = []
    keeping = Keeping(QUICK_PROBES, on_outage=changes.append)
    if run == "sync":
        _stored(backend, sections)
        result = sync(backend, embedder, claim_batch=50,
                      options=SyncOptions(write_batch=20, flush_interval=60, keeping=keeping)).summary
    else:
        result = _ingest(backend, sections, embedder,
                         IngestOptions(chunk_size=50, write_batch=20, flush_interval=60, keeping=keeping))
    assert result["success_count"] == 200 == len(backend.vectors) and result["failed_count"] == 0
    assert len(embedder.embedded) == 200  # nothing paid twice
    assert changes == [True, False]  # one outage: one line when it starts, one when it ends
    assert not embedder.hold_sending.is_set() and backend.leases == {}


def test_a_database_that_stays_away_spools_what_was_answered_and_the_rerun_writes_it_first(tmp_path):
    backend = Blinks(after=1)
    sections = _sections(100)
    spool = Spool(tmp_path / "spool.jsonl")
    keeping = Keeping(OutagePolicy(window_s=0.2, probe_s=0.01), spool=spool)
    first = HeldSends(window=10)
    with pytest.raises(Exception, match="out of reach") as caught:
        _ingest(backend, sections, first, IngestOptions(chunk_size=20, write_batch=10, flush_interval=60, keeping=keeping))
    stored = len(backend.vectors)
    assert stored == 10 and spool.added == len(first.embedded) - stored > 0
    assert str(spool.path) in str(caught.value)
    backend.writes = 0  # back
    rerun = FakeStreamingEmbedder()
    result = ingest(backend, sections, rerun, IngestOptions(keeping=Keeping(spool=Spool(spool.path))))
    assert result.from_spool == spool.added and not spool.path.exists()
    assert len(backend.vectors) == 100
    assert not set(first.embedded) & set(rerun.embedded)  # what the first run was answered is not bought again


# -- waiting for another run -------------------------------------------------------------------------


def test_an_ingest_waits_for_what_another_run_holds_and_takes_over_what_it_left():
    backend = MemoryBackend()
    sections = _sections(20)
    rows = [Section(s["id"], s["title"], s["content"]) for s in sections]
    backend.upsert_sections(rows)
    settings = FakeStreamingEmbedder().settings
    holding, release = threading.Event(), threading.Event()

    def other_run():
        with backend.worker("ingest") as other:
            assert other.take(settings, {row.id: fingerprint(row, settings) for row in rows[:10]}) == {
                f"s{i}" for i in range(10)}
            holding.set()
            release.wait(10)
            backend.write_batch(settings, [VectorRow(row.id, np.ones(8, np.float32), 1, fingerprint(row, settings))
                                           for row in rows[:4]], [])
        # it ends (or dies) holding s4..s9: their leases go with it

    seen = []
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(other_run)
        assert holding.wait(5)
        embedder = FakeStreamingEmbedder()
        threading.Timer(1.5, release.set).start()
        result = ingest(backend, sections, embedder, FAST, lambda counts: seen.append(counts.get("waiting", 0))).summary
        future.result()
    assert result["success_count"] == 16 and result["skipped_count"] == 4 and "busy_count" not in result
    assert sorted(embedder.embedded) == sorted(_text(s) for s in sections[4:])  # nothing paid twice
    assert 10 in seen and seen[-1] == 0  # the display said it was waiting for 10, then for none
    assert len(backend.vectors) == 20


def test_an_ingest_told_not_to_wait_leaves_them_counted_busy():
    backend = MemoryBackend()
    sections = _sections(6)
    rows = [Section(s["id"], s["title"], s["content"]) for s in sections]
    backend.upsert_sections(rows)
    settings = FakeStreamingEmbedder().settings
    with backend.worker("ingest") as other:
        other.take(settings, {row.id: fingerprint(row, settings) for row in rows[:2]})
        result = ingest(backend, sections, FakeStreamingEmbedder(),
                        IngestOptions(chunk_size=500, wait_for_others=False)).summary
    assert result["success_count"] == 4 and result["busy_count"] == 2 and result["skipped_count"] == 2
