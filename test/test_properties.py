"""Properties (hypothesis) of the parts that must never put a vector on the wrong input.

- The dispatcher, driven with an in-test provider that returns a known vector per text and an
  in-test tokenizer (one token per word), under random limits, windows, concurrency, duplicates,
  long inputs, poisoned texts, transient failures and a fatal stop: every request within every
  limit, every item answered exactly once, every vector its own text's, long inputs under
  ``average`` the token-weighted mean of their pieces, renormalised. (``core.batching.pack`` on its
  own is covered in test_batching.py; here it is exercised through the dispatcher that feeds it.)
- The result matcher (``OpenAIProvider._match`` / ``embed``): any order maps each vector to its
  index; any subset, duplicate, out-of-range or malformed reply is a ``TransientError``, never a
  shifted or partial result.
- Secrets: ``scrub`` hides key-shaped tokens, ``mask_url`` hides the password libpq would use.
"""
from __future__ import annotations

import base64
import hashlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace as NS

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from psycopg.conninfo import conninfo_to_dict

from core.batching import Limits
from core.dispatch import Dispatcher, RetryPolicy
from core.redact import mask_url, scrub
from core.errors import ProviderFatalError, RequestRejected, TransientError
from core.providers.base import Reply
from core.providers.openai import OpenAIProvider
from core.ratelimit import RateLimiter
from core.usage import Usage

DIM = 8
NO_WAIT = RetryPolicy(max_attempts=3, split_after=1, backoff_base_s=0.0, backoff_max_s=0.0)
POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="prop")


def vector_of(text: str) -> np.ndarray:
    """The in-test provider's vector for a text: deterministic, unit length, distinct per text."""
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


class WordTokenizer:
    """One token per whitespace-separated word; pieces are runs of words joined by one space."""

    def count(self, text: str) -> int:
        return len(text.split())

    def bound(self, text: str) -> int:
        return len(text)  # loose on purpose: short texts take the dispatcher's count-later path

    def split(self, text: str, max_tokens: int) -> list[tuple[str, int]]:
        words = text.split()
        return [(" ".join(words[i:i + max_tokens]), len(words[i:i + max_tokens]))
                for i in range(0, len(words), max_tokens)]


def pieces_of(text: str, max_tokens: int) -> list[tuple[str, int]]:
    """The test's own account of how a long text is cut (independent of core.tokens)."""
    words = text.split()
    return [(" ".join(words[i:i + max_tokens]), min(max_tokens, len(words) - i))
            for i in range(0, len(words), max_tokens)]


class FakeProvider:
    """Returns ``vector_of(text)`` per input, in input order; can reject poisoned texts, fail at random
    (TransientError), or refuse the run (ProviderFatalError) from its ``fatal_after``-th call on."""

    def __init__(self, limits: Limits, tokenizer, *, poison=frozenset(), transient_rate=0.0, rnd=None,
                 fatal_after=None):
        self.limits, self.tokenizer = limits, tokenizer
        self.poison, self.transient_rate, self.rnd, self.fatal_after = poison, transient_rate, rnd, fatal_after
        self.lock = threading.Lock()
        self.calls = 0
        self.sent: list[list[str]] = []  # every request that was answered

    def embed(self, texts, on_headers=None):
        with self.lock:
            self.calls += 1
            calls = self.calls
            unlucky = self.rnd is not None and self.rnd.random() < self.transient_rate
        assert texts and len(texts) <= self.limits.max_inputs, len(texts)
        counts = [self.tokenizer.count(t) for t in texts]
        assert all(0 < c <= self.limits.max_input_tokens for c in counts), counts
        assert sum(counts) <= self.limits.max_request_tokens, (sum(counts), self.limits)
        if self.fatal_after is not None and calls >= self.fatal_after:
            raise ProviderFatalError("quota exhausted (429 insufficient_quota): test")
        if any(p in t for p in self.poison for t in texts):
            raise RequestRejected("rejected (400): poisoned input")
        if unlucky:
            raise TransientError("server error (500): unlucky")
        with self.lock:
            self.sent.append(list(texts))
        return Reply([vector_of(t) for t in texts], sum(counts))


