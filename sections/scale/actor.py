"""The Ray actor that embeds: one ``EmbeddingService`` per actor, built where the actor runs.

Ray Data hands ``EmbedBatch`` batches of ``pos`` (the text's place in the driver's window) and
``text``. The actor runs them through its own engine (the local model on the worker's CPUs or GPU,
or an OpenAI-compatible server under the rate budget every worker shares in Postgres) and answers
with one row per text answered plus one note row (``pos == NOTE``) saying what the batch billed and,
when the provider refused the run (quota, auth), why: a batch whose every request was refused
still has a row to say so. Vectors travel as float32 bytes, so batches of any dimension share one
schema.

The service is built from a ``ServiceSpec`` and never from an API key in the task's arguments: an
actor reads ``OPENAI_API_KEY`` from its own environment (a local Ray inherits the driver's; a
cluster's nodes set it, or the run passes it in its runtime environment).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sections.engine.errors import ProviderFatalError
from sections.engine.service import EmbeddingService
from sections.engine.tokens import LongInputPolicy
from sections.postgres.budget import PostgresBudget, budget_key
from sections.postgres.database import Database
from sections.providers.base import ProviderKind
from sections.records import EmbeddingOutcome, EmbeddingSettings

__all__ = ["NOTE", "BatchAnswer", "EmbedBatch", "ServiceSpec", "answer_of", "encode"]

NOTE = -1  # the ``pos`` of a batch's note row: its bill and its fatal error, if any


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How every actor builds its service: ``EmbeddingService``'s arguments, and the database whose
    shared rate budget an OpenAI-compatible service draws on (None: each actor learns its own)."""

    model: str
    base_url: str | None = None
    provider: str | None = None
    dimensions: int | None = None
    concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    long_input: str = "average"
    budget_url: str | None = None

    @property
    def settings(self) -> EmbeddingSettings:
        """What the actors' vectors are fingerprinted with: the same as one process's service."""
        return EmbeddingSettings(self.model, self.dimensions, LongInputPolicy.parse(self.long_input))

    def build(self) -> EmbeddingService:
        options: dict[str, Any] = {"concurrency": self.concurrency, "rpm": self.rpm, "tpm": self.tpm}
        return EmbeddingService(model=self.model, base_url=self.base_url, provider=self.provider,
                                dimensions=self.dimensions, long_input=self.long_input, cache_size=0,
                                **{key: value for key, value in options.items() if value is not None})


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    """One batch's answer as the driver reads it: outcomes keyed by ``pos``, the bill, a fatal reason."""

    outcomes: list[EmbeddingOutcome]
    billed: int
    fatal: str | None


def encode(outcomes: list[EmbeddingOutcome], billed: int, fatal: str | None) -> dict[str, np.ndarray]:
    """Columns for Ray Data: the answered rows, then the note row."""
    return {
        "pos": np.array([int(o.key) for o in outcomes] + [NOTE], dtype=np.int64),  # type: ignore[call-overload]
        "vector": np.array([o.vector.astype(np.float32).tobytes() if o.ok and o.vector is not None else b""
                            for o in outcomes] + [b""], dtype=object),
        "error": np.array([o.error or "" for o in outcomes] + [fatal or ""], dtype=object),
        "tokens": np.array([int(o.tokens or 0) for o in outcomes] + [billed], dtype=np.int64),
        "transient": np.array([o.transient for o in outcomes] + [False], dtype=bool),
    }


def answer_of(batch: Mapping[str, np.ndarray]) -> BatchAnswer:
    """The driver's side of ``encode``."""
    outcomes: list[EmbeddingOutcome] = []
    billed, fatal = 0, None
    for pos, vector, error, tokens, transient in zip(batch["pos"].tolist(), batch["vector"], batch["error"],
                                                     batch["tokens"].tolist(), batch["transient"].tolist()):
        if pos == NOTE:
            billed += int(tokens)
            fatal = fatal or (str(error) or None)
        elif error:
            outcomes.append(EmbeddingOutcome(int(pos), None, int(tokens), str(error), bool(transient)))
        else:
            outcomes.append(EmbeddingOutcome(int(pos), np.frombuffer(bytes(vector), dtype=np.float32), int(tokens)))
    return BatchAnswer(outcomes, billed, fatal)


class EmbedBatch:
    """The callable class ``map_batches`` runs on each actor: built once, then batch after batch."""

    def __init__(self, spec: ServiceSpec):
        self.service = spec.build()
        if self.service.settings != spec.settings:
            raise ValueError(f"on this worker {spec.model!r} resolves to {self.service.settings}, "
                             f"not {spec.settings}: install the same model and package version on every node")
        if spec.budget_url is not None and self.service.provider_name is ProviderKind.OPENAI:
            self.database = Database(spec.budget_url, migrate=False, min_size=1, max_size=2)
            key = budget_key(self.service.settings.model, self.service.base_url)
            self.service.limiter.shared = PostgresBudget(self.database, key)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        before = self.service.total_tokens
        outcomes: list[EmbeddingOutcome] = []
        fatal: str | None = None
        try:
            for outcome in self.service.stream_embeddings(zip(batch["pos"].tolist(), batch["text"].tolist())):
                outcomes.append(outcome)
        except ProviderFatalError as error:  # what arrived first still goes back, then the driver stops
            fatal = str(error) or type(error).__name__
        return encode(outcomes, self.service.total_tokens - before, fatal)
