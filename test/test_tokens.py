"""Offline token counts and the long-input policy."""
import pytest
from hypothesis import given, settings, strategies as st

from sections.engine.tokens import Piece, TiktokenTokenizer, plan_long_input

tok = TiktokenTokenizer()


def test_counts_match_cl100k_base():
    # Known cl100k_base counts (the same as OpenAI's tokenizer page shows).
    assert tok.count("hello world") == 2
    assert tok.count("") == 0
    assert tok.count("<|endoftext|>") > 1  # special tokens in user text count as text


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=3000), st.integers(5, 200))
def test_split_pieces_are_within_the_limit_and_cover_the_text(text, limit):
    pieces = tok.split(text, limit)
    for piece, n in pieces:
        assert n == tok.count(piece) <= limit
    # Only characters cut in half at a boundary may be lost.
    joined = "".join(p for p, _ in pieces)
    assert len(joined) >= len(text.strip()) - 2 * len(pieces) - 2 or not text.strip()


def test_policies():
    text = "word " * 100
    n = tok.count(text)
    assert plan_long_input(text, n, tok, 1000, "fail") == [Piece(text, n)]
    with pytest.raises(ValueError, match=f"input has {n} tokens, over the 30-token limit"):
        plan_long_input(text, n, tok, 30, "fail")
    truncated = plan_long_input(text, n, tok, 30, "truncate")
    assert len(truncated) == 1 and truncated[0].tokens <= 30
    averaged = plan_long_input(text, n, tok, 30, "average")
    assert len(averaged) == -(-n // 30) and all(p.tokens <= 30 for p in averaged)
    assert sum(p.tokens for p in averaged) == pytest.approx(n, abs=len(averaged))
    with pytest.raises(ValueError, match="unknown long-input policy"):
        plan_long_input(text, n, tok, 30, "bogus")