def dispatcher(provider, limits, *, long_input="average", concurrency=4, window_texts=4096, retry=NO_WAIT):
    return Dispatcher(provider, WordTokenizer(), limits, long_input=long_input, concurrency=concurrency,
                      limiter=RateLimiter(), retry=retry, usage=Usage("prop-model"), pool=POOL,
                      window_texts=window_texts)


WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]


@st.composite
def corpora(draw):
    """Limits, and items (key, text): short and long texts, repeats, a few blanks."""
    max_input = draw(st.integers(2, 12))
    max_request = draw(st.integers(max_input, 60))
    limits = Limits(max_inputs=draw(st.integers(1, 8)), max_request_tokens=max_request, max_input_tokens=max_input)
    pool = draw(st.lists(
        st.one_of(
            st.lists(st.sampled_from(WORDS), min_size=1, max_size=4 * max_input).map(" ".join),
            st.sampled_from(["", "   ", "\n"]),
        ), min_size=1, max_size=12))
    texts = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=40))  # repeats are likely
    return limits, list(enumerate(texts))


def expected_outcome(text: str, limits: Limits, policy: str):
    """(vector or None, tokens, error substring or None) as the spec says, computed here."""
    if not text.strip():
        return None, 0, "empty text"
    pieces = pieces_of(text, limits.max_input_tokens)
    total = sum(n for _, n in pieces)
    if total <= limits.max_input_tokens:
        return vector_of(text), total, None
    if policy == "fail":
        return None, total, "over the"
    if policy == "truncate":
        return vector_of(pieces[0][0]), pieces[0][1], None
    mean = sum(n * vector_of(p).astype(np.float64) for p, n in pieces)
    return mean / np.linalg.norm(mean), total, None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corpora(), policy=st.sampled_from(["average", "truncate", "fail"]), concurrency=st.integers(1, 6),
       window=st.integers(1, 50), max_inputs=st.none() | st.integers(1, 5))
def test_dispatcher_keeps_every_limit_answers_every_item_once_with_its_own_vector(case, policy, concurrency, window,
                                                                                   max_inputs):
    limits, items = case
    effective = limits if max_inputs is None else Limits(min(max_inputs, limits.max_inputs), limits.max_request_tokens,
                                                         limits.max_input_tokens)
    provider = FakeProvider(effective, WordTokenizer())  # asserts every request is within every limit
    outcomes = list(dispatcher(provider, limits, long_input=policy, concurrency=concurrency,
                               window_texts=window).run(items, max_inputs=max_inputs))

    assert sorted(o.key for o in outcomes) == [key for key, _ in items]  # each item exactly once
    for outcome in outcomes:
        vector, tokens, error = expected_outcome(items[outcome.key][1], limits, policy)
        if error is None:
            assert outcome.error is None and outcome.tokens == tokens
            assert np.allclose(outcome.vector, vector, atol=1e-5), (items[outcome.key][1], policy)
            assert math.isclose(float(np.linalg.norm(outcome.vector)), 1.0, rel_tol=1e-5)
        else:
            assert outcome.vector is None and error in outcome.error
    sent = [t for request in provider.sent for t in request]
    if window >= len(items):  # one window: each distinct text (or piece) is sent once
        assert len(sent) == len(set(sent))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corpora(), poison_word=st.sampled_from(WORDS), transient_rate=st.just(0.0) | st.floats(0.0, 0.6),
       rnd=st.randoms(use_true_random=False), concurrency=st.integers(1, 6))
