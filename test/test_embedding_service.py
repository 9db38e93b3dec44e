"""EmbeddingService: the seed's own verification, then the engine proven over real HTTP.

The first block is the user's plan's verification snippets (import, the patched ``OpenAI``,
``MAX_BATCH_SIZE``, the dict keys, the deprecation). The rest talks to the simulator with the
official ``openai`` client and checks every vector against the simulator's deterministic one,
so a vector stored against the wrong text cannot pass.
"""
import threading
import time
import warnings
from unittest.mock import Mock, patch

import numpy as np
import pytest

from core.embedding_service import EmbeddingService
from sections.engine.dispatch import RetryPolicy
from sections.engine.errors import ProviderFatalError
from sections.reading.sample_corpus import stdlib_sections
from sections.simulator.server import SimulatorProcess, expected_embedding

FAST_RETRY = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.05)


def _reply(inputs, reverse=False):
    response = Mock()
    items = [Mock(index=i, embedding=[float(len(t)), 1.0, 0.0]) for i, t in enumerate(inputs)]
    response.data = list(reversed(items)) if reverse else items
    response.usage.prompt_tokens = 7 * len(inputs)
    return response


# -- the seed's verification ----------------------------------------------------------------------


def test_import_and_constants():
    assert hasattr(EmbeddingService, "batch_generate_embeddings")
    assert EmbeddingService.MAX_BATCH_SIZE == 2048
    assert hasattr(EmbeddingService, "batch_generate")


def test_patched_client_returns_the_documented_shape():
    with patch("core.embedding_service.OpenAI") as openai_cls:
        service = EmbeddingService(api_key="test")
        openai_cls.return_value.embeddings.create.side_effect = lambda model, input, **kw: _reply(input)
        result = service.batch_generate_embeddings(["test1", "test2", "test3"])
    assert {"embeddings", "failed_indices", "total_tokens", "indices", "errors"} <= set(result)
    assert result["failed_indices"] == [] and result["indices"] == [0, 1, 2]
    assert len(result["embeddings"]) == 3
    assert result["total_tokens"] == 21


def test_batch_generate_is_deprecated_but_works():
    assert "deprecated" in EmbeddingService.batch_generate.__doc__.lower()
    assert "batch_generate_embeddings" in EmbeddingService.batch_generate.__doc__
    with patch("core.embedding_service.OpenAI") as openai_cls:
        service = EmbeddingService(api_key="test")
        openai_cls.return_value.embeddings.create.side_effect = lambda model, input, **kw: _reply(input, reverse=True)
        with pytest.warns(DeprecationWarning):
            vectors = service.batch_generate(["a", "bbb"])
    assert vectors == [[1.0, 1.0, 0.0], [3.0, 1.0, 0.0]]  # reversed reply, still in input order


def test_generate_cache_and_token_tracking():
    with patch("core.embedding_service.OpenAI") as openai_cls:
        service = EmbeddingService(api_key="test")
        create = openai_cls.return_value.embeddings.create
        create.side_effect = lambda model, input, **kw: _reply(input)
        assert service.generate_embedding("hello") == [5.0, 1.0, 0.0]
        assert service.get_or_generate_embedding("hello") == [5.0, 1.0, 0.0]
        assert create.call_count == 1  # the second came from the cache
        service.get_or_generate_embedding("other")
        assert create.call_count == 2
        assert service.total_tokens == 14 and service.usage.requests == 2


def test_bad_input_raises_value_error():
    with patch("core.embedding_service.OpenAI"):
        service = EmbeddingService(api_key="test")
    with pytest.raises(ValueError, match="empty list"):
        service.batch_generate_embeddings([])
    with pytest.raises(ValueError, match="index 1 is empty"):
        service.batch_generate_embeddings(["ok", "   "])
    with pytest.raises(ValueError):
        service.generate_embedding("")
    with pytest.raises(ValueError):
        service.batch_generate_embeddings(["x"], max_batch_size=4096)


def test_no_key_and_no_server_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        EmbeddingService()


def test_cache_is_bounded():
    with patch("core.embedding_service.OpenAI") as openai_cls:
        service = EmbeddingService(api_key="test", cache_size=3)
        openai_cls.return_value.embeddings.create.side_effect = lambda model, input, **kw: _reply(input)
        service.batch_generate_embeddings([f"text {i}" for i in range(10)])
    assert len(service._cache) == 3


# -- over real HTTP against the simulator -----------------------------------------------------------


@pytest.fixture(scope="module")
def corpus():
    return [s["content"] for s in stdlib_sections(1000)]


def service_for(sim, **options):
    options.setdefault("retry", FAST_RETRY)
    return EmbeddingService(api_key="test-key", base_url=sim.base_url, **options)


def assert_all_correct(result, texts, dimensions=None):
    for i, vector in zip(result["indices"], result["embeddings"]):
        assert np.allclose(vector, expected_embedding(texts[i], dimensions=dimensions), atol=1e-6), f"vector {i} misplaced"


