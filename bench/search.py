"""Search at scale: 100,000 sections × 384 dimensions behind the HNSW index, plain, filtered, hybrid.

What is timed is what a Python caller waits for: ``SupabaseStore.search_by_vector`` (the query
vector given, so no model runs), one query at a time over the store's pooled connection to the
embedded Postgres, which runs ``match_sections`` / ``hybrid_match_sections``. Three kinds of query:
  - plain: the 10 nearest sections of the collection;
  - filtered: the same, among sections whose metadata holds one ``bucket`` of 100 (1% of the rows,
    unrelated to where a section lies in the vector space: the case that leaves a plain HNSW scan
    with one hit in a hundred), served by pgvector 0.8's iterative scan;
  - hybrid: the vector ranking fused with the full-text ranking of three of the topic's words.
Recall@10 is measured against exact answers: for plain and filtered queries the true nearest
rows, computed with numpy over all the vectors (and the filter); for hybrid queries the same SQL
function on a connection with index scans off (its vector side then a sequential scan and a
sort: exact), since the fusion is the function's own.

The vectors are generated, since embedding 100,000 texts with a model takes an hour on 2 CPUs: a
mixture of 1,000 topics in a 64-dimensional latent space, mapped linearly to 384 dimensions, plus
noise, normalised. They were matched to real ones, all-MiniLM-L6-v2's 4,745 vectors of the
retrieval corpus: at that many rows, 54 effective dimensions (participation ratio of the
covariance) against the real 49, and a row's 10th nearest neighbour 3.0 standard deviations of
the pairwise similarity above a random pair, against the real 3.2 (the contrast that makes a
nearest-neighbour search easy or hard). Uniform random vectors, which no embedding model produces,
are the hardest case for any approximate index and would understate recall. Each section's text
mixes words of its topic with common words, so full-text ranking has something to find. Queries
are new points drawn the same way, never rows of the table.
"""
from __future__ import annotations

import tempfile
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from bench.players import fresh_database
from bench.report import Result, median
from sections.postgres.embedded import EmbeddedPostgres
from sections.store.supabase_store import SupabaseStore

MODEL = "bench-384"
DIMS, TOPICS, LATENT = 384, 1000, 64
K, BUCKETS, WARMUP = 10, 100, 20
SIZED_BUFFERS = "1GB"  # holds the 356 MB of vectors and index: a server sized for its data
TARGET_RECALL, TARGET_P50_MS = 0.95, 5.0


