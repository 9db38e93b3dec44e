"""Properties (hypothesis) of the parts that must never put a vector on the wrong input.

- The result matcher (``OpenAIProvider._match`` / ``embed``): any order maps each vector to its
  index; any subset, duplicate, out-of-range or malformed reply is a ``TransientError``, never a
  shifted or partial result.
- Secrets: ``scrub`` hides key-shaped tokens, ``mask_url`` hides the password libpq would use.

The dispatcher's properties live in test_dispatch.py, which shares ``vector_of`` from here.
"""
from __future__ import annotations

import base64
import hashlib
from types import SimpleNamespace as NS

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from psycopg.conninfo import conninfo_to_dict

from sections.redact import mask_url, scrub
from sections.engine.errors import TransientError
from sections.providers.openai import OpenAIProvider

DIM = 8


def vector_of(text: str) -> np.ndarray:
    """A known vector for a text: deterministic, unit length, distinct per text."""
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


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
