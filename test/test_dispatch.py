"""The dispatcher (``sections.engine.dispatch``) and the planning it feeds on (``sections.engine.assemble``).

- Properties (hypothesis): the dispatcher, driven with an in-test provider that returns a known
  vector per text and an in-test tokenizer (one token per word), under random limits, windows,
  concurrency, duplicates, long inputs, poisoned texts, transient failures and a fatal stop: every
  request within every limit, every item answered exactly once, every vector its own text's, long
  inputs under ``average`` the token-weighted mean of their pieces, renormalised.
  (``sections.engine.batching.pack`` on its own is covered in test_batching.py; here it is exercised through
  the dispatcher that feeds it.)
- Unit tests, each pinned to exact outcomes, reasons and counters: a rejected request is halved
  until only the bad input fails; a single input that keeps failing transiently gives up after
  ``RetryPolicy.max_attempts``; a reply with the wrong number of vectors is retried, never
  delivered; identical texts are sent once; a fatal stop yields what was in flight and raises;
  a requested stop sends nothing new, yields the replies that arrive within the grace period,
  abandons the rest and raises ``Interrupted``; the ``Verdict`` kinds; ``plan_units`` on empty and too-long inputs;
  the units of a request in flight are counted by the dispatcher's thread before its reply, a
  one-input request by its bill, and nothing the run does not need without item counts.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sections.engine.assemble import plan_units
from sections.engine.batching import Limits
from sections.engine import dispatch
from sections.engine.dispatch import Dispatcher, RetryPolicy, Verdict
from sections.engine.errors import Interrupted, ProviderFatalError, RequestRejected, TransientError
from sections.providers.base import Reply
from sections.engine.ratelimit import RateLimiter
from sections.engine.tokens import LongInputPolicy
from sections.engine.usage import Usage
from test_properties import DIM, vector_of

NO_WAIT = RetryPolicy(max_attempts=3, split_after=1, backoff_base_s=0.0, backoff_max_s=0.0)
POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="prop")


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
    """The test's own account of how a long text is cut (independent of sections.engine.tokens)."""
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


def dispatcher(provider, limits, *, long_input="average", concurrency=4, window_texts=4096, retry=NO_WAIT,
               limiter=None, stop=None, stop_grace_s=dispatch.STOP_GRACE_S, tokenizer=None, count_items=True):
    return Dispatcher(provider, tokenizer or WordTokenizer(), limits, long_input=long_input, concurrency=concurrency,
                      limiter=limiter or RateLimiter(), retry=retry, usage=Usage("prop-model"), pool=POOL,
                      window_texts=window_texts, stop=stop, stop_grace_s=stop_grace_s, count_items=count_items)


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


# -- unit tests: one behaviour each, with exact outcomes ------------------------------------------

FAST = RetryPolicy(max_attempts=3, split_after=2, backoff_base_s=0.001, backoff_max_s=0.001)
ROOMY = Limits(max_inputs=8, max_request_tokens=1000, max_input_tokens=100)  # one request holds them all


class StubProvider:
    """Answers each request with ``answer(texts, call)`` (``call`` counts from 1); keeps every request."""

    def __init__(self, answer):
        self.answer, self.lock = answer, threading.Lock()
        self.received: list[list[str]] = []

    def embed(self, texts, on_headers=None):
        with self.lock:
            self.received.append(list(texts))
            call = len(self.received)
        return self.answer(list(texts), call)


def right(texts) -> Reply:
    return Reply([vector_of(t) for t in texts], None)


def by_key(outcomes) -> dict:
    by = {o.key: o for o in outcomes}
    assert len(by) == len(outcomes), [o.key for o in outcomes]  # nothing answered twice
    return by


def test_a_rejected_request_is_halved_until_only_the_bad_input_fails():
    items = [("a", "one fine text"), ("b", "two fine texts"), ("c", "three fine"), ("bad", "bad bad apple")]
    provider = FakeProvider(ROOMY, WordTokenizer(), poison=frozenset({"bad bad"}))
    run = dispatcher(provider, ROOMY, concurrency=1)
    got = by_key(list(run.run(items)))

    assert sorted(got) == ["a", "b", "bad", "c"]
    for key, text in items[:3]:
        assert got[key].error is None and np.array_equal(got[key].vector, vector_of(text))
        assert got[key].tokens == len(text.split())
    assert got["bad"].vector is None and got["bad"].error == "rejected (400): poisoned input"
    assert got["bad"].tokens == 3
    # [a b c bad] -> [a b] + [c bad] -> [c] + [bad]: two splits, five attempts, two answered requests
    assert provider.sent == [["one fine text", "two fine texts"], ["three fine"]]
    assert (run.usage.splits, run.usage.attempts, run.usage.requests) == (2, 5, 2)


