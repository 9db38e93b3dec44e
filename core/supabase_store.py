"""SupabaseStore: sections and their embeddings in Postgres/pgvector (Supabase is Postgres).

Connection: ``SupabaseStore(database_url)``; with none, ``$DATABASE_URL``; with neither, the
embedded Postgres in the user's data directory (``core.embedded_db``). A Supabase connection
string works as is, the transaction pooler (port 6543) included: prepared statements are off by
default and temporary tables live only inside one transaction's use.

Writes are bulk: binary COPY into a temporary table, then one ``INSERT … ON CONFLICT DO UPDATE``,
one transaction per batch (``core.vector_writer``). ``ingest`` streams: it reads sections in chunks,
upserts them, skips those whose stored embedding was made from the same text with the same model
settings (``content_hash``), feeds the rest to ``EmbeddingService.stream_embeddings`` and hands the
outcomes through a bounded queue to a writer thread, so embedding and writing overlap and memory is
bounded by the chunk and queue sizes, never by the corpus.

Text rules: Postgres ``text``/``jsonb`` cannot hold U+0000 and Python strings can hold lone
surrogates that are not UTF-8. Such a section is invalid: ``upsert_sections`` raises ``ValueError``;
``ingest`` counts it as failed with the reason (it cannot be stored, so it is not in
``embedding_failures``) and goes on. Everything else (quotes, SQL, any Unicode, megabytes) is stored
verbatim. Values travel as parameters or in the COPY stream; the one exception is the model name,
which must appear literally in the index DDL and in the k-NN query (so the planner can match the
partial index): it is quoted with ``psycopg.sql.Literal`` there, and with ``format(%L)`` in
``match_sections``.

``ingest`` and ``sync`` stop on an exception from the embedding stream (``ProviderFatalError`` on
quota/auth failures): what arrived is written, nothing is recorded for sections never answered,
and the exception is re-raised with the partial summary as ``error.result``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from core import vector_writer
from core.embedded_db import DatabaseHandle, mask_url, open_database
from core.schema import apply_migrations

__all__ = ["SupabaseStore", "section_text", "content_hash", "index_name", "LONG_INPUT_DEFAULT"]

_log = logging.getLogger(__name__)

LONG_INPUT_DEFAULT = "average"
HNSW_MAX_DIMENSIONS = 2000  # pgvector's limit for indexing the vector type
HALFVEC_MAX_DIMENSIONS = 4000  # ... and halfvec (pgvector >= 0.7)
SNIPPET_CHARS = 240
_HASH_DOMAIN = b"sections.content_hash.v1"


# -- what gets embedded, and its fingerprint --------------------------------------------------------


def section_text(title: Optional[str], content: Optional[str]) -> str:
    """The text embedded for a section: ``f"{title}\\n\\n{content}"``, or ``content`` if the title is empty."""
    title = title or ""
    content = content or ""
    return f"{title}\n\n{content}" if title else content


def content_hash(
    title: Optional[str],
    content: Optional[str],
    model: str,
    dimensions: Optional[int],
    long_input_policy: Optional[str],
) -> bytes:
    """16 bytes that change whenever anything that determines the section's vector changes.

    sha256 over NUL-separated UTF-8 fields (a domain tag, model, requested dimensions or "",
    long-input policy, the embedded text), truncated to 16 bytes. The database computes the same
    value with ``sections_content_hash(...)`` (core/schema/001_init.sql), which is why this is
    sha256 and not blake2b: Postgres has sha256 built in, so ``status`` and ``sync`` find stale
    embeddings in SQL without reading the corpus out. Fields cannot contain NUL (Postgres text
    cannot hold it; such sections are rejected before they get here).
    """
    digest = hashlib.sha256()
    digest.update(_HASH_DOMAIN + b"\x00")
    digest.update((model or "").encode("utf-8") + b"\x00")
    digest.update(("" if dimensions is None else str(int(dimensions))).encode("ascii") + b"\x00")
    digest.update((long_input_policy or "").encode("utf-8") + b"\x00")
    digest.update(section_text(title, content).encode("utf-8"))
    return digest.digest()[:16]


def index_name(model_name: str, dimensions: int) -> str:
    """The HNSW index for one model and dimension: a fixed prefix, a hash of the name, the dimension."""
    tag = hashlib.blake2b(model_name.encode("utf-8"), digest_size=8).hexdigest()
    return f"section_embeddings_hnsw_{tag}_{int(dimensions)}"


# -- input sections ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Section:
    id: str
    title: str
    content: str
    metadata: Any  # dict/list/... for jsonb, or None to keep what is stored


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _text_problem(value: str) -> Optional[str]:
    if "\x00" in value:
        return "contains a NUL character (U+0000), which Postgres text cannot store"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    return None


def _coerce_section(obj: Any) -> tuple[Optional[_Section], Optional[str], Optional[str]]:
    """(section, None, None) or (None, id-or-None, reason)."""
    raw_id = _field(obj, "id")
    if raw_id is None or isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return None, None if raw_id is None else str(raw_id), "section has no id (str or int)"
    section_id = raw_id if isinstance(raw_id, str) else str(raw_id)
    if section_id == "":
        return None, section_id, "section id is empty"
    problem = _text_problem(section_id)
    if problem:
        return None, section_id, f"id {problem}"
    title = _field(obj, "title") or ""
    content = _field(obj, "content") or ""
    if not isinstance(title, str) or not isinstance(content, str):
        return None, section_id, "title and content must be strings"
    for name, value in (("title", title), ("content", content)):
        problem = _text_problem(value)
        if problem:
            return None, section_id, f"{name} {problem}"
    metadata = _field(obj, "metadata")
    if metadata is not None:
        try:
            encoded = json.dumps(metadata)
        except (TypeError, ValueError) as error:
            return None, section_id, f"metadata is not JSON: {error}"
        if "\\u0000" in encoded:
            return None, section_id, "metadata contains a NUL character (U+0000), which jsonb cannot store"
    return _Section(section_id, title, content, metadata), None, None


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _dedupe_sections(sections: Sequence[_Section]) -> list[_Section]:
    last: dict[str, _Section] = {}
    for section in sections:
        last.pop(section.id, None)  # keep the last occurrence, at its position
        last[section.id] = section
    return list(last.values())


_SECTIONS_STAGE = "_sections_stage"
_SECTIONS_STAGE_DDL = (
    "set local client_min_messages = warning; "
    f"create temp table if not exists {_SECTIONS_STAGE} "
    f"(id text, title text, content text, metadata jsonb) on commit delete rows; delete from {_SECTIONS_STAGE}"
)
_SECTIONS_UPSERT = f"""
insert into sections as s (id, title, content, metadata, updated_at)
select id, title, content, metadata, now() from {_SECTIONS_STAGE}
on conflict (id) do update
   set title = excluded.title,
       content = excluded.content,
       metadata = coalesce(excluded.metadata, s.metadata),
       updated_at = excluded.updated_at
 where s.title is distinct from excluded.title
    or s.content is distinct from excluded.content
    or (excluded.metadata is not null and s.metadata is distinct from excluded.metadata)
