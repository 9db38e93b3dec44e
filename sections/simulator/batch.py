"""The OpenAI Batch API for embeddings, as the simulator serves it: files, batches and their life.

A batch fails differently from a request: the whole file is refused at validation (``errors.data``
with line numbers), single requests fail in the error file, results come back in any order to be
joined on ``custom_id``, and a batch may expire or be cancelled with part of its work delivered.
Each request is answered by the host (sections/simulator/server.py) exactly as ``/v1/embeddings`` answers
its body, so a vector from a batch is the vector of its own text. Validation codes:
``empty_file``, ``file_too_large``, ``too_many_tasks`` (requests), ``too_many_inputs`` (embedding
inputs summed over the file), ``invalid_json_line``, ``missing_required_parameter``,
``invalid_request`` (method), ``url_mismatch``, ``model_mismatch``, ``duplicate_custom_id``.
Requests a batch never ran (expired, cancelled) are in the error file with ``batch_expired`` or
``batch_cancelled`` and count as failed, so the two files together always hold every request.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiohttp import web

ENDPOINT = "/v1/embeddings"
_MAX_REPORTED_ERRORS = 100
_UNFINISHED = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


class ApiError(Exception):
    """An OpenAI-style error reply; raised anywhere in request handling, rendered once.

    It lives in this module, the lower of the simulator's two, so both endpoints' handlers share it.
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


@dataclass
class BatchConfig:
    """The Batch API's settings. ``SimulatorConfig`` extends this class, so they are command-line
    flags and live config like the rest; the limits default to OpenAI's."""

    batch_delay: float = 0.0  # seconds from in_progress to finalizing, spread evenly over the requests
    batch_expire_after: int | None = None  # a batch expires once this many of its requests have run
    batch_max_requests: int = 50_000
    batch_max_inputs: int = 50_000  # embedding inputs summed over all requests of a file
    batch_max_bytes: int = 200 * 1024 * 1024


class BatchAnswer(NamedTuple):
    """One request of a batch answered as ``/v1/embeddings`` answers it."""

    status: int
    body: bytes  # the JSON reply body: embeddings and usage, or an OpenAI error
    inputs: int  # inputs embedded (0 when refused)
    tokens: int


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


class _Task(NamedTuple):
    """One valid line of an input file."""

    custom_id: str
    body: bytes  # what the endpoint is sent
    model: str
    inputs: int  # embeddings asked for: a string or one list of token ids is one


class _Checked(NamedTuple):
    tasks: list[_Task]
    model: str | None
    errors: list[dict[str, Any]]


