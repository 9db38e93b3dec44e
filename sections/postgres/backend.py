"""The pipeline's ``Backend`` on Postgres/pgvector: each method one transaction on a pooled connection."""
from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


from sections.batch.records import BatchState, JobItem, JobRecord, JobWrite, NewJob
from sections.postgres import batch_jobs, claims, leases, sections, vectors
from sections.postgres.database import Database, unreachable
from sections.records import (DEFAULT_COLLECTION, Deleted, EmbeddingSettings, FailureRow, RetrySchedule, Section, Selection,
                          VectorRow, WriteResult)

__all__ = ["PostgresBackend", "PostgresJobWorker", "PostgresJobs", "PostgresLeases"]

_log = logging.getLogger(__name__)
# What a run's hot path waits for a pooled connection: a database that went away must show within
# seconds (the run then holds its sending and waits it out, sections.pipeline.outage), not after
# the pool's 30 s, while requests whose answers cannot be kept go on being sent.
RUN_CONNECTION_WAIT_S = 0.5


@dataclass(slots=True)
class PostgresLeases:
    database: Database
    worker: uuid.UUID

    embedded: int = 0

    def take(self, settings: EmbeddingSettings, wanted: Mapping[str, bytes]) -> set[str]:
        with self.database.connection(RUN_CONNECTION_WAIT_S) as conn:
            return leases.take(conn, self.worker, settings.model, wanted)

    def take_over(self, settings: EmbeddingSettings, wanted: Mapping[str, bytes]) -> set[str]:
        with self.database.connection(RUN_CONNECTION_WAIT_S) as conn:
            leases.reap(conn)
            return leases.take(conn, self.worker, settings.model, wanted)

    def claim(self, settings: EmbeddingSettings, after: str | None, limit: int,
              collection: str | None = DEFAULT_COLLECTION, retry: RetrySchedule | None = None) -> claims.Claimed | None:
        with self.database.connection(RUN_CONNECTION_WAIT_S) as conn:
            if after is None:  # a new pass: leases of runs that died are not worth waiting for
                leases.reap(conn)
            return claims.claim_due(conn, self.worker, settings, after, limit, collection, retry)

    def report(self, embedded: int) -> None:
        """Counted at once (not at the next heartbeat), so ``status`` is current after every pass."""
        if embedded != self.embedded:
            self.embedded = embedded
            try:
                with self.database.connection(RUN_CONNECTION_WAIT_S) as conn:
                    leases.beat(conn, self.worker, None, embedded)
            except Exception as error:  # a count for ``status``: the next beat carries it
                if not unreachable(error):
                    raise


class PostgresBackend:
    def __init__(self, database: Database):
        self.database = database

    def upsert_sections(self, rows: Sequence[Section], collection: str = DEFAULT_COLLECTION) -> int:
        with self.database.connection(RUN_CONNECTION_WAIT_S) as conn, conn.transaction():
            return sections.upsert_sections(conn, rows, collection)

    def foreign_sections(self, section_ids: Sequence[str], collection: str) -> dict[str, str]:
        with self.database.connection(RUN_CONNECTION_WAIT_S) as conn:
            return sections.foreign_sections(conn, section_ids, collection)

    def stored_hashes(self, model: str, section_ids: Sequence[str]) -> dict[str, bytes]:
        with self.database.connection(RUN_CONNECTION_WAIT_S) as conn:
            return sections.stored_hashes(conn, model, section_ids)

    def write_batch(self, settings: EmbeddingSettings, successes: Sequence[VectorRow],
                    failures: Sequence[FailureRow]) -> WriteResult:
        with self.database.connection(RUN_CONNECTION_WAIT_S) as conn, conn.transaction():
            result = vectors.write_batch(conn, settings, successes, failures)
            leases.release(conn, settings.model, [row[0] for row in successes] + [row[0] for row in failures])
            return result

    @contextmanager
    def worker(self, command: str, model: str | None = None, collection: str | None = None) -> Iterator[PostgresLeases]:
        """Register a worker (reaping dead ones first), beat on a thread while the run lasts, and
        end it (its leases with it) however the run ends."""
        role = leases.Role(command, model, collection)
        with self.database.connection(RUN_CONNECTION_WAIT_S) as conn:
            leases.reap(conn)
            worker = leases.register_worker(conn, role)
        held = PostgresLeases(self.database, worker)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(leases.BEAT_INTERVAL):
                try:
                    with self.database.connection(RUN_CONNECTION_WAIT_S) as conn:
                        leases.beat(conn, worker, role, held.embedded)
                except Exception:  # a missed beat costs nothing until WORKER_TTL; the run reports its own errors
                    _log.debug("heartbeat failed", exc_info=True)

        beating = threading.Thread(target=beat, name="sections-heartbeat", daemon=True)
        beating.start()
        try:
            yield held
        finally:
            stop.set()
            beating.join()
            try:
                with self.database.connection(RUN_CONNECTION_WAIT_S) as conn:
                    leases.end_worker(conn, worker)
            except Exception:  # the database is gone: the worker is reaped when its beat ages
                _log.debug("ending worker %s failed", worker, exc_info=True)

    def outage(self, error: BaseException) -> bool:
        return unreachable(error)

    def reconnect(self) -> bool:
        return self.database.renew()

    def selected_ids(self, selection: Selection) -> list[str]:
        with self.database.connection() as conn:
            return sections.selected_ids(conn, selection)

    def delete_selected(self, selection: Selection) -> Deleted:
        with self.database.connection() as conn, conn.transaction():
            return sections.delete_selected(conn, selection)