def test_a_single_input_that_keeps_failing_transiently_fails_after_max_attempts():
    def answer(texts, call):
        raise TransientError("server error (503): down")

    provider = StubProvider(answer)
    run = dispatcher(provider, ROOMY, retry=FAST)
    [outcome] = run.run([("k", "never answered here")])

    assert outcome.key == "k" and outcome.vector is None and outcome.tokens == 3
    assert outcome.error == f"server error (503): down (after {FAST.max_attempts} attempts)"
    assert provider.received == [["never answered here"]] * FAST.max_attempts
    assert (run.usage.attempts, run.usage.retries, run.usage.requests) == (3, 2, 0)


def test_a_multi_input_request_that_keeps_failing_is_split_after_split_after_attempts():
    def answer(texts, call):
        raise TransientError("timeout")

    provider = StubProvider(answer)
    run = dispatcher(provider, ROOMY, concurrency=1, retry=FAST)
    got = by_key(list(run.run([(1, "first text"), (2, "second text")])))

    assert {key: o.error for key, o in got.items()} == {1: "timeout (after 3 attempts)", 2: "timeout (after 3 attempts)"}
    assert provider.received == ([["first text", "second text"]] * FAST.split_after
                                 + [["first text"]] * FAST.max_attempts + [["second text"]] * FAST.max_attempts)
    assert run.usage.splits == 1


class CountingTokenizer(WordTokenizer):
    """Remembers which thread counted each text."""

    def __init__(self):
        self.counted_by: dict[str, threading.Thread] = {}

    def count(self, text: str) -> int:
        self.counted_by[text] = threading.current_thread()
        return super().count(text)


def test_a_request_in_flight_is_counted_by_the_dispatcher_before_its_reply():
    """The dispatcher's thread counts while it waits, so the workers only send and receive."""
    tokenizer = CountingTokenizer()
    items = [("a", "three words here"), ("b", "two words")]

    def answer(texts, call):
        deadline = time.monotonic() + 5
        while len(tokenizer.counted_by) < len(texts) and time.monotonic() < deadline:
            time.sleep(0.001)  # the reply waits until its inputs are counted (or the test fails)
        return Reply([vector_of(t) for t in texts], 5)  # billed, so the worker has no need to count

    run = dispatcher(StubProvider(answer), ROOMY, tokenizer=tokenizer, stop=threading.Event())
    got = by_key(list(run.run(items)))

    assert tokenizer.counted_by == {text: threading.current_thread() for _, text in items}
    assert (got["a"].tokens, got["b"].tokens, run.usage.tokens) == (3, 2, 5)


def test_a_one_input_request_is_counted_by_its_bill_not_by_the_tokenizer():
    tokenizer = CountingTokenizer()
    run = dispatcher(StubProvider(lambda texts, call: Reply([vector_of(texts[0])], 7)), ROOMY, tokenizer=tokenizer)
    [outcome] = run.run([("q", "one short query")])

    assert outcome.tokens == 7 and tokenizer.counted_by == {}  # a search never loads the encoding


def test_without_item_counts_nothing_is_counted_that_the_run_does_not_need():
    """``count_items=False`` (the seed's batch API): short inputs are never counted, their outcomes
    say None; a long input is still counted to be cut, and a reply without a bill for the usage."""
    class Tight(CountingTokenizer):
        def bound(self, text: str) -> int:
            return len(text.split()) + 1  # tight enough that the short inputs fit by it

    limits = Limits(max_inputs=8, max_request_tokens=1000, max_input_tokens=4)
    items = [("a", "three words here"), ("b", "two words"), ("long", "one two three four five six")]
    billed = Tight()
    run = dispatcher(StubProvider(lambda texts, call: Reply([vector_of(t) for t in texts], 99)), limits,
                     tokenizer=billed, stop=threading.Event(), count_items=False)
    got = by_key(list(run.run(items)))

    assert (got["a"].tokens, got["b"].tokens, got["long"].tokens) == (None, None, 6)
    assert got["a"].error is None and np.array_equal(got["a"].vector, vector_of("three words here"))
    assert set(billed.counted_by) == {"one two three four five six"}  # counted once, to be cut
    assert run.usage.tokens == 99 * run.usage.requests  # the bill, whatever was counted

    run = dispatcher(StubProvider(lambda texts, call: right(texts)), ROOMY, tokenizer=Tight(), count_items=False)
    got = by_key(list(run.run(items[:2])))
    assert (got["a"].tokens, got["b"].tokens, run.usage.tokens) == (3, 2, 5)  # counted for the usage


