"""The limiter: budgets gate dispatch, headers correct the estimate, 429s pause everyone."""
import threading

import pytest

from sections.engine.ratelimit import RateLimiter


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_no_limits_means_no_waiting():
    limiter = RateLimiter()
    for _ in range(1000):
        assert limiter.acquire(300_000) is not None


def test_token_budget_admits_a_full_bucket_then_waits_for_refill():
    clock = FakeClock()
    limiter = RateLimiter(tpm=60_000, clock=clock)  # 1,000 tokens per second
    assert limiter.acquire(60_000) is not None
    done = threading.Event()

    def second():
        limiter.acquire(500)
        done.set()

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    assert not done.wait(0.2)  # bucket empty: blocked
    clock.now += 0.6  # 600 tokens refilled
    assert done.wait(2)


def test_request_budget():
    clock = FakeClock()
    limiter = RateLimiter(rpm=120, clock=clock)
    for _ in range(120):
        limiter.acquire(1)
    assert limiter._requests.wait_for(1, clock.now) == pytest.approx(0.5)


def test_limits_are_learned_from_headers_and_user_limits_cap_them():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    ticket = limiter.acquire(1000)
    limiter.acquire(2000)  # sent before any limit was known: still accounted for
    limiter.observe({"x-ratelimit-limit-tokens": "1000000", "x-ratelimit-remaining-tokens": "5000",
                     "x-ratelimit-limit-requests": "3000", "x-ratelimit-remaining-requests": "2999"}, ticket)
    assert limiter.tokens_per_minute == 1_000_000
    assert limiter._tokens.level == 3000
    assert limiter._requests.level == 3000 - 2  # within one request of ours: left alone
    capped = RateLimiter(tpm=100_000, clock=clock)
    capped.observe({"x-ratelimit-limit-tokens": "1000000"}, None)
    assert capped.tokens_per_minute == 100_000


def test_sync_accounts_for_refill_and_what_was_sent_since():
    clock = FakeClock()
    limiter = RateLimiter(tpm=600_000, clock=clock)  # 10,000 tokens/s, capacity 600k
    first = limiter.acquire(100_000)
    limiter.acquire(50_000)  # sent after the first was admitted
    clock.now += 1.0
    # The server says: right after admitting the first request it had 200k left (a smaller bucket than we thought).
    limiter.observe({"x-ratelimit-remaining-tokens": "200000"}, first)
    assert limiter._tokens.level == pytest.approx(200_000 + 10_000 - 50_000)
    # Within one request (100k) of our own estimate: noise, left alone.
    limiter.observe({"x-ratelimit-remaining-tokens": "120000"}, first)
    assert limiter._tokens.level == pytest.approx(160_000)
    # A reply showing more than one request above our estimate raises it: the server's count covers
    # every user of the key, and a level that could only fall would ratchet below the server's.
    limiter.observe({"x-ratelimit-remaining-tokens": "590000"}, first)
    assert limiter._tokens.level == pytest.approx(590_000 + 10_000 - 50_000)


def test_a_429_pauses_every_dispatch_for_the_time_asked():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    assert limiter.rate_limited(2.0) == 2.0
    done = threading.Event()
    threading.Thread(target=lambda: (limiter.acquire(1), done.set()), daemon=True).start()
    assert not done.wait(0.2)
    clock.now += 2.01
    assert done.wait(2)


def test_429_without_hint_backs_off_exponentially():
    limiter = RateLimiter(clock=FakeClock())
    pauses = [limiter.rate_limited(None) for _ in range(6)]
    assert pauses[-1] > pauses[0]
    limiter.succeeded()
    assert limiter.rate_limited(None) <= 0.375


def test_cancelled_acquire_returns_none():
    clock = FakeClock()
    limiter = RateLimiter(tpm=60, clock=clock)
    limiter.acquire(60)
    cancel = threading.Event()
    cancel.set()
    assert limiter.acquire(60, cancel) is None


def test_the_bucket_the_provider_grants_is_learned_from_its_reset_header():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    ticket = limiter.acquire(1000)
    # 5M a minute, 283,333 left, 0.6 s until full: a bucket of 333,333 (4 seconds), not a minute's worth.
    limiter.observe({"x-ratelimit-limit-tokens": "5000000", "x-ratelimit-remaining-tokens": "283333",
                     "x-ratelimit-reset-tokens": "600ms"}, ticket)
    assert limiter.tokens_per_minute == 5_000_000
    assert limiter.token_capacity == pytest.approx(333_333)
    # OpenAI's longer forms; a reset longer than a minute's refill never makes the bucket bigger than that.
    limiter.observe({"x-ratelimit-limit-tokens": "5000000", "x-ratelimit-remaining-tokens": "1000",
                     "x-ratelimit-reset-tokens": "1m2.5s"}, None)
    assert limiter.token_capacity == 5_000_000
    limiter.observe({"x-ratelimit-limit-tokens": "5000000", "x-ratelimit-remaining-tokens": "1000"}, None)
    assert limiter.token_capacity == 5_000_000  # no reset header: a minute's worth, as before