def test_failures_are_isolated_and_never_shift_a_vector(case, poison_word, transient_rate, rnd, concurrency):
    limits, items = case
    poison = frozenset({f"{poison_word} {poison_word}"})
    provider = FakeProvider(limits, WordTokenizer(), poison=poison, transient_rate=transient_rate, rnd=rnd)
    outcomes = list(dispatcher(provider, limits, concurrency=concurrency).run(items))

    assert sorted(o.key for o in outcomes) == [key for key, _ in items]
    for outcome in outcomes:
        text = items[outcome.key][1]
        vector, _, error = expected_outcome(text, limits, "average")
        pieces = [p for p, _ in pieces_of(text, limits.max_input_tokens)]
        poisoned = any(p in piece for p in poison for piece in pieces)
        if outcome.vector is not None:  # a success is always the right vector
            assert not poisoned and error is None
            assert np.allclose(outcome.vector, vector, atol=1e-5)
        elif poisoned:  # a failure names its own reason, never a neighbour's
            assert "poisoned" in outcome.error or "unlucky" in outcome.error
        elif error is None:
            assert "unlucky" in outcome.error, (text, outcome.error)
    if transient_rate == 0.0:  # without bad luck only the poisoned (and blank) items fail
        for outcome in outcomes:
            text = items[outcome.key][1]
            pieces = [p for p, _ in pieces_of(text, limits.max_input_tokens)]
            if text.strip() and not any(p in piece for p in poison for piece in pieces):
                assert outcome.vector is not None, text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corpora(), fatal_after=st.integers(1, 6), concurrency=st.integers(1, 4))
def test_a_fatal_stop_yields_only_right_answers_and_raises(case, fatal_after, concurrency):
    limits, items = case
    provider = FakeProvider(limits, WordTokenizer(), fatal_after=fatal_after)
    outcomes = []
    try:
        for outcome in dispatcher(provider, limits, concurrency=concurrency).run(items):
            outcomes.append(outcome)
    except ProviderFatalError:
        pass
    keys = [o.key for o in outcomes]
    assert len(keys) == len(set(keys))  # nothing answered twice; unanswered items get no outcome
    for outcome in outcomes:
        vector, _, error = expected_outcome(items[outcome.key][1], limits, "average")
        if outcome.vector is not None:
            assert np.allclose(outcome.vector, vector, atol=1e-5)
        else:
            assert error is not None and error in outcome.error  # only blanks fail here


def test_average_weights_each_piece_by_its_tokens():
    """One-hot piece vectors make the weights visible: the result is (tokens per piece) / norm."""
    basis: dict[str, int] = {}

    class OneHot(FakeProvider):
        def embed(self, texts, on_headers=None):
            vectors = []
            for text in texts:
                v = np.zeros(DIM, dtype=np.float32)
                v[basis.setdefault(text, len(basis))] = 1.0
                vectors.append(v)
            return Reply(vectors, None)

    limits = Limits(max_inputs=8, max_request_tokens=40, max_input_tokens=4)
    text = " ".join(WORDS[:9])  # pieces of 4, 4 and 1 words
    [outcome] = dispatcher(OneHot(limits, WordTokenizer()), limits).run([("k", text)])
    weights = np.array([4, 4, 1], dtype=np.float64) / math.sqrt(4 * 4 + 4 * 4 + 1)
    got = np.array([outcome.vector[basis[p]] for p, _ in pieces_of(text, 4)])
    assert np.allclose(got, weights, atol=1e-6) and outcome.tokens == 9


# -- the result matcher ---------------------------------------------------------------------------


def provider(dimensions=None) -> OpenAIProvider:
    return OpenAIProvider(client=None, model="m", dimensions=dimensions, tap=None)


def reply(items, encoding="float"):
    def encode(v):
        if encoding == "base64":
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        return list(map(float, v))
    return NS(data=[NS(index=i, embedding=encode(v)) for i, v in items], usage=NS(prompt_tokens=1))