def test_a_reply_with_the_wrong_number_of_vectors_is_retried_not_delivered():
    def answer(texts, call):
        reply = right(texts)
        return Reply(reply.vectors[:-1], None) if call == 1 else reply  # the first reply drops a vector

    provider = StubProvider(answer)
    run = dispatcher(provider, ROOMY, retry=FAST)
    items = [("x", "left text"), ("y", "right text")]
    got = by_key(list(run.run(items)))

    for key, text in items:
        assert got[key].error is None and np.array_equal(got[key].vector, vector_of(text))
    assert provider.received == [["left text", "right text"]] * 2
    assert (run.usage.attempts, run.usage.retries, run.usage.splits, run.usage.requests) == (2, 1, 0, 1)


def test_a_reply_that_never_holds_the_right_number_of_vectors_fails_its_input():
    def answer(texts, call):
        return Reply([vector_of(t) for t in texts + ["extra"]], None)  # one vector too many

    provider = StubProvider(answer)
    [outcome] = dispatcher(provider, ROOMY, retry=FAST).run([("k", "lonely text")])

    assert outcome.vector is None
    assert outcome.error == "reply holds 2 vectors for 1 inputs (after 3 attempts)"
    assert len(provider.received) == FAST.max_attempts


def test_identical_texts_in_a_window_are_sent_once_and_every_item_gets_the_vector():
    items = [(0, "same text"), (1, "other text here"), (2, "same text"), (3, "same text")]
    provider = FakeProvider(ROOMY, WordTokenizer())
    run = dispatcher(provider, ROOMY, concurrency=1)
    got = by_key(list(run.run(items)))

    assert sorted(got) == [0, 1, 2, 3]
    for key, text in items:
        assert got[key].error is None and np.array_equal(got[key].vector, vector_of(text))
        assert got[key].tokens == len(text.split())
    assert provider.sent == [["same text", "other text here"]]
    assert run.usage.inputs == 2


class SeesTheStop(RateLimiter):
    """Keeps the run's cancel event, which the dispatcher sets once it has taken in a fatal error,
    and counts the attempts it was asked to admit."""

    stop: threading.Event | None = None
    asked = 0

    def acquire(self, tokens, cancelled=None):
        self.stop, self.asked = cancelled, self.asked + 1
        return super().acquire(tokens, cancelled)


def test_a_fatal_stop_sends_nothing_new_yields_what_was_in_flight_and_raises():
    limiter = SeesTheStop()

    def answer(texts, call):
        if texts == ["boom"]:
            raise ProviderFatalError("quota exhausted (429 insufficient_quota)")
        if texts == ["slow"]:
            assert limiter.stop.wait(10)  # still in flight when the dispatcher takes in the refusal
        return right(texts)

    provider = StubProvider(answer)
    items = [("slow", "slow"), ("boom", "boom"), ("later", "later one"), ("last", "later two")]
    outcomes = []
    with pytest.raises(ProviderFatalError, match="quota exhausted"):
        for outcome in dispatcher(provider, ROOMY, concurrency=2, limiter=limiter).run(items, max_inputs=1):
            outcomes.append(outcome)

    assert [o.key for o in outcomes] == ["slow"]  # the refused and the unsent items get no outcome
    assert outcomes[0].error is None and np.array_equal(outcomes[0].vector, vector_of("slow"))
    assert sorted(provider.received) == [["boom"], ["slow"]]
    assert limiter.asked == 2  # no request was even started after the refusal