"""


def _upsert_section_rows(conn, rows: Sequence[_Section]) -> int:
    """COPY + one upsert, inside the caller's transaction; rows must be unique by id."""
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.execute(_SECTIONS_STAGE_DDL)
        with cur.copy(f"copy {_SECTIONS_STAGE} (id, title, content, metadata) from stdin (format binary)") as copy:
            copy.set_types(["text", "text", "text", "jsonb"])
            for row in rows:
                copy.write_row((row.id, row.title, row.content, None if row.metadata is None else Jsonb(row.metadata)))
        cur.execute(_SECTIONS_UPSERT)
        return cur.rowcount


# -- the writer thread ------------------------------------------------------------------------------

_STOP = object()


def _stored_hashes(conn, model_name: str, section_ids: Sequence[str]) -> dict[str, bytes]:
    return dict(conn.execute(
        "select section_id, content_hash from section_embeddings where model_name = %s and section_id = any(%s)",
        (model_name, list(section_ids)),
    ).fetchall())


class _Tally:
    """Counts shared by the reading side and the writer thread."""

    def __init__(self, on_progress: Optional[Callable[[dict], None]] = None):
        self.lock = threading.Lock()
        self.on_progress = on_progress
        self.success = 0
        self.failed = 0
        self.skipped = 0
        self.tokens = 0
        self.errors: dict[str, str] = {}
        self.dimensions: set[int] = set()  # dimensions of the vectors written

    def fail(self, section_id: Optional[str], reason: str) -> None:
        with self.lock:
            self.failed += 1
            if section_id is not None:
                self.errors[section_id] = reason

    def add_batch(self, successes: Sequence, failures: Sequence, result: "vector_writer.BatchResult") -> None:
        """Count a committed batch: what was written, what failed and why."""
        missing = set(result.missing)
        rejected = dict(result.rejected)
        with self.lock:
            succeeded = set()
            for row in successes:
                section_id = row[0]
                if section_id in succeeded:
                    continue
                if section_id in missing:
                    reason = "section no longer exists"
                elif section_id in rejected:
                    reason = rejected[section_id]
                else:
                    succeeded.add(section_id)
                    self.success += 1
                    self.errors.pop(section_id, None)
                    self.dimensions.add(len(row[1]))
                    continue
                self.failed += 1
                self.errors[section_id] = reason
            for section_id, reason in failures:
                if section_id not in succeeded:
                    self.failed += 1
                    self.errors[section_id] = reason
        self.report()

    def report(self) -> None:
        """Tell the caller's progress display where the run stands (from any thread)."""
        if self.on_progress is not None:
            with self.lock:
                counts = {"success": self.success, "failed": self.failed, "skipped": self.skipped,
                          "tokens": self.tokens}
            self.on_progress(counts)

    def result(self) -> dict:
        with self.lock:
            return {
                "success_count": self.success,
                "failed_count": self.failed,
                "total_tokens": self.tokens,
                "failed_ids": list(self.errors),
                "skipped_count": self.skipped,
                "errors": dict(self.errors),
            }