@dataclass(slots=True)
class PostgresJobWorker:
    leases: PostgresLeases

    def take(self, settings: EmbeddingSettings, wanted: Mapping[str, bytes]) -> set[str]:
        return self.leases.take(settings, wanted)

    def take_over(self, settings: EmbeddingSettings, wanted: Mapping[str, bytes]) -> set[str]:
        return self.leases.take_over(settings, wanted)

    def claim(self, settings: EmbeddingSettings, after: str | None, limit: int,
              collection: str | None = DEFAULT_COLLECTION, retry: RetrySchedule | None = None) -> claims.Claimed | None:
        return self.leases.claim(settings, after, limit, collection, retry)

    def report(self, embedded: int) -> None:
        self.leases.report(embedded)

    def record(self, job: NewJob, replaces: str | None = None) -> None:
        with self.leases.database.connection() as conn:
            batch_jobs.record(conn, job, self.leases.worker, replaces)

    def hold(self, job_id: str) -> bool:
        with self.leases.database.connection() as conn:
            return batch_jobs.hold(conn, job_id, self.leases.worker)


class PostgresJobs:
    """The pipeline's ``JobStore`` on Postgres: each method one transaction on a pooled connection."""

    def __init__(self, backend: PostgresBackend):
        self.backend, self.database = backend, backend.database

    @contextmanager
    def worker(self, command: str) -> Iterator[PostgresJobWorker]:
        with self.backend.worker(command) as held:
            yield PostgresJobWorker(held)

    def due(self, settings: EmbeddingSettings, after: str | None, limit: int, collection: str | None) -> list[Section]:
        with self.database.connection() as conn:
            return claims.due_sections(conn, settings, after, limit, collection)

    def resendable(self, settings: EmbeddingSettings, job_id: str, section_ids: Sequence[str]) -> list[Section]:
        with self.database.connection() as conn:
            return batch_jobs.resendable(conn, settings, job_id, section_ids)

    def open_jobs(self, settings: EmbeddingSettings | None = None, endpoint: str | None = None) -> list[JobRecord]:
        with self.database.connection() as conn:
            return batch_jobs.open_jobs(conn, settings, endpoint)

    def jobs(self, limit: int) -> list[JobRecord]:
        with self.database.connection() as conn:
            return batch_jobs.jobs(conn, limit)

    def job(self, key: str) -> JobRecord | None:
        with self.database.connection() as conn:
            return batch_jobs.job(conn, key)

    def polled(self, job_id: str, state: BatchState) -> None:
        with self.database.connection() as conn:
            batch_jobs.polled(conn, job_id, state)

    def forget(self, job_id: str) -> None:
        with self.database.connection() as conn:
            batch_jobs.forget(conn, job_id)

    def items(self, job_id: str) -> list[JobItem]:
        with self.database.connection() as conn:
            return batch_jobs.items(conn, job_id)

    def write(self, settings: EmbeddingSettings, job_id: str, successes: Sequence[VectorRow],
              failures: Sequence[FailureRow]) -> JobWrite:
        with self.database.connection() as conn, conn.transaction():
            return batch_jobs.write_results(conn, settings, job_id, successes, failures)

    def close(self, job_id: str, billed_tokens: int) -> None:
        with self.database.connection() as conn:
            batch_jobs.close(conn, job_id, billed_tokens)