def test_a_corpus_over_300k_tokens_goes_out_within_every_limit(sim, corpus):
    service = service_for(sim)
    result = service.batch_generate_embeddings(corpus)
    stats = sim.stats()
    assert result["failed_indices"] == []
    assert sum(service.tokenizer.count(t) for t in corpus) > 300_000
    assert stats["max_tokens_per_request"] <= 300_000 and stats["max_inputs_per_request"] <= 2048
    assert stats["by_status"] == {"200": stats["requests"]}
    assert_all_correct(result, corpus)
    # Token accounting equals what the server billed.
    assert result["total_tokens"] == stats["tokens"] == service.usage.tokens


def test_max_batch_size_caps_inputs_per_request(sim, corpus):
    result = service_for(sim).batch_generate_embeddings(corpus[:100], max_batch_size=7)
    assert len(result["indices"]) == 100
    assert sim.stats()["max_inputs_per_request"] <= 7


def test_shuffled_replies_never_misplace_a_vector(sim, corpus):
    sim.configure(shuffle=True)
    result = service_for(sim).batch_generate_embeddings(corpus)
    assert len(result["indices"]) == len(corpus)
    assert_all_correct(result, corpus)


@pytest.mark.parametrize("status", [400, 500])
def test_one_poisoned_text_among_thousands_fails_alone(sim, corpus, status):
    texts = corpus + [f"{t} (variant)" for t in corpus[:1000]] + [c[::-1] for c in corpus[:1000]]
    texts[1234] = texts[1234] + " POISON-PILL"
    sim.configure(poison=["POISON-PILL"], poison_status=status)
    result = service_for(sim).batch_generate_embeddings(texts)
    assert result["failed_indices"] == [1234]
    assert str(status) in result["errors"][1234]
    assert len(result["indices"]) == len(texts) - 1
    assert_all_correct(result, texts)


def test_identical_texts_are_sent_once(sim):
    texts = ["same text"] * 50 + ["other text"] * 50
    result = service_for(sim).batch_generate_embeddings(texts)
    assert len(result["indices"]) == 100 and sim.stats()["inputs"] == 2
    assert_all_correct(result, texts)


def test_dimensions_and_float_format(sim, corpus):
    result = service_for(sim, dimensions=256, encoding_format="float").batch_generate_embeddings(corpus[:50])
    assert all(len(v) == 256 for v in result["embeddings"])
    assert_all_correct(result, corpus[:50], dimensions=256)


def test_429_storm_everything_succeeds_and_waits_are_honoured(sim, corpus):
    sim.configure(rate_limit_storm=0.5, storm_retry_ms=200)
    service = service_for(sim, concurrency=8)
    texts = corpus[:400]
    started = time.monotonic()
    result = service.batch_generate_embeddings(texts)
    elapsed = time.monotonic() - started
    stats = sim.stats()
    assert result["failed_indices"] == [] and service.usage.rate_limited == stats["rate_limited"] > 0
    assert_all_correct(result, texts)
    # Every 429 paused all dispatch for 200 ms: the 429s cannot outnumber the pauses by more than
    # the requests that were in flight together.
    assert stats["rate_limited"] <= (elapsed / 0.2 + 1) * 8
    assert service.usage.retries == 0  # a 429 is a wait, never counted against the inputs


def test_429_without_headers_backs_off_and_succeeds(sim, corpus):
    sim.configure(rate_limit_storm=0.3, rate_headers=False)
    result = service_for(sim, concurrency=8).batch_generate_embeddings(corpus[:200])
    assert result["failed_indices"] == []


def test_quota_exhausted_stops_the_run_keeps_what_succeeded(sim, corpus):
    sim.configure(quota_tokens=60_000)
    service = service_for(sim, concurrency=4)
    result = service.batch_generate_embeddings(corpus, max_batch_size=50)  # ~17,500 tokens a request
    stats = sim.stats()
    assert 0 < len(result["indices"]) < len(corpus)
    assert_all_correct(result, corpus)
    assert all("quota" in result["errors"][i] for i in result["failed_indices"])
    # Stopped at once: only requests already in flight could still meet the refusal; no retries.
    assert stats["quota_exceeded"] <= 4 and service.usage.retries == 0
    assert stats["tokens"] <= 60_000


def test_bad_key_is_fatal_and_never_shown(sim):
    sim.configure(api_key="sk-right-key-123456")
    service = EmbeddingService(api_key="sk-wrong-key-987654", base_url=sim.base_url, retry=FAST_RETRY)
    with pytest.raises(RuntimeError) as caught:
        service.batch_generate_embeddings(["hello"])
    message = str(caught.value) + str(caught.value.__cause__)
    assert "401" in message and "987654" not in message and "123456" not in message
    with pytest.raises(ProviderFatalError):
        list(service.stream_embeddings([(0, "hello")]))
    assert sim.stats()["by_status"] == {"401": 2}


def test_server_errors_and_dropped_connections_are_retried(sim, corpus):
    sim.configure(error_rate=0.2, drop_rate=0.1)
    service = service_for(sim)
    result = service.batch_generate_embeddings(corpus[:500])
    assert result["failed_indices"] == []
    assert_all_correct(result, corpus[:500])
    assert service.usage.retries + service.usage.splits > 0


