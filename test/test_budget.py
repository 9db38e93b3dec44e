"""The rate budget workers share through the database (``sections.postgres.budget``) and its use by
``RateLimiter``: the provider's burst at once, then the rate, whoever reserves; replies move the
schedule to what the provider still allows; a 429 pushes everyone."""
from __future__ import annotations

import threading
import time

import pytest

from sections.engine.ratelimit import RateLimiter
from sections.engine.service import EmbeddingService
from sections.postgres.budget import PostgresBudget, budget_key
from sections.postgres.database import Database
from sections.rate_budget import Kind, Rate, Rates, Reading
from sections.reading.sample_corpus import stdlib_sections
from sections.fingerprint import section_text

MINUTE = Rates(Rate(60_000, 60_000), None)  # 1,000 tokens a second, a minute's worth at once
FOUR_SECONDS = Rates(Rate(60_000, 4_000), None)  # the same rate, a bucket of 4,000


@pytest.fixture
def database(database_url):
    db = Database(database_url, max_size=8)
    yield db
    db.close()


def _reading(remaining: float, reserved: float | None, rates: Rates = FOUR_SECONDS, age_s: float = 0.0) -> Reading:
    assert rates.tokens is not None
    return Reading(Kind.TOKENS, rates.tokens, remaining, age_s, reserved, slack=500 if reserved is not None else 0)


def test_reservations_burst_the_bucket_then_follow_the_rate(database):
    budget = PostgresBudget(database, "m@host")
    waits = [budget.reserve(10_000, MINUTE).wait_s for _ in range(9)]
    assert waits[:6] == [0.0] * 6
    assert waits[6:] == pytest.approx([10.0, 20.0, 30.0], abs=0.5)
    other = PostgresBudget(database, "other-model@host")
    assert other.reserve(10_000, MINUTE).wait_s == 0.0  # budgets are per model and server


def test_the_burst_is_the_bucket_the_provider_grants_not_a_minute(database):
    budget = PostgresBudget(database, "m@host")
    waits = [budget.reserve(1_000, FOUR_SECONDS).wait_s for _ in range(6)]
    assert waits[:4] == [0.0] * 4  # 4,000 at once: what the provider's bucket holds
    assert waits[4:] == pytest.approx([1.0, 2.0], abs=0.3)
    totals = [budget.reserve(1_000, FOUR_SECONDS).tokens_reserved for _ in range(2)]
    assert totals == [7_000, 8_000]  # each reservation's place in the schedule


def test_a_reply_moves_the_schedule_to_what_the_provider_still_allows(database):
    budget = PostgresBudget(database, "m@host")
    first = budget.reserve(1_000, FOUR_SECONDS)
    # Another tool on the key drained the bucket: the reply says 500 left after our request.
    budget.observe([_reading(500, first.tokens_reserved)])
    assert budget.reserve(1_000, FOUR_SECONDS).wait_s == pytest.approx(0.5, abs=0.2)
    # Later the provider says the bucket is full again but for that request (3,000 left after it):
    # the schedule follows it up, counting the request reserved since (so 2,000 may go at once, not 3,000).
    later = budget.reserve(0, FOUR_SECONDS)
    budget.observe([_reading(3_000, later.tokens_reserved - 1_000)])
    waits = [budget.reserve(1_000, FOUR_SECONDS).wait_s for _ in range(3)]
    assert waits[:2] == [0.0, 0.0] and waits[2] == pytest.approx(1.0, abs=0.2)


def test_a_reading_from_before_any_limit_was_known_only_lowers_the_schedule(database):
    budget = PostgresBudget(database, "m@host")
    budget.observe([_reading(1_000, None)])  # the first reply of a blind first wave: the row makes itself
    assert budget.reserve(1_000, FOUR_SECONDS).wait_s == 0.0
    assert budget.reserve(1_000, FOUR_SECONDS).wait_s == pytest.approx(1.0, abs=0.2)
    budget.observe([_reading(4_000, None)])  # says more than the schedule knows: not trusted, it missed our reservations
    assert budget.reserve(1_000, FOUR_SECONDS).wait_s == pytest.approx(2.0, abs=0.2)