def _problem(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_line(raw: bytes, number: int) -> _Task | dict[str, Any]:
    """A line's request, or the problem that fails the batch because of it."""
    try:
        request = json.loads(raw)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        return _problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
    custom_id, body = request.get("custom_id"), request.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        return _problem("missing_required_parameter", "custom_id must be a non-empty string.", number, "custom_id")
    if request.get("method") != "POST":
        return _problem("invalid_request", f"The method must be POST, not {request.get('method')!r}.", number, "method")
    if request.get("url") != ENDPOINT:
        return _problem("url_mismatch", f"The URL {request.get('url')!r} of this request does not match the "
                                        f"batch's endpoint {ENDPOINT!r}.", number, "url")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        return _problem("missing_required_parameter", "Each request needs a body with a model.", number, "body.model")
    value = body.get("input")
    inputs = len(value) if isinstance(value, list) and not all(type(item) is int for item in value) else 1
    return _Task(custom_id, json.dumps(body).encode(), body["model"], inputs)


def _validate(content: bytes, cfg: BatchConfig) -> _Checked:
    """Check a whole input file before anything runs, as the Batch API's ``validating`` step does:
    one problem anywhere fails the batch, and the first problems are reported with their lines."""
    lines = content.splitlines()
    size, count = len(content), len(lines)
    for broken, code, message in (
        (size > cfg.batch_max_bytes, "file_too_large", f"{size} bytes, over {cfg.batch_max_bytes}"),
        (not lines, "empty_file", "empty"),
        (count > cfg.batch_max_requests, "too_many_tasks", f"{count} requests, over {cfg.batch_max_requests}"),
    ):
        if broken:
            return _Checked([], None, [_problem(code, f"The batch input file is {message}.")])
    tasks: list[_Task] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    first_line = 0  # the line that set the file's model
    for number, raw in enumerate(lines, 1):
        task = _check_line(raw, number)
        if isinstance(task, dict):
            errors.append(task)
            continue
        first_line = first_line or number
        if tasks and task.model != tasks[0].model:
            errors.append(_problem("model_mismatch", f"The model {task.model!r} is not {tasks[0].model!r} of line "
                                                     f"{first_line}: one model per batch.", number, "body.model"))
        if task.custom_id in seen:
            errors.append(_problem("duplicate_custom_id", f"The custom_id {task.custom_id!r} is used by an earlier "
                                                          "request; each must be unique.", number, "custom_id"))
        seen.add(task.custom_id)
        tasks.append(task)
    inputs = sum(task.inputs for task in tasks)
    if inputs > cfg.batch_max_inputs:
        errors.append(_problem("too_many_inputs", f"The batch asks for {inputs} embedding inputs across its requests, "
                                                  f"more than the {cfg.batch_max_inputs} allowed."))
    return _Checked(tasks, tasks[0].model if tasks else None, errors[:_MAX_REPORTED_ERRORS])


@dataclass
class _Batch:
    id: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "validating"
    stamps: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    counts: Counter[str] = field(default_factory=Counter)  # total, completed, failed
    tokens: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # set by a cancel
    worker: asyncio.Task[None] | None = None

    def move(self, status: str) -> None:
        self.status = status
        self.stamps[f"{status}_at"] = int(time.time())

    def as_json(self) -> dict[str, Any]:
        stamp_names = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
        return {
            "id": self.id, "object": "batch", "endpoint": ENDPOINT, "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id, "completion_window": "24h", "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "expires_at": self.created_at + 24 * 3600,
            **{f"{name}_at": self.stamps.get(f"{name}_at") for name in stamp_names},
            "request_counts": {key: self.counts[key] for key in ("total", "completed", "failed")},
            "metadata": self.metadata,
            "usage": {"input_tokens": self.tokens, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": self.tokens},
        }


def _result_line(request_id: str, task: _Task, answer: BatchAnswer) -> bytes:
    """An output or error file line; the reply body is spliced in as the bytes the endpoint made."""
    head = json.dumps({"id": f"batch_req_{request_id}", "custom_id": task.custom_id})[:-1].encode()
    return b'%s,"response":{"status_code":%d,"request_id":"req_%s","body":%s},"error":null}' % (
        head, answer.status, request_id.encode(), answer.body)


def _unfinished_line(request_id: str, task: _Task, ending: str) -> bytes:
    code, message = _UNFINISHED[ending]
    return json.dumps({"id": f"batch_req_{request_id}", "custom_id": task.custom_id, "response": None,
                       "error": {"code": code, "message": message}}).encode()


Handler = Callable[[web.Request], Awaitable[web.Response]]


class BatchApi:
    """The files and batches endpoints and the workers that run the batches; all state lives on
    the event loop, like the rest of the simulator's."""

    def __init__(self, config: Callable[[], BatchConfig], authorize: Callable[[web.Request], None],
                 answer: Callable[[bytes], BatchAnswer]):
        self._config, self._authorize, self._answer = config, authorize, answer
        self._ids: Counter[str] = Counter()  # never reset, so an old id never names a new object
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.served: Counter[str] = Counter()

    def reset(self) -> None:
        """Forget every file and batch (stopping their workers) and zero the counts."""
        for batch in self.batches.values():
            if batch.worker is not None:
                batch.worker.cancel()
        self.files, self.batches, self.served = {}, {}, Counter()

    def stats(self) -> dict[str, int]:
        """Batch work for ``/stats``, apart from the synchronous endpoint's counts."""
        return {key: self.served[key] for key in ("batches", "batch_requests", "batch_inputs", "batch_tokens")}

    def add_routes(self, app: web.Application) -> None:
        routes: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/files", self.upload), ("GET", "/v1/files/{id}", self.get_file),
            ("GET", "/v1/files/{id}/content", self.file_content), ("DELETE", "/v1/files/{id}", self.delete_file),
            ("POST", "/v1/batches", self.create), ("GET", "/v1/batches", self.list_batches),
            ("GET", "/v1/batches/{id}", self.retrieve), ("POST", "/v1/batches/{id}/cancel", self.cancel),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._guarded(handler))

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.Response:
            try:
                self._authorize(request)
                return await handler(request)
            except ApiError as error:
                return error.response()
        return guarded

    def _new_id(self, kind: str) -> str:
        self._ids[kind] += 1
        return f"{kind}sim{self._ids[kind]}"

    def _store(self, filename: str, content: bytes, purpose: str = "batch_output") -> _File:
        stored = _File(self._new_id("file-"), filename, purpose, content)
        self.files[stored.id] = stored
        return stored

    def _file(self, request: web.Request) -> _File:
        if request.match_info["id"] not in self.files:
            raise ApiError(404, f"No such File object: {request.match_info['id']}", param="id")
        return self.files[request.match_info["id"]]

    def _batch(self, request: web.Request) -> _Batch:
        if request.match_info["id"] not in self.batches:
            raise ApiError(404, f"No such Batch object: {request.match_info['id']}", param="id")
        return self.batches[request.match_info["id"]]

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            raise ApiError(400, "'file' is a required property", param="file")
        if purpose != "batch":
            raise ApiError(400, f"Invalid value for purpose: {purpose!r}; only 'batch' is served.", param="purpose")
        if not upload.filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        return web.json_response(self._store(upload.filename, upload.file.read(), purpose).as_json())

    async def get_file(self, request: web.Request) -> web.Response:
        return web.json_response(self._file(request).as_json())

    async def file_content(self, request: web.Request) -> web.Response:
        return web.Response(body=self._file(request).content, content_type="application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        deleted = self._file(request)
        del self.files[deleted.id]
        return web.json_response({"id": deleted.id, "object": "file", "deleted": True})

    async def create(self, request: web.Request) -> web.Response:
        try:
            params = await request.json()
        except ValueError:
            params = None
        if not isinstance(params, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        if params.get("endpoint") != ENDPOINT:
            raise ApiError(400, f"Invalid value for endpoint: {params.get('endpoint')!r}; the simulator runs "
                                f"batches for {ENDPOINT!r} only.", param="endpoint")
        if params.get("completion_window") != "24h":
            raise ApiError(400, "Invalid completion_window: only '24h' is supported.", param="completion_window")
        source = self.files.get(str(params.get("input_file_id")))
        if source is None or source.purpose != "batch":
            raise ApiError(400, f"Invalid input_file_id {params.get('input_file_id')!r}: no uploaded file with "
                                "purpose 'batch' has that id.", param="input_file_id")
        batch = _Batch(self._new_id("batch_"), source.id, params.get("metadata"))
        self.batches[batch.id] = batch
        self.served["batches"] += 1
        batch.worker = asyncio.create_task(self._run(batch, source.content))
        return web.json_response(batch.as_json())

    async def retrieve(self, request: web.Request) -> web.Response:
        return web.json_response(self._batch(request).as_json())

    async def list_batches(self, request: web.Request) -> web.Response:
        """Newest first, ``limit`` at a time, continuing ``after`` a batch id: OpenAI's cursor pages."""
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise ApiError(400, "Invalid value for limit: it must be an integer from 1 to 100.", param="limit")
        ordered = list(reversed(self.batches.values()))
        start = 0
        if "after" in request.query:
            start = 1 + next((i for i, b in enumerate(ordered) if b.id == request.query["after"]), -1)
            if start == 0:
                raise ApiError(400, f"Invalid value for after: no batch {request.query['after']!r}.", param="after")
        page = ordered[start:start + limit]
        return web.json_response({"object": "list", "data": [batch.as_json() for batch in page],
                                  "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                                  "has_more": start + limit < len(ordered)})

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if batch.status not in ("validating", "in_progress", "cancelling"):
            raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
        if not batch.stop.is_set():
            batch.move("cancelling")
            batch.stop.set()
        return web.json_response(batch.as_json())

    async def _run(self, batch: _Batch, content: bytes) -> None:
        """A batch's life: validating, then in_progress with its requests spread over the delay,
        then finalizing and completed, or expired or cancelled part way with what was done."""
        loop = asyncio.get_running_loop()
        checked = await loop.run_in_executor(None, _validate, content, self._config())
        if checked.errors and not batch.stop.is_set():
            batch.errors = checked.errors
            batch.move("failed")
            return
        batch.model, batch.counts["total"] = checked.model, len(checked.tasks)
        tasks = list(checked.tasks)
        random.Random(batch.id).shuffle(tasks)  # the run order, so the output's order too: any order
        ending = "cancelled" if batch.stop.is_set() else "completed"
        if ending == "completed":
            batch.move("in_progress")
        name = batch.id.removeprefix("batch_")
        output: list[bytes] = []
        errors: list[bytes] = []
        start, done = loop.time(), 0
        for done, task in enumerate(tasks):
            cfg = self._config()
            expired = cfg.batch_expire_after is not None and done >= cfg.batch_expire_after
            remaining = start + cfg.batch_delay * (done + 1) / len(tasks) - loop.time()
            if remaining > 0 and not expired:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(batch.stop.wait(), remaining)
            if batch.stop.is_set() or expired:
                ending = "cancelled" if batch.stop.is_set() else "expired"
                break
            answer = await loop.run_in_executor(None, self._answer, task.body)
            (output if answer.status == 200 else errors).append(_result_line(f"{name}_{done}", task, answer))
            batch.counts["completed" if answer.status == 200 else "failed"] += 1
            batch.tokens += answer.tokens
            self.served.update(batch_requests=1, batch_inputs=answer.inputs, batch_tokens=answer.tokens)
        else:
            done = len(tasks)
        errors += [_unfinished_line(f"{name}_{n}", task, ending) for n, task in enumerate(tasks[done:], done)]
        batch.counts["failed"] += len(tasks) - done
        if ending == "completed":
            batch.move("finalizing")
        if output:
            batch.output_file_id = self._store(f"batch_{name}_output.jsonl", b"\n".join(output) + b"\n").id
        if errors:
            batch.error_file_id = self._store(f"batch_{name}_error.jsonl", b"\n".join(errors) + b"\n").id
        batch.move(ending)