class _Writer(threading.Thread):
    """Takes ('ok', id, vector, tokens, hash) / ('fail', id, reason) items; writes batches."""

    def __init__(self, store: "SupabaseStore", model: str, requested_dimensions, long_input, tally: _Tally,
                 batch_size: int, queue_size: int, flush_interval: float):
        super().__init__(name="sections-writer", daemon=True)
        self.store, self.model = store, model
        self.requested_dimensions, self.long_input = requested_dimensions, long_input
        self.tally, self.batch_size, self.flush_interval = tally, batch_size, flush_interval
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.error: Optional[BaseException] = None
        self.batches = 0

    def put(self, item) -> None:
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(_STOP)
        self.join()

    def run(self) -> None:
        """Write a batch when it is full, or when its oldest outcome has waited ``flush_interval``:
        a steady trickle of replies must not sit unwritten (a crash would lose paid work)."""
        successes: list = []
        failures: list = []
        oldest = None  # when the first unflushed outcome arrived
        while True:
            wait = self.flush_interval if oldest is None else max(0.0, oldest + self.flush_interval - time.monotonic())
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is not None and item is not _STOP and self.error is None:
                if oldest is None:
                    oldest = time.monotonic()
                if item[0] == "ok":
                    successes.append(item[1:])
                else:
                    failures.append((item[1], item[2]))
            due = oldest is not None and time.monotonic() - oldest >= self.flush_interval
            if item is _STOP or due or len(successes) + len(failures) >= self.batch_size:
                if successes or failures:
                    self._flush(successes, failures)
                successes, failures, oldest = [], [], None
            if item is _STOP:
                break

    def _flush(self, successes: list, failures: list) -> None:
        if self.error is not None:
            return
        try:
            with self.store.connection() as conn:
                result = vector_writer.write_batch(
                    conn, self.model, successes, failures,
                    requested_dimensions=self.requested_dimensions, long_input=self.long_input,
                )
        except BaseException as error:  # surfaces in the producer, which stops the run
            self.error = error
            return
        self.batches += 1
        self.tally.add_batch(successes, failures, result)


# -- the store --------------------------------------------------------------------------------------