def test_hung_replies_time_out_and_are_retried(sim, corpus):
    sim.configure(slow_rate=0.2, slow_seconds=5)
    service = service_for(sim, timeout=0.5)
    started = time.monotonic()
    result = service.batch_generate_embeddings(corpus[:200])
    assert result["failed_indices"] == [] and time.monotonic() - started < 4.5


def _pieces_mean(text, limit, tokenizer):
    pieces = tokenizer.split(text, limit)
    total = sum(w * expected_embedding(p).astype(np.float64) for p, w in pieces)
    return total / np.linalg.norm(total)


def test_long_inputs_under_each_policy(sim, corpus):
    long_text = " ".join(corpus[:60])  # ~21,000 tokens, over 8,191
    texts = ["short one", long_text]
    averaged = service_for(sim).batch_generate_embeddings(texts)
    tokenizer = service_for(sim).tokenizer
    assert averaged["failed_indices"] == []
    assert np.allclose(averaged["embeddings"][1], _pieces_mean(long_text, 8191, tokenizer), atol=1e-5)
    assert sim.stats()["max_tokens_per_input"] <= 8191

    truncated = service_for(sim, long_input="truncate").batch_generate_embeddings(texts)
    first_piece = tokenizer.split(long_text, 8191)[0][0]
    assert np.allclose(truncated["embeddings"][1], expected_embedding(first_piece), atol=1e-6)

    failed = service_for(sim, long_input="fail").batch_generate_embeddings(texts)
    assert failed["failed_indices"] == [1] and "over the 8191-token limit" in failed["errors"][1]


def test_everything_failing_raises_runtime_error(sim):
    sim.configure(poison=["x"])
    with pytest.raises(RuntimeError, match="Failed to generate any embeddings"):
        service_for(sim).batch_generate_embeddings(["x1", "x2"])
    with pytest.raises(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        service_for(sim).batch_generate(["ok", "x"])


def test_stream_yields_every_key_once_as_requests_complete(sim, corpus):
    service = service_for(sim, concurrency=4)
    items = ((f"id-{i}", text) for i, text in enumerate(corpus))
    seen = {}
    for outcome in service.stream_embeddings(items, window_texts=128):
        assert outcome.key not in seen
        seen[outcome.key] = outcome
    assert len(seen) == len(corpus)
    for i, text in enumerate(corpus[:50]):
        assert np.allclose(seen[f"id-{i}"].vector, expected_embedding(text), atol=1e-6)
        assert seen[f"id-{i}"].tokens == service.tokenizer.count(text)


def test_rate_limits_learned_from_headers_keep_429s_rare(corpus):
    # 1.2M TPM (20k tokens/s) with a 100k bucket: 300 sections (~105k tokens) in 1,000-token
    # requests need ~0.25 s of refill beyond the burst. The limiter knows nothing until the first
    # reply's headers, then runs at the limit: few 429s, none failed.
    with SimulatorProcess(tpm=1_200_000, tpm_burst=100_000) as sim:
        service = service_for(sim, concurrency=8)
        result = service.batch_generate_embeddings(corpus[:300], max_batch_size=3)
        stats = sim.stats()
    assert result["failed_indices"] == []
    assert service.limiter.tokens_per_minute == 1_200_000
    assert stats["rate_limited"] <= stats["requests"] // 10


def test_a_request_bigger_than_the_token_bucket_is_split_not_waited_on(corpus):
    with SimulatorProcess(tpm=600_000, tpm_burst=1_500) as sim:  # requests start at ~4k tokens
        service = service_for(sim)
        started = time.monotonic()
        result = service.batch_generate_embeddings(corpus[:40])
        assert time.monotonic() - started < 20
    assert result["failed_indices"] == [] and service.usage.splits > 0
    assert_all_correct(result, corpus[:40])


def test_concurrent_callers_share_one_service(sim, corpus):
    service = service_for(sim)
    results = {}

    def run(part):
        results[part] = service.batch_generate_embeddings(corpus[part * 100:(part + 1) * 100])

    threads = [threading.Thread(target=run, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for part, result in results.items():
        assert_all_correct(result, corpus[part * 100:(part + 1) * 100])


@pytest.mark.parametrize("model", ["all-MiniLM-L6-v3", "text-embeding-3-small", "gpt-4o"])
def test_an_unknown_model_is_refused_before_any_request_with_what_is_accepted(model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with patch("core.embedding_service.OpenAI") as client:
        with pytest.raises(ValueError, match=f"unknown model '{model}'") as refused:
            EmbeddingService(model=model)
        client.assert_not_called()
    assert "text-embedding-3-small" in str(refused.value) and "all-MiniLM-L6-v2" in str(refused.value)
    assert "--base-url" in str(refused.value)


def test_any_model_name_goes_to_an_explicit_openai_provider_or_server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    with patch("core.embedding_service.OpenAI"):
        assert EmbeddingService(model="my-azure-deployment", provider="openai").model == "my-azure-deployment"
        assert EmbeddingService(model="nomic-embed-text", base_url="http://localhost:1/v1").model == "nomic-embed-text"