def distinct_vectors(n: int) -> list[np.ndarray]:
    return [vector_of(f"input {i}") for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(order=st.integers(1, 40).flatmap(lambda n: st.permutations(list(range(n)))),
       encoding=st.sampled_from(["float", "base64"]))
def test_match_maps_every_vector_to_its_index_in_any_order(order, encoding):
    vectors = distinct_vectors(len(order))
    got = provider(DIM)._match(reply([(i, vectors[i]) for i in order], encoding), len(order))
    assert len(got) == len(order)
    for i, v in enumerate(got):
        assert np.array_equal(v, vectors[i])


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_match_refuses_any_subset_duplicate_or_out_of_range_reply(n, data):
    indices = data.draw(st.one_of(
        st.permutations(list(range(n))),  # valid replies, in any order
        st.lists(st.one_of(st.integers(-3, n + 3), st.sampled_from([None, 1.0, "0", "1"])), max_size=n + 3),
    ))
    vectors = distinct_vectors(len(indices))
    response = NS(data=[NS(index=index, embedding=list(map(float, vectors[k]))) for k, index in enumerate(indices)],
                  usage=NS(prompt_tokens=1))
    valid = all(type(i) is int for i in indices) and sorted(indices) == list(range(n))
    if valid:
        got = provider()._match(response, n)
        for k, index in enumerate(indices):
            assert np.array_equal(got[index], vectors[k])
    else:
        with pytest.raises(TransientError):
            provider()._match(response, n)


class FakeClient:
    def __init__(self, response):
        self.embeddings = NS(create=lambda **kw: response)


garbage_embeddings = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=DIM + 2),
    st.text(max_size=12),  # base64 or not
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from([[], [float("nan")] * DIM, "!!!", "AAA"]),
)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 5), data=st.data(), dimensions=st.none() | st.just(DIM))
def test_embed_turns_a_malformed_reply_into_a_transient_error_never_a_wrong_vector(n, data, dimensions):
    vectors = distinct_vectors(n)
    items = [NS(index=i, embedding=list(map(float, vectors[i]))) for i in range(n)]
    bad = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    for position in bad:
        items[position].embedding = data.draw(garbage_embeddings)
    response = NS(data=items, usage=NS(prompt_tokens=3))
    p = OpenAIProvider(FakeClient(response), "m", dimensions, tap=None)
    try:
        result = p.embed(["t"] * n)
    except TransientError:
        return
    # accepted: then every vector is a finite 1-D vector of one size, each its own index's
    assert len(result.vectors) == n and len({v.shape for v in result.vectors}) == 1
    for i, v in enumerate(result.vectors):
        assert v.ndim == 1 and np.isfinite(v).all()
        if i not in bad:
            assert np.array_equal(v, vectors[i])


@pytest.mark.parametrize("embedding", [None, 0.5, [[1.0, 2.0], [3.0, 4.0]], []],
                         ids=["null", "number", "nested", "empty"])
def test_embed_refuses_null_scalar_nested_and_empty_embeddings_as_transient(embedding):
    response = NS(data=[NS(index=0, embedding=embedding), NS(index=1, embedding=embedding)],
                  usage=NS(prompt_tokens=3))
    with pytest.raises(TransientError):
        OpenAIProvider(FakeClient(response), "m", None, tap=None).embed(["a", "b"])


# -- secrets ----------------------------------------------------------------------------------------

KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(["sk-", "sk-proj-", "Bearer ", "Bearer  sk-"]),
       body=st.text(KEY_CHARS, min_size=16, max_size=60), before=st.text(max_size=20), after=st.text(max_size=20))
def test_scrub_hides_any_key_shaped_token(prefix, body, before, after):
    assume(body not in before and body not in after)
    shown = scrub(f"{before} {prefix}{body} {after}")
    assert body not in shown


PASSWORD_CHARS = st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="?")


@settings(max_examples=300, deadline=None)
@given(password=st.text(PASSWORD_CHARS, min_size=1, max_size=24), user=st.text(KEY_CHARS, min_size=1, max_size=8),
       query=st.sampled_from(["", "?sslmode=require", "?application_name=x&connect_timeout=3"]))
def test_mask_url_masks_the_whole_password_whatever_it_holds(password, user, query):
    url = f"postgresql://{user}:{password}@db.example.com:6543/postgres{query}"
    assert mask_url(url) == f"postgresql://{user}:***@db.example.com:6543/postgres{query}"


@pytest.mark.parametrize("url, password", [
    ("postgresql://user:pa?ss@db.example.com/postgres", "pa?ss"),
    ("postgresql://user:Xy?z9=1&s3cret@db.example.com:6543/postgres?sslmode=require", "Xy?z9=1&s3cret"),
])
def test_mask_url_hides_a_password_with_a_question_mark(url, password):
    assert conninfo_to_dict(url)["password"] == password  # what libpq would send
    assert password not in mask_url(url)