class SupabaseStore:
    """Sections, embeddings and failures in Postgres/pgvector; bulk writes; search."""

    DEFAULT_CHUNK = 1000  # sections read, upserted and hash-checked per round trip
    DEFAULT_WRITE_BATCH = 1000  # outcomes per write transaction
    AUTO_INDEX_MIN_ROWS = 10_000

    def __init__(
        self,
        database_url: str | None = None,
        *,
        data_dir=None,
        min_size: int = 1,
        max_size: int = 4,
        migrate: bool = True,
        prepare_threshold: int | None = None,
        auto_index_min_rows: int = AUTO_INDEX_MIN_ROWS,
        max_index_memory: str = "2GB",
        connect_timeout: float = 30.0,
    ):
        """Connect (``database_url``, else ``$DATABASE_URL``, else the embedded Postgres in ``data_dir``).

        ``prepare_threshold=None`` keeps psycopg from preparing statements, which the Supabase
        transaction pooler (PgBouncer/Supavisor, port 6543) cannot keep across transactions.
        """
        if max_size < 2:
            raise ValueError("max_size must be at least 2 (ingest reads and writes at once)")
        self._db: DatabaseHandle = open_database(database_url, data_dir)
        self.url_masked = mask_url(self._db.url)
        self.auto_index_min_rows = auto_index_min_rows
        self.max_index_memory = max_index_memory
        self._halfvec: Optional[bool] = None
        self._pool: Optional[ConnectionPool] = None
        try:
            if migrate:
                try:
                    conn = psycopg.connect(self._db.url, autocommit=True, connect_timeout=int(connect_timeout))
                except psycopg.OperationalError as error:
                    raise psycopg.OperationalError(f"cannot connect to {self.url_masked}: {error}") from None
                with conn:
                    apply_migrations(conn)

            def configure(conn: psycopg.Connection) -> None:
                from pgvector.psycopg import register_vector

                register_vector(conn)

            self._pool = ConnectionPool(
                self._db.url,
                min_size=min_size,
                max_size=max_size,
                kwargs={"autocommit": True, "prepare_threshold": prepare_threshold},
                configure=configure,
                check=ConnectionPool.check_connection,
                name="sections",
                open=False,
            )
            self._pool.open(wait=True, timeout=connect_timeout)
        except BaseException:
            self.close()
            raise

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if self._db is not None:
            self._db.close()

    def __enter__(self) -> "SupabaseStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SupabaseStore({self.url_masked!r})"

    def connection(self):
        """A pooled connection (autocommit; use ``conn.transaction()``), as a context manager."""
        if self._pool is None:
            raise RuntimeError("SupabaseStore is closed")
        return self._pool.connection()

    # -- sections -----------------------------------------------------------------------------------

    def upsert_sections(self, sections: Iterable, *, chunk_size: int = 5000) -> int:
        """Insert or update sections (dicts or objects with id/title/content/metadata) in bulk.

        A missing ``metadata`` keeps what is stored. ``updated_at`` moves only when something
        changed. Raises ValueError (before writing that chunk) for a section that cannot be stored.
        Returns the number of rows inserted or changed.
        """
        total = 0
        for chunk in _chunks(sections, chunk_size):
            rows = []
            for obj in chunk:
                section, bad_id, reason = _coerce_section(obj)
                if section is None:
                    raise ValueError(f"section {bad_id!r}: {reason}")
                rows.append(section)
            with self.connection() as conn, conn.transaction():
                total += _upsert_section_rows(conn, _dedupe_sections(rows))
        return total

    def get_section(self, section_id: str) -> Optional[dict]:
        with self.connection() as conn:
            row = conn.execute(
                "select id, title, content, metadata, updated_at from sections where id = %s", (section_id,)
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("id", "title", "content", "metadata", "updated_at"), row))

    def delete_sections(self, section_ids: Iterable[str]) -> int:
        ids = list(section_ids)
        with self.connection() as conn:
            return conn.execute("delete from sections where id = any(%s)", (ids,)).rowcount

    # -- vectors, written directly ------------------------------------------------------------------

    def write_embeddings(
        self,
        model_name: str,
        rows: Iterable,
        *,
        requested_dimensions: int | None = None,
        long_input: str | None = None,
        batch_size: int = 5000,
    ) -> int:
        """Store vectors you already have: rows are ``(section_id, vector[, token_count[, content_hash]])``.

        The sections must exist. One transaction per ``batch_size`` rows; returns rows written.
        Raises ValueError for a vector pgvector cannot store (NaN, infinity, 0 or > 16000 dims).
        """
        _check_model(model_name)
        total = 0
        for chunk in _chunks(rows, batch_size):
            batch = [
                row if len(row) == 4 and type(row[0]) is str and type(row[2]) is int else (
                    str(row[0]), row[1],
                    int(row[2]) if len(row) > 2 and row[2] is not None else 0,
                    row[3] if len(row) > 3 else None,
                )
                for row in chunk
            ]
            with self.connection() as conn, conn.transaction():
                result = vector_writer.write_embeddings(
                    conn, model_name, batch, requested_dimensions=requested_dimensions, long_input=long_input
                )
                if result.rejected:
                    raise ValueError(f"section {result.rejected[0][0]!r}: {result.rejected[0][1]}")
                if result.missing:
                    raise ValueError(f"{len(result.missing)} section(s) do not exist, e.g. {result.missing[0]!r}")
            total += result.written
        return total

    def record_failures(self, model_name: str, failures: Mapping[str, str] | Iterable[tuple[str, str]]) -> int:
        """Upsert failures ({section id: reason}); attempts go up by one each time."""
        _check_model(model_name)
        items = list(failures.items()) if isinstance(failures, Mapping) else list(failures)
        with self.connection() as conn, conn.transaction():
            return vector_writer.write_failures(conn, model_name, items)

    def stored_hashes(self, model_name: str, section_ids: Sequence[str]) -> dict[str, bytes]:
        """The content hash stored with each of these sections' vectors for ``model_name``."""
        with self.connection() as conn:
            return _stored_hashes(conn, model_name, section_ids)

    def get_embedding(self, section_id: str, model_name: str) -> Optional[np.ndarray]:
        with self.connection() as conn:
            row = conn.execute(
                "select embedding from section_embeddings where section_id = %s and model_name = %s",
                (section_id, model_name),
            ).fetchone()
        return None if row is None else _to_numpy(row[0])

    # -- ingest -------------------------------------------------------------------------------------

    def ingest(
        self,
        sections: Iterable,
        embedding_service,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        write_batch: int = DEFAULT_WRITE_BATCH,
        queue_size: int | None = None,
        flush_interval: float = 0.25,
        build_index: bool | None = None,
        on_progress: Optional[Callable[[dict], None]] = None,
    ) -> dict:
        """Store ``sections`` and embed the ones whose stored vector is missing or out of date.

        Streams: ``chunk_size`` sections at a time are upserted and their stored hashes looked up;
        unchanged ones are skipped; the rest go to ``embedding_service.stream_embeddings`` as the
        engine asks for them, and its outcomes go through a queue of ``queue_size`` (default
        2 × write_batch) to a writer thread that writes ``write_batch`` outcomes per transaction
        (or whatever arrived within ``flush_interval`` seconds).

        Returns ``success_count``, ``failed_count``, ``total_tokens`` (billed during the run:
        the service's ``usage.tokens`` delta), ``failed_ids``, ``skipped_count`` and ``errors``
        ({section id: reason}). A blank or unstorable section is a
        failure with its reason, not an exception. Failures are recorded in ``embedding_failures``
        (except unstorable sections, which have no row to refer to); a success clears them.

        If the embedding stream raises (``core.errors.ProviderFatalError`` on quota/auth errors, or
        anything else, KeyboardInterrupt included), the run stops: everything that arrived is
        written, nothing is recorded for sections never answered, and the exception is re-raised
        with the partial summary attached as ``error.result``. A database error in the writer
        stops the run the same way.

        ``build_index``: True builds the model's HNSW index afterwards, False never; None (default)
        builds it when the model has none yet and at least ``auto_index_min_rows`` vectors.

        ``on_progress`` is called (from the writer thread too) with the counts so far: ``success``,
        ``failed``, ``skipped``, ``tokens``.
        """
        if chunk_size < 1 or write_batch < 1:
            raise ValueError("chunk_size and write_batch must be positive")
        model = embedding_service.model
        _check_model(model)
        requested_dimensions = getattr(embedding_service, "dimensions", None)
        long_input = getattr(embedding_service, "long_input", None) or LONG_INPUT_DEFAULT
        tally = _Tally(on_progress)
        writer = _Writer(
            self, model, requested_dimensions, long_input, tally,
            batch_size=write_batch, queue_size=queue_size or 2 * write_batch, flush_interval=flush_interval,
        )
        pending: dict[int, tuple[str, bytes]] = {}
        pending_lock = threading.Lock()

        def feed() -> Iterator[tuple[int, str]]:
            seq = 0
            for chunk in _chunks(sections, chunk_size):
                rows: list[_Section] = []
                for obj in chunk:
                    section, bad_id, reason = _coerce_section(obj)
                    if section is None:
                        tally.fail(bad_id, reason)
                    else:
                        rows.append(section)
                rows = _dedupe_sections(rows)
                if not rows:
                    continue
                with self.connection() as conn:
                    with conn.transaction():
                        _upsert_section_rows(conn, rows)
                    stored = _stored_hashes(conn, model, [row.id for row in rows])
                for row in rows:
                    if not row.content.strip():
                        writer.put(("fail", row.id, "empty content"))
                        continue
                    digest = content_hash(row.title, row.content, model, requested_dimensions, long_input)
                    if stored.get(row.id) == digest:
                        with tally.lock:
                            tally.skipped += 1
                        continue
                    seq += 1
                    with pending_lock:
                        pending[seq] = (row.id, digest)
                    yield seq, section_text(row.title, row.content)
                tally.report()
                if writer.error is not None:
                    return

        billed_before = _billed_tokens(embedding_service)
        stopped: Optional[BaseException] = None
        writer.start()
        stream = None
        try:
            stream = embedding_service.stream_embeddings(feed())
            for outcome in stream:
                with pending_lock:
                    section_id, digest = pending.pop(outcome.key)
                if outcome.vector is not None and outcome.error is None:
                    with tally.lock:
                        tally.tokens += int(outcome.tokens or 0)
                    writer.put(("ok", section_id, outcome.vector, int(outcome.tokens or 0), digest))
                else:
                    writer.put(("fail", section_id, outcome.error or "embedding failed"))
                if writer.error is not None:
                    break
        except BaseException as error:
            stopped = error
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # pragma: no cover - best effort
                    _log.debug("closing the embedding stream failed", exc_info=True)
            writer.close()  # flushes what arrived
        _settle_tokens(tally, embedding_service, billed_before)
        result = tally.result()
        if writer.error is not None:
            error = writer.error
            if stopped is not None and not isinstance(stopped, Exception):
                raise stopped  # KeyboardInterrupt & co. win
            _attach_result(error, result)
            raise error
        if stopped is not None:
            _attach_result(stopped, result)
            raise stopped
        self._maybe_build_index(model, build_index, tally.dimensions)
        return result

    def batch_ingest_embeddings(
        self, sections: List[Dict[str, Any]], embedding_service, batch_size: int = 2048
    ) -> Dict[str, Any]:
        """The seed's API: embed and store many sections; see ``ingest``.

        ``batch_size`` is the number of sections read, upserted and hash-checked per round trip
        (the engine packs its own requests within the provider's limits).
        """
        if not sections:
            return {"success_count": 0, "failed_count": 0, "total_tokens": 0, "failed_ids": [],
                    "skipped_count": 0, "errors": {}}
        return self.ingest(sections, embedding_service, chunk_size=max(1, int(batch_size)))

    def ingest_embeddings(self, section, embedding_service) -> Dict[str, Any]:
        """Embed and store one section; returns the same summary as ``ingest``."""
        return self.ingest([section], embedding_service, build_index=False)

    # -- sync ---------------------------------------------------------------------------------------

    def sync(self, embedding_service, *, claim_batch: int = 500, limit: int | None = None,
             on_progress: Optional[Callable[[dict], None]] = None) -> dict:
        """Embed every stored section whose vector for the service's model is missing or stale.

        Several processes can run this at once: each transaction claims up to ``claim_batch`` rows
        with ``FOR NO KEY UPDATE SKIP LOCKED`` (so the writer's foreign-key checks are not blocked),
        embeds them, writes the vectors and failures, and commits; rows another process holds are
        skipped, and each process walks the ids in order once, so a section that fails is tried
        once per run. ``limit`` caps the sections claimed by this call. Returns the ``ingest``
        summary (``skipped_count`` is 0: only stale sections are claimed). On an embedding-stream
        exception, what arrived is committed and the exception re-raised with ``error.result``.
        """
        model = embedding_service.model
        _check_model(model)
        requested_dimensions = getattr(embedding_service, "dimensions", None)
        long_input = getattr(embedding_service, "long_input", None) or LONG_INPUT_DEFAULT
        tally = _Tally(on_progress)
        billed_before = _billed_tokens(embedding_service)
        after: Optional[str] = None
        claimed_total = 0
        # Walks sections in id order from where the last claim ended, probing the primary key of
        # section_embeddings per row (a scalar subquery: no join that would rescan the model's rows);
        # a missing vector, a NULL hash and a different hash all compare "distinct".
        stale = sql.SQL(
            "(select e.content_hash from section_embeddings e"
            " where e.section_id = s.id and e.model_name = %(model)s)"
            " is distinct from sections_content_hash(s.title, s.content, %(model)s, %(dims)s, %(policy)s)"
        )
        claim = sql.SQL(
            "select s.id from sections s where {after} {stale} "
            "order by s.id limit %(n)s for no key update skip locked"
        )
        # Under READ COMMITTED the claim's filter saw the snapshot taken before its row locks were
        # granted: a row another worker embedded and committed in between is locked fine and still
        # looks stale. A second statement (a fresh snapshot, our locks now held) drops those.
        recheck = sql.SQL(
            "select s.id, s.title, s.content from sections s where s.id = any(%(ids)s) and {stale} order by s.id"
        ).format(stale=stale)
        while limit is None or claimed_total < limit:
            n = claim_batch if limit is None else min(claim_batch, limit - claimed_total)
            query = claim.format(after=sql.SQL("s.id > %(after)s and") if after is not None else sql.SQL(""),
                                 stale=stale)
            params = {"model": model, "dims": requested_dimensions, "policy": long_input, "n": n, "after": after}
            with self.connection() as conn, conn.transaction():
                ids = [r[0] for r in conn.execute(query, params).fetchall()]
                if not ids:
                    break
                after = ids[-1]
                claimed_total += len(ids)
                rows = conn.execute(recheck, {**params, "ids": ids}).fetchall()
                successes: list = []
                failures: list = []
                items = []
                digests = {}
                for i, (section_id, title, content) in enumerate(rows):
                    if not (content or "").strip():
                        failures.append((section_id, "empty content"))
                        continue
                    digests[i] = (section_id, content_hash(title, content, model, requested_dimensions, long_input))
                    items.append((i, section_text(title, content)))
                stopped: Optional[BaseException] = None
                try:
                    if items:
                        for outcome in embedding_service.stream_embeddings(items):
                            section_id, digest = digests[outcome.key]
                            if outcome.vector is not None and outcome.error is None:
                                tally.tokens += int(outcome.tokens or 0)
                                successes.append((section_id, outcome.vector, int(outcome.tokens or 0), digest))
                            else:
                                failures.append((section_id, outcome.error or "embedding failed"))
                except BaseException as error:
                    stopped = error
                result = vector_writer.write_batch(
                    conn, model, successes, failures,
                    requested_dimensions=requested_dimensions, long_input=long_input,
                )
            # committed
            tally.add_batch(successes, failures, result)
            if stopped is not None:
                _settle_tokens(tally, embedding_service, billed_before)
                result = tally.result()
                _attach_result(stopped, result)
                raise stopped
        _settle_tokens(tally, embedding_service, billed_before)
        return tally.result()

    # -- index & search -----------------------------------------------------------------------------

    def _has_halfvec(self, conn) -> bool:
        if self._halfvec is None:
            self._halfvec = bool(conn.execute("select to_regtype('halfvec') is not null").fetchone()[0])
        return self._halfvec

    def _cast_type(self, conn, dimensions: int) -> Optional[str]:
        """The type the index and queries cast to for this dimension, or None if it cannot be indexed."""
        if dimensions <= HNSW_MAX_DIMENSIONS:
            return "vector"
        if dimensions <= HALFVEC_MAX_DIMENSIONS and self._has_halfvec(conn):
            return "halfvec"
        return None

    def _search_cast(self, conn, dimensions: int) -> str:
        # must match match_sections(): halfvec above 2000 dimensions when the type exists
        if dimensions > HNSW_MAX_DIMENSIONS and self._has_halfvec(conn):
            return "halfvec"
        return "vector"

    def build_index(
        self,
        model_name: str,
        *,
        dimensions: int | None = None,
        m: int = 16,
        ef_construction: int = 64,
        maintenance_work_mem: str | None = None,
    ) -> list[str]:
        """Build the HNSW index (cosine) for ``model_name``: one per dimension stored for it.

        ``CREATE INDEX IF NOT EXISTS … USING hnsw ((embedding::vector(d)) vector_cosine_ops)
        WHERE model_name = '<model>' AND dimensions = d``, under an advisory lock so concurrent
        callers build it once, with ``maintenance_work_mem`` sized to the rows (capped by
        ``max_index_memory``). Blocks writes to ``section_embeddings`` while it builds: build after a
        bulk load. Dimensions above what pgvector can index are skipped with a warning (search
        stays exact). Returns the names of the indexes that exist for the model afterwards.
        """
        _check_model(model_name)
        names = []
        with self.connection() as conn:
            if dimensions is None:
                dims_rows = conn.execute(
                    "select dimensions, count(*) from section_embeddings where model_name = %s group by dimensions",
                    (model_name,),
                ).fetchall()
            else:
                count = conn.execute(
                    "select count(*) from section_embeddings where model_name = %s and dimensions = %s",
                    (model_name, dimensions),
                ).fetchone()[0]
                dims_rows = [(int(dimensions), count)]
            for dims, rows in dims_rows:
                cast = self._cast_type(conn, dims)
                if cast is None:
                    _log.warning("%d dimensions cannot be HNSW-indexed by this pgvector; search for %r stays exact",
                                 dims, model_name)
                    continue
                name = index_name(model_name, dims)
                memory = maintenance_work_mem or _index_memory(rows, dims, m, self.max_index_memory)
                statement = sql.SQL(
                    "create index if not exists {name} on section_embeddings using hnsw "
                    "((embedding::{cast}({dims})) {ops}) with (m = {m}, ef_construction = {efc}) "
                    "where model_name = {model} and dimensions = {dims}"
                ).format(
                    name=sql.Identifier(name),
                    cast=sql.SQL(cast),
                    dims=sql.SQL(str(int(dims))),
                    ops=sql.SQL(f"{cast}_cosine_ops"),
                    m=sql.SQL(str(int(m))),
                    efc=sql.SQL(str(int(ef_construction))),
                    model=sql.Literal(model_name),
                )
                started = time.monotonic()
                with conn.transaction():
                    conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))
                    conn.execute("select set_config('maintenance_work_mem', %s, true)", (memory,))
                    conn.execute(statement)
                _log.info("index %s for %r (%d rows, %d dims) ready in %.1f s",
                          name, model_name, rows, dims, time.monotonic() - started)
                names.append(name)
        return names

    def has_index(self, model_name: str, dimensions: int) -> bool:
        with self.connection() as conn:
            return conn.execute("select to_regclass(%s) is not null",
                                (index_name(model_name, dimensions),)).fetchone()[0]

    def _maybe_build_index(self, model: str, build_index: bool | None, dimensions: set[int]) -> None:
        """After an ingest: build the index for each dimension written that has none, if asked to
        (True) or, by default (None), once the model has ``auto_index_min_rows`` vectors of it."""
        if build_index is False:
            return
        for dims in sorted(dimensions):
            if self._cast_type_cached(dims) is None or self.has_index(model, dims):
                continue
            if build_index is None:
                with self.connection() as conn:
                    enough = conn.execute(
                        "select count(*) from (select 1 from section_embeddings "
                        "where model_name = %s and dimensions = %s limit %s) t",
                        (model, dims, self.auto_index_min_rows),
                    ).fetchone()[0] >= self.auto_index_min_rows
                if not enough:
                    continue
            self.build_index(model, dimensions=dims)

    def _cast_type_cached(self, dims: int) -> Optional[str]:
        with self.connection() as conn:
            return self._cast_type(conn, dims)

    def _knn_statement(
        self, conn, model_name: str, dimensions: int, snippet_chars: int = SNIPPET_CHARS
    ) -> sql.Composed:
        """The k-NN query, with the exact expression and literal predicates of the partial index."""
        cast = self._search_cast(conn, dimensions)
        typed = sql.SQL(f"{cast}({int(dimensions)})")
        return sql.SQL(
            "select s.id, s.title, (1 - (e.embedding::{t} <=> %(q)b::{t}))::float8 as score, "
            "left(s.content, {snip}) as snippet "
            "from section_embeddings e join sections s on s.id = e.section_id "
            "where e.model_name = {model} and e.dimensions = {d} "
            "order by e.embedding::{t} <=> %(q)b::{t} limit %(k)s"
        ).format(t=typed, snip=sql.SQL(str(int(snippet_chars))), model=sql.Literal(model_name),
                 d=sql.SQL(str(int(dimensions))))

    def search_by_vector(self, vector, model_name: str, k: int = 10) -> list[dict]:
        """The ``k`` sections nearest to ``vector`` (cosine) among ``model_name``'s embeddings.

        Uses the model's HNSW index when it exists (``hnsw.ef_search`` is raised to ``k``, so up to
        1000 results; an HNSW scan returns at most ef_search rows), else an exact scan.
        """
        _check_model(model_name)
        if int(k) < 1:
            return []
        array, problem = vector_writer.check_vector(vector)
        if problem:
            raise ValueError(f"query vector: {problem}")
        with self.connection() as conn, conn.transaction():
            conn.execute("select set_config('hnsw.ef_search', %s, true)", (str(max(40, min(int(k), 1000))),))
            rows = conn.execute(self._knn_statement(conn, model_name, array.shape[0]),
                                {"q": array, "k": int(k)}).fetchall()
        return [
            {"id": r[0], "title": r[1], "score": float(r[2]), "snippet": " ".join((r[3] or "").split())}
            for r in rows
        ]

    def search(self, query: str, embedding_service, k: int = 10) -> list[dict]:
        """Embed ``query`` with ``embedding_service`` and return the ``k`` nearest sections:
        ``[{id, title, score (cosine similarity), snippet}]``, best first."""
        vector = embedding_service.generate_embedding(query)
        return self.search_by_vector(vector, embedding_service.model, k)

    def match_sections(self, query_embedding, match_count: int = 10, model_name: str | None = None) -> list[dict]:
        """Call the ``match_sections`` SQL function (what Supabase RPC callers use)."""
        array, problem = vector_writer.check_vector(query_embedding)
        if problem:
            raise ValueError(f"query vector: {problem}")
        with self.connection() as conn, conn.transaction():
            rows = conn.execute("select id, title, content, similarity from match_sections(%b, %s, %s)",
                                (array, match_count, model_name)).fetchall()
        return [dict(zip(("id", "title", "content", "similarity"), r)) for r in rows]

    # -- status -------------------------------------------------------------------------------------

    def status(self, model_name: str | None = None, *, top_reasons: int = 5) -> dict:
        """Per model: ``{model: {sections, embedded, current, stale, missing, failed, dimensions,
        indexed, top_failure_reasons: [(reason, count)]}}``.

        ``stale``: embeddings whose section text changed since (recomputed in SQL with the
        settings each vector was made with). ``missing``: sections with no vector for the model.
        With ``model_name``, only that model (present even with nothing stored).
        """
        filt = sql.SQL("where model_name = %(m)s") if model_name is not None else sql.SQL("")
        efilt = sql.SQL("where e.model_name = %(m)s") if model_name is not None else sql.SQL("")
        params = {"m": model_name, "top": top_reasons}
        with self.connection() as conn, conn.transaction():
            sections = conn.execute("select count(*) from sections").fetchone()[0]
            embedded = conn.execute(sql.SQL(
                """
                select e.model_name, count(*),
                       count(*) filter (where e.content_hash is null or e.content_hash <>
                           sections_content_hash(s.title, s.content, e.model_name,
                                                 e.requested_dimensions, e.long_input)),
                       array_agg(distinct e.dimensions)
                  from section_embeddings e join sections s on s.id = e.section_id
                  {efilt}
                 group by e.model_name
                """).format(efilt=efilt), params).fetchall()
            failed = dict(conn.execute(sql.SQL(
                "select model_name, count(*) from embedding_failures {filt} group by model_name").format(filt=filt),
                params).fetchall())
            reasons = conn.execute(sql.SQL(
                """
                select model_name, reason, n from (
                    select model_name, reason, count(*) as n,
                           row_number() over (partition by model_name order by count(*) desc, reason) as rank
                      from embedding_failures {filt} group by model_name, reason) r
                 where rank <= %(top)s order by model_name, n desc, reason
                """).format(filt=filt), params).fetchall()
            models = {row[0] for row in embedded} | set(failed)
            if model_name is not None:
                models.add(model_name)
            out: dict = {}
            by_model = {row[0]: row for row in embedded}
            for model in sorted(models):
                _, count, stale, dims = by_model.get(model, (model, 0, 0, []))
                dims = sorted(d for d in (dims or []) if d is not None)
                indexed = {
                    d: conn.execute("select to_regclass(%s) is not null", (index_name(model, d),)).fetchone()[0]
                    for d in dims
                }
                out[model] = {
                    "sections": sections,
                    "embedded": count,
                    "current": count - stale,
                    "stale": stale,
                    "missing": sections - count,
                    "failed": failed.get(model, 0),
                    "dimensions": dims,
                    "indexed": indexed,
                    "top_failure_reasons": [(r[1], r[2]) for r in reasons if r[0] == model],
                }
        return out


