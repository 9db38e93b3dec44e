"""OpenAI's Batch API (and any server that speaks it) for embeddings: files, batches, result lines.

The client owns what must not go wrong between a batch and the vectors stored from it: every job
is tagged with its record's id (``metadata``), so a batch created by a run that died before
recording it is found again instead of paid for twice; result lines are joined on ``custom_id``
(they come back in any order) and each reply's vectors matched by ``index`` with the count checked,
exactly as synchronous replies are (``sections.providers.openai.match_vectors``); and each failed
request says why, as a kind the collector acts on (refused, transient, expired, cancelled).
Result files are streamed line by line: an output file can be far bigger than its input.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import IO, Any

import openai

from sections.batch.records import BatchState, BatchStatus, FailureKind, RequestResult, request_number
from sections.engine.errors import TransientError
from sections.providers.openai import classify, match_vectors
from sections.redact import scrub

__all__ = ["BatchClient", "JOB_TAG"]

JOB_TAG = "sections_job"  # the metadata key naming the job record a batch belongs to
ENDPOINT = "/v1/embeddings"
UPLOAD_TIMEOUT_S = 600.0  # a file may hold 200 MB: far more than a request's timeout allows for
CLOCK_SKEW_S = 3600.0  # how far before a job's record its batch may look created (clocks differ)
_UNFINISHED = {"batch_expired": FailureKind.EXPIRED, "batch_cancelled": FailureKind.CANCELLED}


def _state(batch: Any) -> BatchState:
    counts = batch.request_counts
    errors = tuple(f"line {error.line}: {error.code}: {scrub(error.message or '')}" if error.line is not None
                   else f"{error.code}: {scrub(error.message or '')}"
                   for error in ((batch.errors.data or []) if batch.errors is not None else []))
    return BatchState(batch.id, BatchStatus(batch.status), counts.total if counts else 0,
                      counts.completed if counts else 0, counts.failed if counts else 0,
                      batch.output_file_id, batch.error_file_id, errors)


def _message(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return scrub(str(message or body)[:500])


def _refused(status: Any, body: Any) -> tuple[FailureKind, str]:
    """A request's own failure, in the words and kinds the synchronous path uses for the same reply."""
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429):
        return FailureKind.REJECTED, f"rejected ({status}): {_message(body)}"
    if status == 429:
        return FailureKind.TRANSIENT, f"rate limited (429): {_message(body)}"
    return FailureKind.TRANSIENT, f"server error ({status}): {_message(body)}"


def parse_line(raw: bytes | str, sizes: Mapping[int, int], dimensions: int | None) -> RequestResult | None:
    """One result line as the request's vectors or its failure; None for a request nothing waits on."""
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    request = request_number(line.get("custom_id")) if isinstance(line, dict) else None
    if request is None or request not in sizes:
        return None
    response, error = line.get("response"), line.get("error")
    if isinstance(error, dict) and error:
        code = str(error.get("code"))
        return RequestResult(request, None, 0, _UNFINISHED.get(code, FailureKind.TRANSIENT),
                             f"{code}: {scrub(str(error.get('message') or ''))}")
    if not isinstance(response, dict):
        return RequestResult(request, None, 0, FailureKind.TRANSIENT, "result line holds neither response nor error")
    body = response.get("body")
    if response.get("status_code") != 200 or not isinstance(body, dict):
        kind, reason = _refused(response.get("status_code"), body)
        return RequestResult(request, None, 0, kind, reason)
    try:
        vectors = match_vectors([(item.get("index"), item.get("embedding")) for item in body["data"]],
                                sizes[request], dimensions)
        usage = body.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or 0)
    except TransientError as problem:
        return RequestResult(request, None, 0, FailureKind.TRANSIENT, str(problem))
    except (KeyError, TypeError, AttributeError, ValueError) as problem:
        return RequestResult(request, None, 0, FailureKind.TRANSIENT, f"malformed reply: {scrub(str(problem))}")
    return RequestResult(request, vectors, tokens)


class BatchClient:
    """Files and batches through the official SDK client; SDK errors become ``sections.engine.errors`` kinds."""

    def __init__(self, client: Any, dimensions: int | None):
        self.client = client
        self.dimensions = dimensions

    def upload(self, content: IO[bytes], name: str) -> str:
        try:
            uploaded = self.client.files.create(file=(name, content), purpose="batch", timeout=UPLOAD_TIMEOUT_S)
        except openai.APIError as error:
            raise classify(error) from None
        return str(uploaded.id)

    def create(self, input_file_id: str, job_id: str) -> BatchState:
        try:
            return _state(self.client.batches.create(input_file_id=input_file_id, endpoint=ENDPOINT,
                                                     completion_window="24h", metadata={JOB_TAG: job_id}))
        except openai.APIError as error:
            raise classify(error) from None

    def find(self, job_id: str, input_file_id: str | None, since_epoch: float) -> BatchState | None:
        """The batch tagged with ``job_id`` (or made from ``input_file_id``), looking back from the
        newest batch to a little before ``since_epoch``."""
        try:
            for batch in self.client.batches.list(limit=100):
                if (batch.metadata or {}).get(JOB_TAG) == job_id or (input_file_id and batch.input_file_id == input_file_id):
                    return _state(batch)
                if batch.created_at < since_epoch - CLOCK_SKEW_S:
                    return None
        except openai.APIError as error:
            raise classify(error) from None
        return None

    def retrieve(self, batch_id: str) -> BatchState:
        try:
            return _state(self.client.batches.retrieve(batch_id))
        except openai.APIError as error:
            raise classify(error) from None

    def cancel(self, batch_id: str) -> BatchState:
        try:
            return _state(self.client.batches.cancel(batch_id))
        except openai.APIError as error:
            raise classify(error) from None

    def results(self, file_id: str, sizes: Mapping[int, int]) -> Iterator[RequestResult]:
        """The lines of a result file about the requests in ``sizes`` (request → inputs it holds)."""
        try:
            with self.client.files.with_streaming_response.content(file_id) as response:
                for raw in response.iter_lines():
                    if raw.strip() and (result := parse_line(raw, sizes, self.dimensions)) is not None:
                        yield result
        except openai.APIError as error:
            raise classify(error) from None
        except Exception as error:  # the HTTP library's own (a connection dropped mid-file): read it again later
            raise TransientError(f"reading result file {file_id} failed: {scrub(str(error)) or type(error).__name__}") from None
