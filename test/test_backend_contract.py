"""The contract every ``sections.pipeline.backend.Backend`` must keep, run against each backend.

``memory`` is ``test/memory_backend.MemoryBackend`` (what the pipeline tests run on), ``postgres``
is ``PostgresBackend`` on a fresh embedded Postgres, and ``pgbouncer`` the same through pgbouncer
in transaction mode (test/fixtures_pgbouncer.py: session state wiped after every transaction):
passing the same suite is what makes the memory backend a faithful stand-in, and the Postgres
one safe behind Supabase's transaction pooler. The tests use the protocol only, plus a small probe per backend
that reads stored vectors, failures and sections back.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import pytest

from sections.fingerprint import fingerprint
from sections.pipeline.backend import Backend
from sections.postgres.backend import PostgresBackend
from sections.postgres.database import Database
from sections.postgres.sections import get_section
from sections.postgres.vectors import read_embedding
from sections.records import DEFAULT_COLLECTION, MAX_REASON_CHARS, EmbeddingSettings, FailureRow, Section, Selection, VectorRow, check_vector
from memory_backend import MemoryBackend

SETTINGS = EmbeddingSettings("model-a", 4)
OTHER = EmbeddingSettings("model-b", 4)


@dataclass
class Subject:
    """A backend under test and how to read back what it stored."""

    backend: Backend
    vector: Callable[[str, str], np.ndarray | None]
    failure: Callable[[str, str], tuple[str, int] | None]  # (reason, attempts)
    section: Callable[[str], tuple[str, str, Any] | None]  # (title, content, metadata)


def _memory() -> Subject:
    backend = MemoryBackend()

    def section(section_id):
        stored = backend.sections.get(section_id)
        return None if stored is None else (stored.title, stored.content, stored.metadata)

    return Subject(backend, backend.vector, backend.failure, section)


def _postgres(database: Database) -> Subject:
    def vector(section_id, model):
        with database.connection() as conn:
            return read_embedding(conn, section_id, model)

    def failure(section_id, model):
        with database.connection() as conn:
            row = conn.execute("select reason, attempts from embedding_failures where section_id = %s"
                               " and model_name = %s", (section_id, model)).fetchone()
        return None if row is None else tuple(row)

    def section(section_id):
        with database.connection() as conn:
            stored = get_section(conn, section_id)
        return None if stored is None else (stored["title"], stored["content"], stored["metadata"])

    return Subject(PostgresBackend(database), vector, failure, section)


@pytest.fixture(params=["memory", "postgres", "pgbouncer"])
def subject(request):
    if request.param == "memory":
        yield _memory()
        return
    url = request.getfixturevalue("database_url")
    if request.param == "pgbouncer":
        url = request.getfixturevalue("pgbouncer").url_for(url)
    database = Database(url, max_size=8)
    try:
        yield _postgres(database)
    finally:
        database.close()


def _sections(n: int, prefix: str = "s") -> list[Section]:
    return [Section(f"{prefix}{i}", f"Title {i}", f"content {i}") for i in range(n)]


def _vec(seed: float, dims: int = 4) -> np.ndarray:
    return np.arange(1, dims + 1, dtype=np.float32) * seed


def _current(section: Section, settings: EmbeddingSettings = SETTINGS, seed: float = 1.0) -> VectorRow:
    """A vector row stored as up to date for ``section`` under ``settings``."""
    return VectorRow(section.id, _vec(seed), 3, fingerprint(section, settings))


def _ids(claim) -> list[str]:
    return [section.id for section in claim.sections]


def _claim(backend, settings, after, limit, collection=DEFAULT_COLLECTION, retry=None):
    """A claim by a run of its own that ends at once (dropping its leases): what is due and free."""
    with backend.worker("sync") as run:
        return run.claim(settings, after, limit, collection, retry)


# -- upsert_sections ---------------------------------------------------------------------------------


def test_upsert_counts_only_rows_inserted_or_changed(subject):
    backend = subject.backend
    rows = _sections(3)
    assert backend.upsert_sections(rows) == 3
    assert backend.upsert_sections(rows) == 0
    edited = [Section("s0", "Title 0", "edited"), Section("s1", "New title", "content 1"), rows[2]]
    assert backend.upsert_sections(edited) == 2
    assert subject.section("s0") == ("Title 0", "edited", None)
    assert subject.section("s1") == ("New title", "content 1", None)
    assert backend.upsert_sections([Section("s2", "Title 2", "content 2", {"tag": 1})]) == 1
    assert backend.upsert_sections([]) == 0


def test_upsert_with_no_metadata_keeps_what_is_stored(subject):
    backend = subject.backend
    backend.upsert_sections([Section("a", "t", "c", {"k": [1, "two"]})])
    assert backend.upsert_sections([Section("a", "t", "c")]) == 0
    assert subject.section("a") == ("t", "c", {"k": [1, "two"]})
    assert backend.upsert_sections([Section("a", "t", "changed")]) == 1
    assert subject.section("a") == ("t", "changed", {"k": [1, "two"]})
    assert backend.upsert_sections([Section("a", "t", "changed", {"k": 2})]) == 1
    assert subject.section("a") == ("t", "changed", {"k": 2})


def test_upsert_is_one_transaction(subject):
    with pytest.raises((ValueError, psycopg.DataError)):
        subject.backend.upsert_sections([Section("good", "t", "c"), Section("bad", "t", "nul \x00 byte")])
    assert subject.section("good") is None and subject.section("bad") is None


# -- write_batch and stored_hashes -------------------------------------------------------------------


def test_write_batch_stores_vectors_and_their_fingerprints_per_model(subject):
    backend = subject.backend
    rows = _sections(3)
    backend.upsert_sections(rows)
    result = backend.write_batch(SETTINGS, [_current(rows[0]), VectorRow("s1", _vec(2), 1, None)], [])
    assert (result.written, result.recorded, result.missing, result.rejected) == (2, 0, [], [])
    assert np.array_equal(subject.vector("s0", "model-a"), _vec(1))
    assert subject.vector("s0", "model-b") is None and subject.vector("s2", "model-a") is None
    # a vector stored without a fingerprint has none to report; other models and ids have nothing
    assert backend.stored_hashes("model-a", ["s0", "s1", "s2", "nope"]) == {"s0": fingerprint(rows[0], SETTINGS)}
    assert backend.stored_hashes("model-b", ["s0", "s1"]) == {}
    assert backend.stored_hashes("model-a", []) == {}


def test_write_batch_last_row_per_id_wins_and_rewrites_replace(subject):
    backend = subject.backend
    rows = _sections(2)
    backend.upsert_sections(rows)
    result = backend.write_batch(SETTINGS, [VectorRow("s0", _vec(1), 1, b"\x01" * 16),
                                            VectorRow("s1", _vec(5), 1, None),
                                            VectorRow("s0", _vec(2, dims=6), 1, b"\x02" * 16)], [])
    assert result.written == 2
    assert np.array_equal(subject.vector("s0", "model-a"), _vec(2, dims=6))
    assert backend.stored_hashes("model-a", ["s0"]) == {"s0": b"\x02" * 16}
    backend.write_batch(SETTINGS, [VectorRow("s0", [0.5, 0.25], 1, b"\x03" * 16)], [])  # any sequence of numbers
    stored = subject.vector("s0", "model-a")
    assert stored.dtype == np.float32 and np.array_equal(stored, np.array([0.5, 0.25], dtype=np.float32))
    assert backend.stored_hashes("model-a", ["s0"]) == {"s0": b"\x03" * 16}


BAD_VECTORS = {
    "nan": np.array([1.0, np.nan, 0.0], dtype=np.float32),
    "inf": [1.0, float("inf")],
    "empty": [],
    "matrix": np.ones((2, 2)),
    "too-wide": np.ones(16001, dtype=np.float32),
    "junk": "not a vector",
}


def test_vectors_that_cannot_be_stored_are_rejected_as_failures(subject):
    backend = subject.backend
    backend.upsert_sections([Section(section_id, "", "c") for section_id in [*BAD_VECTORS, "fine"]])
    successes = [VectorRow(section_id, vector, 1, None) for section_id, vector in BAD_VECTORS.items()]
    result = backend.write_batch(SETTINGS, [*successes, VectorRow("fine", _vec(1), 1, None)], [])
    assert result.written == 1 and result.missing == []
    assert sorted(result.rejected) == sorted(FailureRow(i, check_vector(v)[1]) for i, v in BAD_VECTORS.items())
    assert result.recorded == len(BAD_VECTORS)
    for section_id, vector in BAD_VECTORS.items():
        assert subject.vector(section_id, "model-a") is None
        assert subject.failure(section_id, "model-a") == (check_vector(vector)[1], 1)
    assert subject.failure("fine", "model-a") is None


def test_sections_that_do_not_exist_are_missing_and_nothing_is_written_for_them(subject):
    backend = subject.backend
    backend.upsert_sections(_sections(1))
    result = backend.write_batch(SETTINGS, [VectorRow("ghost", _vec(1), 1, None), VectorRow("s0", _vec(1), 1, None),
                                            VectorRow("phantom", _vec(2), 1, None)],
                                 [FailureRow("spirit", "failed too")])
    assert sorted(result.missing) == ["ghost", "phantom"]
    assert (result.written, result.recorded, result.rejected) == (1, 0, [])
    for section_id in ("ghost", "phantom", "spirit"):
        assert subject.vector(section_id, "model-a") is None and subject.failure(section_id, "model-a") is None
    assert backend.stored_hashes("model-a", ["ghost", "phantom"]) == {}
    # a batch of nothing but missing sections
    assert backend.write_batch(SETTINGS, [VectorRow("ghost", _vec(1), 1, None)], []).missing == ["ghost"]


def test_failures_count_attempts_per_model_and_a_success_clears_them(subject):
    backend = subject.backend
    backend.upsert_sections(_sections(2))
    assert backend.write_batch(SETTINGS, [], [FailureRow("s0", "timeout")]).recorded == 1
    backend.write_batch(SETTINGS, [], [FailureRow("s0", "rate limited"), FailureRow("s1", "bad")])
    backend.write_batch(OTHER, [], [FailureRow("s0", "other model")])
    assert subject.failure("s0", "model-a") == ("rate limited", 2)
    assert subject.failure("s1", "model-a") == ("bad", 1)
    result = backend.write_batch(SETTINGS, [VectorRow("s0", _vec(1), 1, None)], [])
    assert result.written == 1 and result.recorded == 0
    assert subject.failure("s0", "model-a") is None
    assert subject.failure("s0", "model-b") == ("other model", 1)  # only this model's failure is cleared
    assert subject.failure("s1", "model-a") == ("bad", 1)


def test_failures_last_row_per_id_wins_and_reasons_are_bounded(subject):
    backend = subject.backend
    backend.upsert_sections(_sections(2))
    result = backend.write_batch(SETTINGS, [], [FailureRow("s0", "first"), FailureRow("s1", ""),
                                                FailureRow("s0", "x" * (MAX_REASON_CHARS + 50))])
    assert result.recorded == 2
    assert subject.failure("s0", "model-a") == ("x" * MAX_REASON_CHARS, 1)
    assert subject.failure("s1", "model-a") == ("failed", 1)


def test_a_reason_postgres_text_cannot_hold_is_stored_cleaned_and_the_batch_goes_through(subject):
    """Reasons are free text from providers: a NUL or a lone surrogate must not undo a paid batch."""
    backend = subject.backend
    backend.upsert_sections(_sections(2))
    result = backend.write_batch(SETTINGS, [VectorRow("s0", _vec(1), 1, None)],
                                 [FailureRow("s1", "bad\x00byte and \ud800 half")])
    assert (result.written, result.recorded) == (1, 1)
    assert subject.failure("s1", "model-a") == ("bad\ufffdbyte and \ufffd half", 1)
    assert np.array_equal(subject.vector("s0", "model-a"), _vec(1))


def test_a_section_that_succeeded_and_failed_in_one_batch_counts_as_succeeded(subject):
    backend = subject.backend
    backend.upsert_sections(_sections(2))
    backend.write_batch(SETTINGS, [], [FailureRow("s0", "earlier")])
    result = backend.write_batch(SETTINGS, [VectorRow("s0", _vec(1), 1, None)],
                                 [FailureRow("s0", "late duplicate"), FailureRow("s1", "real")])
    assert (result.written, result.recorded) == (1, 1)
    assert subject.failure("s0", "model-a") is None and np.array_equal(subject.vector("s0", "model-a"), _vec(1))
    # ... unless its vector was rejected: then the failure stands, with the rejection last
    result = backend.write_batch(SETTINGS, [VectorRow("s1", [np.nan], 1, None)], [FailureRow("s1", "also")])
    assert result.recorded == 1 and subject.failure("s1", "model-a") == (check_vector([np.nan])[1], 2)


# -- claim_due ---------------------------------------------------------------------------------------


def test_due_is_a_missing_vector_or_a_fingerprint_that_differs(subject):
    backend = subject.backend
    rows = [Section("a-current", "T", "c"), Section("b-stale", "T", "c"), Section("c-no-hash", "T", "c"),
            Section("d-other-model", "T", "c"), Section("e-missing", "", "c"), Section("f-blank", "", "  ")]
    backend.upsert_sections(rows)
    backend.write_batch(SETTINGS, [_current(rows[0]), VectorRow("b-stale", _vec(1), 1, b"\x00" * 16),
                                   VectorRow("c-no-hash", _vec(1), 1, None)], [])
    backend.write_batch(OTHER, [_current(rows[3], OTHER)], [])
    claim = _claim(backend, SETTINGS, None, 100)
    assert _ids(claim) == ["b-stale", "c-no-hash", "d-other-model", "e-missing", "f-blank"]
    assert claim.claimed == 5 and claim.last_id == "f-blank"
    assert claim.sections[0] == Section("b-stale", "T", "c")
    # the same vector under other settings (the requested dimensions here) is out of date
    claim = _claim(backend, EmbeddingSettings("model-a", 8), None, 100)
    assert "a-current" in _ids(claim)
    # editing a section makes it due again
    backend.upsert_sections([Section("a-current", "T", "edited")])
    claim = _claim(backend, SETTINGS, None, 1)
    assert _ids(claim) == ["a-current"]


def test_claims_walk_the_ids_in_order_after_a_point_up_to_a_limit(subject):
    backend = subject.backend
    backend.upsert_sections(_sections(6)[::-1])
    claim = _claim(backend, SETTINGS, None, 2)
    assert _ids(claim) == ["s0", "s1"] and claim.claimed == 2 and claim.last_id == "s1"
    claim = _claim(backend, SETTINGS, "s1", 3)
    assert _ids(claim) == ["s2", "s3", "s4"] and claim.last_id == "s4"
    claim = _claim(backend, SETTINGS, "s3x", 10)  # ``after`` need not be an id
    assert _ids(claim) == ["s4", "s5"]
    claim = _claim(backend, SETTINGS, "s5", 10)
    assert claim is None


def test_claim_due_is_none_when_nothing_is_due(subject):
    backend = subject.backend
    claim = _claim(backend, SETTINGS, None, 10)
    assert claim is None  # no sections at all
    rows = _sections(3)
    backend.upsert_sections(rows)
    backend.write_batch(SETTINGS, [_current(row) for row in rows], [])
    claim = _claim(backend, SETTINGS, None, 10)
    assert claim is None


def test_claims_of_live_runs_never_overlap_and_end_with_their_runs(subject):
    backend = subject.backend
    backend.upsert_sections(_sections(8))
    with ExitStack() as stack:
        runs = [stack.enter_context(backend.worker("sync")) for _ in range(4)]
        first = runs[0].claim(SETTINGS, None, 3)
        second = runs[1].claim(SETTINGS, None, 3)
        third = runs[2].claim(SETTINGS, None, 10)
        assert _ids(first) == ["s0", "s1", "s2"]
        assert _ids(second) == ["s3", "s4", "s5"] and second.claimed == 3
        assert _ids(third) == ["s6", "s7"]
        assert runs[3].claim(SETTINGS, None, 10) is None  # everything is held
    # the runs ended without writing: their sections are due and free again
    claim = _claim(backend, SETTINGS, None, 10)
    assert claim.claimed == 8


def test_a_claim_commits_at_once_and_each_write_drops_the_leases_of_what_it_stored(subject):
    backend = subject.backend
    rows = _sections(4)
    backend.upsert_sections(rows)
    with backend.worker("sync") as run, backend.worker("sync") as other:
        claim = run.claim(SETTINGS, None, 10)
        assert _ids(claim) == ["s0", "s1", "s2", "s3"]
        assert other.claim(SETTINGS, None, 10) is None  # held by the first run, without a transaction open
        result = backend.write_batch(SETTINGS, [_current(rows[0]), VectorRow("ghost", _vec(1), 1, None),
                                                VectorRow("s1", [np.inf], 1, None)], [FailureRow("s2", "poison")])
        assert (result.written, result.missing, result.recorded) == (1, ["ghost"], 2)
        assert np.array_equal(subject.vector("s0", "model-a"), _vec(1))  # visible at once
        assert subject.failure("s2", "model-a") == ("poison", 1)
        # s1 (rejected) and s2 (failed) are free for another attempt; s3 is still held by the first run
        assert _ids(other.claim(SETTINGS, None, 10)) == ["s1", "s2"]
    assert _ids(_claim(backend, SETTINGS, None, 10)) == ["s1", "s2", "s3"]  # the runs ended: s0 is done


def test_claims_from_many_threads_share_the_work_without_overlap(subject):
    backend = subject.backend
    rows = _sections(60)
    backend.upsert_sections(rows)
    by_id = {row.id: row for row in rows}
    seen: list[str] = []
    start = threading.Barrier(4)

    def worker(_):
        start.wait(timeout=10)
        after = None
        with backend.worker("sync") as run:
            while (claim := run.claim(SETTINGS, after, 5)) is not None:
                after = claim.last_id
                seen.extend(_ids(claim))
                backend.write_batch(SETTINGS, [_current(by_id[section_id]) for section_id in _ids(claim)], [])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))  # re-raises what a worker raised
    assert sorted(seen) == sorted(by_id)  # each section claimed (and embedded) exactly once
    assert len(backend.stored_hashes("model-a", list(by_id))) == 60


# -- collections and sources -------------------------------------------------------------------------


def test_a_section_stays_in_its_collection_and_another_collection_never_touches_it(subject):
    backend = subject.backend
    assert backend.upsert_sections([Section("a", "t", "c"), Section("b", "t", "c")], "docs") == 2
    assert backend.foreign_sections(["a", "b", "new"], "blog") == {"a": "docs", "b": "docs"}
    assert backend.foreign_sections(["a", "new"], "docs") == {}
    assert backend.upsert_sections([Section("a", "t", "rewritten by blog")], "blog") == 0
    assert subject.section("a") == ("t", "c", None)
    assert backend.upsert_sections([Section("a", "t", "edited")], "docs") == 1
    assert subject.section("a") == ("t", "edited", None)


def test_sync_claims_stay_inside_a_collection_unless_asked_for_every_one(subject):
    backend = subject.backend
    backend.upsert_sections(_sections(3, "d"), "docs")
    backend.upsert_sections(_sections(2, "p"), "python")
    claim = _claim(backend, SETTINGS, None, 10, "docs")
    assert _ids(claim) == ["d0", "d1", "d2"]
    claim = _claim(backend, SETTINGS, None, 10, "nothing-here")
    assert claim is None
    claim = _claim(backend, SETTINGS, None, 10, None)
    assert _ids(claim) == ["d0", "d1", "d2", "p0", "p1"]


def _sourced(section_id: str, source: str | None) -> Section:
    return Section(section_id, "t", f"content of {section_id}", source=source)


def test_selections_match_ids_prefixes_files_and_folders_inside_one_collection(subject):
    backend = subject.backend
    backend.upsert_sections([_sourced("guide.md", "/docs/guide.md"), _sourced("guide.md#install", "/docs/guide.md"),
                             _sourced("api/x.md", "/docs/api/x.md"), _sourced("given", None),
                             _sourced("docsy", "/docsy/a.md")], "docs")
    backend.upsert_sections([_sourced("other", "/docs/guide.md")], "blog")
    pick = lambda **kw: backend.selected_ids(Selection("docs", **kw))  # noqa: E731
    assert pick(ids=("given", "nope", "other")) == ["given"]
    assert pick(prefix="guide.md") == ["guide.md", "guide.md#install"]
    assert pick(files=("/docs/guide.md",)) == ["guide.md", "guide.md#install"]
    assert pick(folders=("/docs/",)) == ["api/x.md", "guide.md", "guide.md#install"]
    assert pick(everything=True) == ["api/x.md", "docsy", "given", "guide.md", "guide.md#install"]
    assert backend.selected_ids(Selection("blog", everything=True)) == ["other"]
    assert pick() == []


def test_a_source_left_out_keeps_what_is_stored_and_a_new_one_replaces_it(subject):
    backend = subject.backend
    backend.upsert_sections([_sourced("a", "/old/a.md")])
    assert backend.upsert_sections([_sourced("a", None)]) == 0
    assert backend.selected_ids(Selection(files=("/old/a.md",))) == ["a"]
    assert backend.upsert_sections([_sourced("a", "/new/a.md")]) == 1
    assert backend.selected_ids(Selection(files=("/new/a.md",))) == ["a"]


def test_deleting_a_selection_takes_its_vectors_and_failures_and_nothing_else(subject):
    backend = subject.backend
    rows = _sections(4)
    backend.upsert_sections(rows)
    backend.upsert_sections([Section("kept", "t", "c")], "other")
    backend.write_batch(SETTINGS, [_current(rows[0]), _current(rows[1])], [FailureRow("s2", "bad")])
    backend.write_batch(OTHER, [_current(rows[0], OTHER)], [])
    deleted = backend.delete_selected(Selection(ids=("s0", "s2", "kept")))
    assert deleted == (2, 2)
    assert subject.section("s0") is None and subject.vector("s0", OTHER.model) is None
    assert subject.failure("s2", SETTINGS.model) is None
    assert subject.section("s1") is not None and subject.vector("s1", SETTINGS.model) is not None
    assert subject.section("kept") is not None
    assert backend.delete_selected(Selection(everything=True)) == (2, 1)
    assert subject.section("kept") is not None


# -- leases ------------------------------------------------------------------------------------------


def _wanted(sections: list[Section], settings: EmbeddingSettings = SETTINGS) -> dict[str, bytes]:
    return {section.id: fingerprint(section, settings) for section in sections}


def test_a_leased_section_is_skipped_by_other_runs_and_by_sync_until_its_result_is_written(subject):
    backend = subject.backend
    rows = _sections(3)
    backend.upsert_sections(rows)
    with backend.worker("ingest") as first, backend.worker("ingest") as second:
        assert first.take(SETTINGS, _wanted(rows[:2])) == {"s0", "s1"}
        assert second.take(SETTINGS, _wanted(rows)) == {"s2"}
        assert first.take(OTHER, _wanted(rows[:1], OTHER)) == {"s0"}  # a lease is per model
        claim = _claim(backend, SETTINGS, None, 10)
        assert claim is None  # all three are leased
        backend.write_batch(SETTINGS, [_current(rows[0])], [FailureRow("s1", "refused")])
        # s0 is stored as wanted: nobody takes it again; s1 failed: free for another attempt
        assert second.take(SETTINGS, _wanted(rows[:2])) == {"s1"}
    claim = _claim(backend, SETTINGS, None, 10)  # the runs ended: their leases went with them
    assert _ids(claim) == ["s1", "s2"]


def test_a_lease_is_only_taken_for_a_section_still_due_with_that_fingerprint(subject):
    backend = subject.backend
    rows = _sections(2)
    backend.upsert_sections(rows)
    backend.write_batch(SETTINGS, [_current(rows[0])], [])
    edited = Section("s0", "Title 0", "edited since")
    with backend.worker("ingest") as run:
        assert run.take(SETTINGS, _wanted(rows)) == {"s1"}
        backend.upsert_sections([edited])
        assert run.take(SETTINGS, _wanted([edited])) == {"s0"}
        assert run.take(SETTINGS, {"gone": b"x" * 16}) == set()


def test_a_section_held_by_a_sync_claim_is_not_leased_and_the_other_way_round(subject):
    backend = subject.backend
    rows = _sections(3)
    backend.upsert_sections(rows)
    with backend.worker("sync") as sync, backend.worker("ingest") as ingest:
        assert _ids(sync.claim(SETTINGS, None, 1)) == ["s0"]
        assert ingest.take(SETTINGS, _wanted(rows[:2])) == {"s1"}
        assert _ids(sync.claim(SETTINGS, "s0", 10)) == ["s2"]


# -- retries of failed sections ------------------------------------------------------------------------


def test_a_failed_section_rests_then_is_retried_then_given_up_until_it_changes(subject):
    from sections.records import RetrySchedule

    backend = subject.backend
    rows = _sections(2)
    backend.upsert_sections(rows)
    failed = FailureRow("s0", "refused", fingerprint(rows[0], SETTINGS))
    backend.write_batch(SETTINGS, [], [failed])
    resting = RetrySchedule(max_attempts=3, delay_s=3600, cap_s=3600)
    eager = RetrySchedule(max_attempts=3, delay_s=0, cap_s=0)
    claim = _claim(backend, SETTINGS, None, 10, retry=resting)
    assert _ids(claim) == ["s1"]  # s0 rests an hour after its failure
    claim = _claim(backend, SETTINGS, None, 10)
    assert _ids(claim) == ["s0", "s1"]  # a plain sync still tries it once per run
    claim = _claim(backend, SETTINGS, None, 10, retry=eager)
    assert _ids(claim) == ["s0", "s1"]
    backend.write_batch(SETTINGS, [], [failed, FailureRow("s1", "refused", fingerprint(rows[1], SETTINGS))])
    backend.write_batch(SETTINGS, [], [failed])
    assert subject.failure("s0", SETTINGS.model) == ("refused", 3)
    claim = _claim(backend, SETTINGS, None, 10, retry=eager)
    assert _ids(claim) == ["s1"]  # three failures of the same text: given up
    edited = Section("s0", "Title 0", "edited: worth another try")
    backend.upsert_sections([edited])
    claim = _claim(backend, SETTINGS, None, 10, retry=eager)
    assert _ids(claim) == ["s0", "s1"]
    backend.write_batch(SETTINGS, [], [FailureRow("s0", "refused again", fingerprint(edited, SETTINGS))])
    assert subject.failure("s0", SETTINGS.model) == ("refused again", 1)  # a new text starts again at 1
