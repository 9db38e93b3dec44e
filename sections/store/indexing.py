"""The store's HNSW index operations: build, bring up to date, check, and the ingest's index policy.

A part ``SupabaseStore`` holds (``store.indexes``) and hands this work to; it is given a way to open
a connection and the two settings of its policy. The SQL and the build itself are
``postgres.index`` and ``postgres.index_build``.
"""
from __future__ import annotations

import logging

import psycopg

from sections.store.lifecycle import check_model
from sections.pipeline.stream import attach_result
from sections.postgres import index as pg_index
from sections.postgres import index_build
from sections.postgres import status as pg_status
from sections.postgres.database import Connect
from sections.postgres.index_build import BuildOptions, IndexReport, ProgressCallback
from sections.records import IngestSummary

__all__ = ["Indexes"]

_log = logging.getLogger(__name__)


class Indexes:
    """``auto_index_min_rows``: after an ingest, a missing index is built once its dimension has this
    many vectors; ``max_index_memory``: the most ``maintenance_work_mem`` a build asks for."""

    def __init__(self, connect: Connect, auto_index_min_rows: int, max_index_memory: str):
        index_build.parse_kb(max_index_memory)  # a bad value fails here, not after a long ingest
        self.connection = connect
        self.auto_index_min_rows = auto_index_min_rows
        self.max_index_memory = max_index_memory

    def build_index(self, model_name: str, *, dimensions: int | None = None, m: int = 16,
                    ef_construction: int = 64, maintenance_work_mem: str | None = None,
                    on_progress: ProgressCallback | None = None) -> list[str]:
        """Build the HNSW index (cosine) for ``model_name``: one per dimension stored for it (or
        just ``dimensions``); the names of the model's valid indexes afterwards. ``update_indexes``
        does the work and says what it did."""
        return self.update_indexes(model_name, dimensions=dimensions, m=m, ef_construction=ef_construction,
                                   maintenance_work_mem=maintenance_work_mem, on_progress=on_progress).indexes

    def update_indexes(self, model_name: str, *, dimensions: int | None = None, min_rows: int | None = None,
                       m: int = 16, ef_construction: int = 64, maintenance_work_mem: str | None = None,
                       on_progress: ProgressCallback | None = None) -> IndexReport:
        """Bring the model's HNSW indexes up to date: drop those left invalid by a build that did not
        finish and those of dimensions no longer stored, build each missing one (with ``min_rows``,
        only where that many vectors are stored). A build runs without the role's statement timeout,
        with memory sized to the graph (``sections.postgres.index_build``), and blocks writes to
        ``section_embeddings`` (not searches) while it runs. ``on_progress`` gets ``IndexProgress``
        from a second connection while an index builds. Raises ``psycopg.Error`` if a build fails;
        what was built or dropped before it stays."""
        check_model(model_name)
        options = BuildOptions(m, ef_construction, maintenance_work_mem, self.max_index_memory)
        return index_build.ensure(self.connection, model_name, dimensions=dimensions, min_rows=min_rows,
                                  options=options, on_progress=on_progress)

    def has_index(self, model_name: str, dimensions: int) -> bool:
        """Whether the model has a valid HNSW index for vectors of ``dimensions``."""
        with self.connection() as conn:
            return pg_index.has_index(conn, model_name, dimensions)

    def after_ingest(self, model: str, build_index: bool | None, summary: IngestSummary,
                            on_progress: ProgressCallback | None) -> None:
        """The ingest's index policy (see ``ingest``): a failure is the summary's ``index_error``,
        never the run's, so what was embedded is still reported as embedded. The planner's
        statistics come first, so the first search after a bulk load uses the index."""
        try:
            self._analyze(int(summary.get("success_count", 0)))
            report = self.update_indexes(model, min_rows=None if build_index else self.auto_index_min_rows,
                                         on_progress=on_progress)
        except psycopg.Error as error:
            summary["index_error"] = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return
        except KeyboardInterrupt as error:  # the build rolls back; what was embedded is still reported
            attach_result(error, summary)
            raise
        for note in report.notes:
            _log.warning("%s", note)

    def _analyze(self, written: int) -> None:
        """Fresh planner statistics after a bulk write; one that fails (a role that may not
        analyze) costs only autovacuum's delay, so it is a warning, never the run's failure."""
        try:
            with self.connection() as conn:
                pg_status.analyze_after_writes(conn, written)
        except psycopg.Error as error:
            _log.warning("tables not analyzed after the ingest: %s", (str(error).strip().splitlines() or ["?"])[0])
