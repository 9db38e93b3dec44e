"""The rate budget workers share through the database (``sections.postgres.budget``) and its use by
``RateLimiter``: a minute's burst, then the rate, whoever reserves; a 429 pushes everyone."""
from __future__ import annotations

import threading
import time

import pytest

from sections.postgres.budget import PostgresBudget, budget_key
from sections.postgres.database import Database
from sections.engine.ratelimit import RateLimiter


@pytest.fixture
def database(database_url):
    db = Database(database_url, max_size=8)
    yield db
    db.close()


def test_reservations_burst_a_minute_then_follow_the_rate(database):
    budget = PostgresBudget(database, "m@host")
    waits = [budget.reserve(10_000, 60_000, None) for _ in range(9)]  # 1,000 tokens a second, 60,000 at once
    assert waits[:6] == [0.0] * 6
    assert waits[6:] == pytest.approx([10.0, 20.0, 30.0], abs=0.5)
    other = PostgresBudget(database, "other-model@host")
    assert other.reserve(10_000, 60_000, None) == 0.0  # budgets are per model and server


def test_a_429_pushes_every_worker(database):
    budget = PostgresBudget(database, "m@host")
    assert budget.reserve(100, 60_000, 600) == 0.0
    budget.pause(5.0, 100, 60_000, 600)
    assert PostgresBudget(database, "m@host").reserve(100, 60_000, 600) == pytest.approx(5.0, abs=0.5)


def test_limiters_in_three_workers_keep_together_to_the_limit(database):
    budget = PostgresBudget(database, "m@host")
    limiters = [RateLimiter(tpm=6_000) for _ in range(3)]  # 100 tokens a second; each alone would burst 6,000
    for limiter in limiters:
        limiter.shared = budget
    sent: list[float] = []
    lock = threading.Lock()

    def worker(limiter: RateLimiter) -> None:
        for _ in range(22):
            assert limiter.acquire(100) is not None
            with lock:
                sent.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(limiter,)) for limiter in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 6,600 tokens: 6,000 at once, the other 600 at 100 a second
    assert time.monotonic() - started == pytest.approx(6.0, abs=2.0)
    assert sum(1 for at in sent if at - started < 1.0) == 60


def test_the_key_names_the_model_and_server_never_credentials():
    assert budget_key("m", "https://user:secret@llm.example:8443/v1") == "m@llm.example:8443"
    assert budget_key("m", None) == "m@api.openai.com"


def test_what_went_before_any_limit_was_known_is_charged_to_the_schedule_at_its_billed_count():
    reserved: list[int] = []

    class Recording:  # a unit test of the limiter's side: the schedule is a list here
        def reserve(self, tokens, tpm, rpm):
            reserved.append(tokens)
            return 0.0

        def pause(self, seconds, tokens, tpm, rpm):
            pass

    limiter = RateLimiter()
    limiter.shared = Recording()
    early = limiter.acquire(4000)  # an upper bound: nothing is known yet
    assert early is not None and early.unshared and reserved == []
    limiter.billed(early, 900)  # the reply says what it really cost
    limiter.observe({"x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "59100"}, early)
    later = limiter.acquire(100)
    assert later is not None and not later.unshared and reserved == [1000]
    limiter.billed(later, 100)  # reserved already: nothing owed
    limiter.acquire(50)
    assert reserved == [1000, 50]
