"""Answers paid for that the database could not take: kept in a local file until a run can write them.

When a run gives up waiting for its database (``sections.pipeline.outage``), every vector and
failure it was answered goes to its spool, one JSON line each, flushed and synced to disk. The
next run with the same settings against the same database writes the spool first, before it
sends anything, so nothing is bought twice: what the spool stores is no longer due. A spooled
vector carries the fingerprint it was computed for, so a section edited meanwhile stays due, as
with any write.
"""
from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sections.records import FailureRow, VectorRow, WriteResult

__all__ = ["SPOOL_BATCH", "Spool"]

SPOOL_BATCH = 1000  # rows per write when a spool is written back
Row = VectorRow | FailureRow


def _digest(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def _line(row: Row) -> str:
    if isinstance(row, VectorRow):
        vector = row.vector.tolist() if hasattr(row.vector, "tolist") else list(row.vector)
        return json.dumps({"id": row.section_id, "vector": vector, "tokens": row.token_count,
                           "hash": _digest(row.content_hash)})
    return json.dumps({"id": row.section_id, "reason": row.reason, "hash": _digest(row.content_hash)})


def _row(line: str) -> Row:
    data = json.loads(line)
    if "vector" in data:
        return VectorRow(data["id"], data["vector"], int(data["tokens"]), _bytes(data["hash"]))
    return FailureRow(data["id"], data["reason"], _bytes(data["hash"]))


class Spool:
    """The spool file of one database and one set of embedding settings (the caller names it)."""

    def __init__(self, path: Path):
        self.path = path
        self.added = 0  # rows this run spooled

    def add(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write("".join(_line(row) + "\n" for row in rows))
            out.flush()
            os.fsync(out.fileno())
        self.added += len(rows)

    def pending(self) -> int:
        """How many rows wait in the file (0 when there is none)."""
        try:
            with open(self.path, encoding="utf-8") as lines:
                return sum(1 for line in lines if line.strip())
        except FileNotFoundError:
            return 0

    def _rows(self) -> Iterator[Row]:
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    try:
                        yield _row(line)
                    except (ValueError, KeyError, TypeError):  # a line cut short by a crash while spooling
                        continue

    def write_back(self, write: Callable[[list[VectorRow], list[FailureRow]], WriteResult]) -> int:
        """Write what the file holds (``write``: one transaction per batch) and delete it; returns the
        rows written. A write that fails leaves the file as it is (a row written twice is harmless:
        the same vector and fingerprint). Not counted in the run's tally: the run that paid for
        them counted them as answered."""
        if not self.path.exists():
            return 0
        rows = list(self._rows())
        for start in range(0, len(rows), SPOOL_BATCH):
            batch = rows[start:start + SPOOL_BATCH]
            vectors = [row for row in batch if isinstance(row, VectorRow)]
            failures = [row for row in batch if isinstance(row, FailureRow)]
            write(vectors, failures)
        self.path.unlink(missing_ok=True)
        return len(rows)