def test_a_429_pushes_every_worker(database):
    budget = PostgresBudget(database, "m@host")
    rates = Rates(Rate(60_000, 60_000), Rate(600, 600))
    assert budget.reserve(100, rates).wait_s == 0.0
    budget.pause(5.0, 100, rates)
    assert PostgresBudget(database, "m@host").reserve(100, rates).wait_s == pytest.approx(5.0, abs=0.5)


def test_a_slow_start_leaves_the_granted_burst_to_spend(database):
    """Requests in flight ramp 1, 2, 4 over the first replies, and each reply reads what was spent:
    what the ramp did not spend of the bucket the provider granted is there at once when it ends."""
    budget = PostgresBudget(database, "m@host")
    for in_flight in (1, 2, 4):
        reservations = [budget.reserve(100, FOUR_SECONDS) for _ in range(in_flight)]
        assert all(r.wait_s == 0.0 for r in reservations)
        time.sleep(0.1)  # the round trip
        first = reservations[0].tokens_reserved
        budget.observe([_reading(4_000 - first, first, age_s=0.1)])
    waits = [budget.reserve(1_000, FOUR_SECONDS).wait_s for _ in range(4)]
    assert waits[:3] == [0.0] * 3  # 4,000 less the 700 the ramp spent, plus what refilled meanwhile
    assert 0.0 < waits[3] < 0.45


def test_limiters_in_three_workers_keep_together_to_the_limit(database):
    budget = PostgresBudget(database, "m@host")
    limiters = [RateLimiter(tpm=6_000) for _ in range(3)]  # 100 tokens a second; each alone would burst 6,000
    for limiter in limiters:
        limiter.share(budget)
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


def test_a_worker_starting_later_takes_the_limits_the_schedule_knows(database):
    budget = PostgresBudget(database, "m@host")
    budget.reserve(1_000, FOUR_SECONDS)
    limiter = RateLimiter()
    limiter.share(budget)
    assert limiter.tokens_per_minute == 60_000 and limiter.token_capacity == 4_000
    ticket = limiter.acquire(1_000)
    assert ticket is not None and ticket.reservation is not None  # in the schedule from its first request


def test_the_key_names_the_model_and_server_never_credentials():
    assert budget_key("m", "https://user:secret@llm.example:8443/v1") == "m@llm.example:8443"
    assert budget_key("m", None) == "m@api.openai.com"


def test_three_workers_spend_the_burst_the_provider_granted(database, sim):
    """Three services (as three `sync` processes) on one budget, against the simulator's real headers:
    a 3-second bucket at 10,000 tokens a second. They finish near the ideal (the bucket at once, then
    the rate), not the 3 seconds later of a schedule that paces as if the bucket started empty."""
    sim.configure(tpm=600_000, tpm_burst=30_000, latency_base=0.05)
    texts = [section_text(s["title"], s["content"]) for s in stdlib_sections(150, tokens_per_section=350)]
    budget = PostgresBudget(database, budget_key("text-embedding-3-small", sim.base_url))
    warm = EmbeddingService(api_key="sk-test", base_url=sim.base_url, dimensions=8)
    warm.limiter.share(budget)
    warm.batch_generate_embeddings(["the limits, learned by an earlier run"])
    time.sleep(0.5)  # the bucket full again
    sim.reset()
    services = [EmbeddingService(api_key="sk-test", base_url=sim.base_url, dimensions=8) for _ in range(3)]
    for service in services:
        service.limiter.share(budget)
    results: list[int] = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda s=s, part=texts[i::3]: results.append(
        len(s.batch_generate_embeddings(part)["embeddings"]))) for i, s in enumerate(services)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    stats = sim.stats()
    ideal = (stats["tokens"] - 30_000) / 10_000 + 0.05
    assert sum(results) == len(texts) and stats["distinct_inputs"] == len(texts)
    assert elapsed < ideal + 1.5, (elapsed, ideal)  # an empty bucket at the start would cost 3 s
    assert stats["rate_limited"] <= 2
    for service in [warm, *services]:
        service.close()
