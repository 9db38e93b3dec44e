"""Request packing: never over a limit, every input exactly once, order kept, work spread."""
import pytest
from hypothesis import given, settings, strategies as st

from core.batching import Limits, pack


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(1, 500), max_size=400),
    max_inputs=st.integers(1, 50),
    max_request_tokens=st.integers(500, 5000),
    parallel=st.integers(1, 32),
    min_request_tokens=st.integers(1, 3000),
)
def test_pack_respects_limits_and_keeps_every_input_once_in_order(counts, max_inputs, max_request_tokens, parallel, min_request_tokens):
    limits = Limits(max_inputs=max_inputs, max_request_tokens=max_request_tokens, max_input_tokens=500)
    spans = pack(counts, limits, parallel=parallel, min_request_tokens=min_request_tokens)
    flat = [i for span in spans for i in span]
    assert flat == list(range(len(counts)))
    for span in spans:
        assert 1 <= len(span) <= max_inputs
        assert sum(counts[i] for i in span) <= max_request_tokens


def test_a_corpus_over_300k_tokens_never_goes_out_as_one_request():
    counts = [350] * 1000  # the seed's case: 350,000 tokens
    spans = pack(counts, Limits(max_inputs=2048), parallel=1)
    assert len(spans) >= 2
    assert all(sum(counts[i] for i in s) <= 300_000 for s in spans)


def test_work_is_spread_over_the_parallel_slots():
    spans = pack([350] * 1000, Limits(), parallel=16)
    assert 16 <= len(spans) <= 17
    sizes = [len(s) for s in spans]
    assert max(sizes) - min(sizes) <= max(sizes) // 2 + 1


def test_tiny_jobs_are_not_fanned_out():
    assert len(pack([10] * 30, Limits(), parallel=16)) == 1


def test_an_input_over_the_per_input_limit_is_refused():
    with pytest.raises(ValueError, match="input 1 has 9000 tokens"):
        pack([5, 9000], Limits())


def test_limits_are_validated():
    with pytest.raises(ValueError):
        Limits(max_inputs=0)
    with pytest.raises(ValueError):
        Limits(max_request_tokens=100, max_input_tokens=200)