class Corpus:
    """The generated sections and queries: topic of each, vector, words."""

    def __init__(self, rows: int, queries: int, seed: int = 11):
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((TOPICS, LATENT)).astype(np.float32)
        self.basis = (rng.standard_normal((LATENT, DIMS)) / np.sqrt(LATENT)).astype(np.float32)
        vocabulary = [_word(i) for i in range(6000)]
        self.topic_words = [vocabulary[1000 + 5 * t:1000 + 5 * t + 5] for t in range(TOPICS)]
        self.common = vocabulary[:1000]
        self.rng = rng
        self.topics = rng.integers(TOPICS, size=rows)
        self.vectors = self.points(self.topics)
        self.query_topics = rng.integers(TOPICS, size=queries)
        self.queries = self.points(self.query_topics)

    def points(self, topics: np.ndarray) -> np.ndarray:
        latent = self.centres[topics] + 0.6 * self.rng.standard_normal((len(topics), LATENT)).astype(np.float32)
        vectors = latent @ self.basis + 0.08 * self.rng.standard_normal((len(topics), DIMS)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def section(self, i: int) -> dict:
        words = self.topic_words[self.topics[i]]
        body = [words[j] for j in self.rng.integers(5, size=6)] + [self.common[j] for j in self.rng.zipf(1.3, 24) % 1000]
        self.rng.shuffle(body)
        return {"id": f"s{i:06d}", "title": " ".join(words[:2]), "content": " ".join(body),
                "metadata": {"bucket": i % BUCKETS, "topic": int(self.topics[i])}}

    def query_text(self, q: int) -> str:
        return " ".join(self.topic_words[self.query_topics[q]][1:4])


def _word(i: int) -> str:
    """A pronounceable made-up word, distinct for each i (the full-text side needs words, not meaning)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    letters = []
    while True:
        letters.append(consonants[i % 14] + vowels[(i // 14) % 5])
        i //= 70
        if i == 0:
            return "".join(letters) + "n"


def load(store: SupabaseStore, corpus: Corpus) -> dict:
    """Sections, vectors and the HNSW index, each timed (the index as ``sections index`` builds it),
    and the megabytes the vectors and their indexes take."""
    rows = len(corpus.topics)
    started = time.perf_counter()
    store.upsert_sections(corpus.section(i) for i in range(rows))
    sections = time.perf_counter() - started
    started = time.perf_counter()
    store.write_embeddings(MODEL, ((f"s{i:06d}", corpus.vectors[i]) for i in range(rows)))
    vectors = time.perf_counter() - started
    started = time.perf_counter()
    store.build_index(MODEL)
    index = time.perf_counter() - started
    with store.connection() as conn:
        conn.execute("vacuum analyze sections")
        conn.execute("vacuum analyze section_embeddings")
        size, buffers = conn.execute("select pg_total_relation_size('section_embeddings'), "
                                     "current_setting('shared_buffers')").fetchone() or (0, "?")
    return {"sections": sections, "vectors": vectors, "index": index, "mb": size / 2**20, "shared_buffers": buffers}


class Kind:
    """One kind of query: how the store is asked, and how the exact answer is asked for."""

    def __init__(self, name: str, filtered: bool = False, hybrid: bool = False):
        self.name, self.filtered, self.hybrid = name, filtered, hybrid

    def ask(self, store: SupabaseStore, corpus: Corpus, q: int) -> list[str]:
        hits = store.search_by_vector(corpus.queries[q], MODEL, K, group=False,
                                      filter={"bucket": q % BUCKETS} if self.filtered else None,
                                      text=corpus.query_text(q) if self.hybrid else None)
        return [hit["id"] for hit in hits]

    def exact(self, conn: psycopg.Connection, corpus: Corpus, q: int) -> list[str]:
        if self.hybrid:
            rows = conn.execute("select id from hybrid_match_sections(%s, %s, %s, %s, '{}', 'default')",
                                (corpus.query_text(q), corpus.queries[q], K, MODEL)).fetchall()
            return [row[0] for row in rows]
        similarity = corpus.vectors @ corpus.queries[q]
        if self.filtered:
            similarity[np.arange(len(similarity)) % BUCKETS != q % BUCKETS] = -np.inf
        return [f"s{i:06d}" for i in np.argsort(-similarity)[:K]]


KINDS = [Kind("plain"), Kind("filtered: 1% of rows (metadata bucket)", filtered=True),
         Kind("hybrid: full text + vector (RRF)", hybrid=True)]


def latencies(store: SupabaseStore, corpus: Corpus) -> dict[str, list[float]]:
    """Seconds of each call, kinds interleaved query by query so each meets the same cache."""
    for q in range(min(WARMUP, len(corpus.queries))):  # the pool's connections, the upper layers of the graph
        for kind in KINDS:
            kind.ask(store, corpus, q)
    seconds: dict[str, list[float]] = {kind.name: [] for kind in KINDS}
    for q in range(len(corpus.queries)):
        for kind in KINDS:
            started = time.perf_counter()
            kind.ask(store, corpus, q)
            seconds[kind.name].append(time.perf_counter() - started)
    return seconds


def recalls(store: SupabaseStore, url: str, corpus: Corpus) -> dict[str, tuple[float, int]]:
    """Each kind's mean recall@10 against the exact answers, and how many answers came back short of 10."""
    found: dict[str, tuple[float, int]] = {}
    with psycopg.connect(url, autocommit=True) as exact:
        register_vector(exact)
        exact.execute("set enable_indexscan = off")
        for kind in KINDS:
            answers = [(kind.ask(store, corpus, q), kind.exact(exact, corpus, q)) for q in range(len(corpus.queries))]
            found[kind.name] = (float(np.mean([len(set(ids) & set(truth)) / max(1, len(truth)) for ids, truth in answers])),
                                sum(len(ids) < K for ids, _ in answers))
    return found


def prewarm(url: str) -> None:
    """Read the vectors, the sections and their indexes into shared_buffers (pg_prewarm, shipped with Postgres)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create extension if not exists pg_prewarm")
        conn.execute("select pg_prewarm(c.oid) from pg_class c where c.relname in ('sections', 'section_embeddings') "
                     "or c.oid in (select indexrelid from pg_index where indrelid in "
                     "('sections'::regclass, 'section_embeddings'::regclass))")


def run(quick: bool = False) -> Result:
    rows, queries = (3_000, 30) if quick else (100_000, 200)
    corpus = Corpus(rows, queries)
    with tempfile.TemporaryDirectory() as data:
        with EmbeddedPostgres(data) as pg:
            url = fresh_database(pg, "search")
            with SupabaseStore(url) as store:
                loaded = load(store, corpus)
                as_shipped = latencies(store, corpus)
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(f"alter system set shared_buffers = '{SIZED_BUFFERS}'")
        with EmbeddedPostgres(data) as pg:  # started again: shared_buffers takes effect at start
            prewarm(url)
            with SupabaseStore(url) as store:
                sized = latencies(store, corpus)
                found = recalls(store, url, corpus)
    reports = [{"kind": kind.name, "queries": queries, "recall": found[kind.name][0], "short": found[kind.name][1],
                "p50": median(as_shipped[kind.name]) * 1000, "p95": float(np.percentile(as_shipped[kind.name], 95)) * 1000,
                "sized_p50": median(sized[kind.name]) * 1000,
                "sized_p95": float(np.percentile(sized[kind.name], 95)) * 1000} for kind in KINDS]
    shipped, sized_label = loaded["shared_buffers"], SIZED_BUFFERS
    table = [[r["kind"], r["queries"], f"{r['recall']:.3f}", r["short"], f"{r['p50']:.2f}", f"{r['p95']:.2f}",
              f"{r['sized_p50']:.2f}", f"{r['sized_p95']:.2f}"] for r in reports]
    plain, filtered = reports[0], reports[1]

    def verdict(p50: float) -> str:
        return "met" if plain["recall"] >= TARGET_RECALL and p50 <= TARGET_P50_MS and filtered["short"] == 0 else "NOT met"

    return Result(
        key="search",
        title=f"Search: {rows:,} sections × {DIMS} dimensions, HNSW, plain / filtered / hybrid",
        conditions=(f"Generated vectors (a mixture of {TOPICS:,} topics in a {LATENT}-dimensional latent space, mapped "
                    f"to {DIMS} dimensions with noise: matched to all-MiniLM-L6-v2's, see bench/search.py) and texts "
                    f"(topic words among common words); {queries} new query points, {K} hits each, one at a time, "
                    "the three kinds interleaved: SupabaseStore.search_by_vector over a pooled connection to the "
                    "embedded Postgres (HNSW m=16, ef_construction=64; ef_search 40). The vectors and their index "
                    f"take {loaded['mb']:,.0f} MB: timed with shared_buffers {shipped} as the embedded server ships "
                    f"(after {WARMUP} warm-up queries of each kind), then restarted with {sized_label} and the tables "
                    "and indexes prewarmed (a server sized for its data). Recall@10 against exact answers (numpy; "
                    "hybrid: the function with index scans off). Loading took "
                    f"{loaded['sections']:.1f} s (sections, with their full-text column), {loaded['vectors']:.1f} s "
                    f"(vectors), {loaded['index']:.1f} s (index)."),
        header=["query", "queries", "recall@10", "answers short of 10", f"p50 ms ({shipped})", f"p95 ms ({shipped})",
                f"p50 ms ({sized_label})", f"p95 ms ({sized_label})"],
        rows=table,
        verdict=(f"Plain: recall {plain['recall']:.3f} at p50 {plain['p50']:.2f} ms with {shipped} of shared_buffers "
                 f"and {plain['sized_p50']:.2f} ms with {sized_label}; the 1% filter returned {K} hits for "
                 f"{filtered['queries'] - filtered['short']} of {filtered['queries']} queries (recall "
                 f"{filtered['recall']:.3f}). Targets (recall ≥ {TARGET_RECALL} at p50 ≤ {TARGET_P50_MS:g} ms, no "
                 f"filtered answer short): {verdict(plain['p50'])} as shipped, {verdict(plain['sized_p50'])} with "
                 f"{sized_label}."),
        plot={"p50 ms": {f"ours: {r['kind']} ({label})": r[key] for key, label in (("p50", shipped), ("sized_p50", sized_label))
                         for r in reports}},
        plot_ylabel="p50 ms",
    )