def test_a_stop_sends_nothing_new_yields_the_replies_in_flight_and_raises_interrupted():
    stop = threading.Event()

    def answer(texts, call):
        if texts == ["first"]:
            stop.set()  # as a signal handler would, while "second" is on its way
        if texts == ["second"]:
            time.sleep(0.3)  # in flight when the stop is seen; answered well within the grace
        return right(texts)

    provider = StubProvider(answer)
    items = [("a", "first"), ("b", "second"), ("c", "third"), ("d", "fourth")]
    outcomes = []
    with pytest.raises(Interrupted):
        for outcome in dispatcher(provider, ROOMY, concurrency=2, stop=stop).run(items, max_inputs=1):
            outcomes.append(outcome)

    assert sorted(o.key for o in outcomes) == ["a", "b"]  # the paid-for reply in flight was delivered
    assert all(np.array_equal(o.vector, vector_of(t)) for o, t in zip(sorted(outcomes, key=lambda o: o.key),
                                                                      ["first", "second"]))
    assert sorted(provider.received) == [["first"], ["second"]]  # nothing was sent after the stop


def test_a_reply_that_outlasts_the_grace_is_abandoned():
    stop, release = threading.Event(), threading.Event()

    def answer(texts, call):
        stop.set()
        release.wait(10)  # a request (or a forward pass) that will not end soon
        return right(texts)

    provider = StubProvider(answer)
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted, match="1 request"):
            list(dispatcher(provider, ROOMY, concurrency=1, stop=stop, stop_grace_s=0.2).run(
                [("a", "slow"), ("b", "never sent")], max_inputs=1))
        assert time.monotonic() - started < 2.0  # the grace, not the request, decided when the run ended
    finally:
        release.set()
    assert provider.received == [["slow"]]


def test_a_stop_after_the_last_request_was_sent_lets_the_run_finish():
    stop = threading.Event()

    def answer(texts, call):
        time.sleep(0.2)  # long enough for the dispatcher to have sent both and found no more
        stop.set()
        return right(texts)

    # a third slot: the dispatcher learns that the items ran out before the stop
    outcomes = list(dispatcher(StubProvider(answer), ROOMY, concurrency=3, stop=stop).run(
        [("a", "one"), ("b", "two")], max_inputs=1))
    assert sorted(o.key for o in outcomes) == ["a", "b"]  # nothing left undone: no Interrupted


def test_verdict_has_exactly_ok_split_fail_and_cancelled():
    assert [v.name for v in Verdict] == ["OK", "SPLIT", "FAIL", "CANCELLED"]


def test_plan_units_answers_an_empty_text_at_once():
    ready = []
    units = plan_units([("e", ""), ("t", "two words"), ("b", "  \n")], WordTokenizer(), ROOMY,
                       LongInputPolicy.AVERAGE, ready)
    first = next(units)  # before anything is sent, the empty text already has its outcome
    assert first.text == "two words"
    assert [(o.key, o.vector, o.tokens, o.error) for o in ready] == [("e", None, 0, "empty text")]
    assert list(units) == []
    assert [(o.key, o.error) for o in ready] == [("e", "empty text"), ("b", "empty text")]


def test_plan_units_under_fail_fails_a_too_long_input_with_its_token_count():
    limits = Limits(max_inputs=8, max_request_tokens=20, max_input_tokens=3)
    ready = []
    units = list(plan_units([("long", "a b c d e"), ("short", "a b")], WordTokenizer(), limits,
                            LongInputPolicy.FAIL, ready))

    assert [u.text for u in units] == ["a b"]
    [outcome] = ready
    assert (outcome.key, outcome.vector, outcome.tokens) == ("long", None, 5)
    assert outcome.error == "input has 5 tokens, over the 3-token limit"


def test_truncate_sends_only_the_first_piece():
    limits = Limits(max_inputs=8, max_request_tokens=20, max_input_tokens=3)
    [unit] = plan_units([("long", "alpha beta gamma delta eta")], WordTokenizer(), limits,
                        LongInputPolicy.TRUNCATE, [])
    assert (unit.text, unit.tokens, unit.counted) == ("alpha beta gamma", 3, True)

    provider = FakeProvider(limits, WordTokenizer())
    [outcome] = dispatcher(provider, limits, long_input="truncate").run([("long", "alpha beta gamma delta eta")])
    assert provider.sent == [["alpha beta gamma"]]
    assert outcome.tokens == 3 and np.array_equal(outcome.vector, vector_of("alpha beta gamma"))