# -- helpers ----------------------------------------------------------------------------------------


def _check_model(model_name: Any) -> None:
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model name must be a non-empty string")
    problem = _text_problem(model_name)
    if problem:
        raise ValueError(f"model name {problem}")


def _billed_tokens(service) -> Optional[int]:
    tokens = getattr(getattr(service, "usage", None), "tokens", None)
    return tokens if isinstance(tokens, int) else None


def _settle_tokens(tally: "_Tally", service, before: Optional[int]) -> None:
    """``total_tokens``: what the service says it was billed during the run (its ``usage.tokens``
    delta, as ``batch_generate_embeddings`` reports), else the tokens of the successful outcomes."""
    after = _billed_tokens(service)
    if before is not None and after is not None:
        with tally.lock:
            tally.tokens = after - before


def _attach_result(error: BaseException, result: dict) -> None:
    try:
        error.result = result  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "to_numpy"):
        return value.to_numpy()
    return np.asarray(value, dtype=np.float32)


def _index_memory(rows: int, dims: int, m: int, cap: str) -> str:
    """maintenance_work_mem for an HNSW build: the graph should fit (~vector + 2·m neighbour slots + overhead)."""
    per_element = dims * 4 + 2 * m * 8 + m * 8 + 128
    needed_mb = int(rows * per_element * 1.3 / (1 << 20)) + 64
    cap_mb = _parse_mb(cap)
    return f"{max(64, min(needed_mb, cap_mb))}MB"


def _parse_mb(value: str) -> int:
    text = value.strip().upper()
    for suffix, factor in (("TB", 1 << 20), ("GB", 1 << 10), ("MB", 1), ("KB", 1 / 1024)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text) // 1024  # plain number: kB, as Postgres reads it
