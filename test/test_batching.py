"""Request packing: never over a limit, every input exactly once, order kept, work spread."""
from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st

from sections.engine.batching import MAX_TARGET_CHARS, MIN_REQUEST_CHARS, RATE_SLICE_S, Limits, balance_target, pack


@dataclass(frozen=True)
class Unit:
    tokens: int
    chars: int


def units(counts):
    return [Unit(t, 4 * t) for t in counts]


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(1, 500), max_size=400),
    max_inputs=st.integers(1, 50),
    max_request_tokens=st.integers(500, 5000),
    target_chars=st.floats(1, 50_000),
)
def test_pack_respects_limits_and_keeps_every_input_once_in_order(counts, max_inputs, max_request_tokens, target_chars):
    limits = Limits(max_inputs=max_inputs, max_request_tokens=max_request_tokens, max_input_tokens=500)
    given_units = units(counts)
    requests = list(pack(given_units, limits, target_chars))
    assert [u for r in requests for u in r] == given_units  # the same objects, once each, in order
    assert all(r for r in requests)
    for request in requests:
        assert len(request) <= max_inputs
        assert sum(u.tokens for u in request) <= max_request_tokens


def test_a_corpus_over_300k_tokens_never_goes_out_as_one_request():
    requests = list(pack(units([350] * 1000), Limits(), target_chars=float("inf")))  # the seed's case
    assert len(requests) == 2
    assert all(sum(u.tokens for u in r) <= 300_000 for r in requests)


def test_work_is_spread_over_the_parallel_slots():
    given_units = units([350] * 1000)
    target = balance_target(sum(u.chars for u in given_units), parallel=16)
    requests = list(pack(given_units, Limits(), target))
    assert 16 <= len(requests) <= 17
    sizes = [len(r) for r in requests]
    assert max(sizes) - min(sizes) <= max(sizes) // 2 + 1


def test_balance_target_bounds():
    assert balance_target(100, 16) == MIN_REQUEST_CHARS  # tiny jobs are not fanned out
    assert balance_target(10**9, 16) == MAX_TARGET_CHARS


def test_a_known_token_budget_caps_requests_at_a_slice_of_a_second():
    # 6M TPM = 100k tokens/s; 0.05 s of it is 5k tokens, about 20k characters.
    assert balance_target(10**9, 16, tokens_per_minute=6_000_000) == pytest.approx(100_000 * RATE_SLICE_S * 4)
    assert balance_target(10**9, 16, tokens_per_minute=60_000) == MIN_REQUEST_CHARS  # never below the floor
    assert balance_target(10**9, 16, tokens_per_minute=10**12) == MAX_TARGET_CHARS


def test_a_callable_target_is_asked_again_for_every_request():
    targets = iter([400, 40, 40, 40])  # a budget learned after the first request shrinks the rest
    requests = list(pack(units([10] * 13), Limits(), lambda: next(targets)))
    assert [len(r) for r in requests] == [10, 1, 1, 1]


def test_packing_streams():
    def endless():
        while True:
            yield Unit(10, 40)

    first = next(iter(pack(endless(), Limits(max_inputs=3))))
    assert len(first) == 3


def test_an_input_over_the_per_input_limit_is_refused():
    with pytest.raises(ValueError, match="an input has 9000 tokens"):
        list(pack(units([5, 9000]), Limits()))


def test_limits_are_validated():
    with pytest.raises(ValueError):
        Limits(max_inputs=0)
    with pytest.raises(ValueError):
        Limits(max_request_tokens=100, max_input_tokens=200)
