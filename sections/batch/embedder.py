"""An embedding service's Batch API side: its planning, its client, its settings, for the batch pipeline.

Built by ``EmbeddingService.batch_api()``, so a batch is planned with the very tokenizer, limits
and long-input policy the synchronous path uses (the same vectors either way) and sent through
the same SDK client (base URL, key, timeouts).
"""
from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterable, Iterator

from sections.batch.plan import plan_files
from sections.batch.records import BatchFile, BatchLimits, BatchState, JobItem
from sections.batch.results import CollectedJob
from sections.engine.batching import Limits
from sections.providers.openai_batch import BatchClient
from sections.records import EmbeddingOutcome, EmbeddingSettings
from sections.engine.tokens import LongInputPolicy, Tokenizer

__all__ = ["BatchEmbedder"]


class BatchEmbedder:
    """``sections.batch.records.BatchApiEmbedder`` over OpenAI's Batch API (or a compatible server's)."""

    def __init__(self, client: BatchClient, tokenizer: Tokenizer, limits: Limits, file_limits: BatchLimits,
                 settings: EmbeddingSettings, endpoint: str):
        self.client, self.tokenizer, self.limits, self.file_limits = client, tokenizer, limits, file_limits
        self._settings, self._endpoint = settings, endpoint
        self._body: dict[str, object] = {"model": settings.model, "encoding_format": "base64"}
        if settings.dimensions is not None:
            self._body["dimensions"] = settings.dimensions

    @property
    def settings(self) -> EmbeddingSettings:
        return self._settings

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def plan(self, items: Iterable[tuple[Hashable, str]], ready: list[EmbeddingOutcome], *,
             isolate: bool = False) -> Iterator[BatchFile]:
        return plan_files(items, self.tokenizer, self.limits, self.file_limits,
                          self._settings.long_input or LongInputPolicy.AVERAGE, self._body, ready, isolate=isolate)

    def upload(self, planned: BatchFile) -> str:
        return self.client.upload(planned.content, f"sections-{uuid.uuid4().hex[:12]}.jsonl")

    def create(self, input_file_id: str, job_id: str) -> BatchState:
        return self.client.create(input_file_id, job_id)

    def find(self, job_id: str, input_file_id: str | None, since_epoch: float) -> BatchState | None:
        return self.client.find(job_id, input_file_id, since_epoch)

    def retrieve(self, batch_id: str) -> BatchState:
        return self.client.retrieve(batch_id)

    def cancel(self, batch_id: str) -> BatchState:
        return self.client.cancel(batch_id)

    def collect(self, items: list[JobItem], state: BatchState) -> CollectedJob:
        return CollectedJob(items, state, self.client.results)
