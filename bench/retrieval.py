"""Retrieval quality: does search, with the local model, find the doc that answers a user's question?

The corpus is real and sizeable, and ships in a pip package pinned in the ``bench`` extra:
``comfyui-embedded-docs``, the node reference that ComfyUI shows in its help panel. It was written
by people for people (tables of inputs, notes, examples, source code), not for this test. Its
English pages (``<Node>/en.md``, about a thousand) are copied into a temporary tree, so every id
starts with the page (``KSampler/en.md#...``); the other languages stay out, since a question in
English would also find the translations and muddle the score.

The questions (``bench/questions_comfyui.json``) were written by hand in the words a user types
("clip skip 2", "make a negative of my picture"), each with the node doc that answers it. The
path is the one a user's ``sections ingest`` of the folder takes: ``open_sources`` reads it, long
sections are cut to the model's window where ``core`` has a chunker, ``SupabaseStore.ingest``
embeds with all-MiniLM-L6-v2 into a fresh embedded Postgres, and ``store.search`` answers each
question (k = 10, exact scan: no HNSW index, so the score is the reader's and the embedding's, not
an approximate index's). Two rankings of the same hits: as search returns them, and with later
hits of an already listed file dropped (what a user who wants "the page" sees). Then the same
questions through hybrid search (``search_by_vector(question's vector, text=...)``, what
``--hybrid`` runs): the words as typed, every one required on the full-text side, and joined by
``or`` (which a user can type) so that any of them counts; the vector side is the same in both.

``measure`` needs nothing newer than ``open_sources``, ``SupabaseStore(url)``, ``ingest``,
``search`` and ``status``, so it also runs against older checkouts of ``core`` (the "before"
numbers of docs/benchmarks.md come from it).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.players import fresh_database
from bench.report import LOCAL_PACKAGES, Result, median
from sections.engine.service import EmbeddingService
from sections.reading.sources import open_sources
from sections.store.supabase_store import SupabaseStore

MODEL = "all-MiniLM-L6-v2"
CORPUS = "comfyui-embedded-docs"
PACKAGES = LOCAL_PACKAGES + (CORPUS,)
QUESTIONS = Path(__file__).with_name("questions_comfyui.json")
K = 10
QUICK_DOCS = 32  # a smoke size: the first question of each topic, its doc, and others to fill up


def docs_root() -> Path:
    """The installed package's docs folder (``<Node>/<lang>.md``)."""
    try:
        import comfyui_embedded_docs
    except ImportError:
        raise SystemExit(f"missing {CORPUS}: install the benchmark corpus with  pip install -e '.[bench]'") from None
    return Path(comfyui_embedded_docs.__file__).parent / "docs"


def load_questions(path: Path = QUESTIONS) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["questions"]


def copy_english(folder: Path, nodes: list[str]) -> None:
    """``<folder>/<Node>/en.md`` for each node: the English page only, ids relative to ``folder``."""
    root = docs_root()
    for node in nodes:
        (folder / node).mkdir(parents=True)
        shutil.copyfile(root / node / "en.md", folder / node / "en.md")


def english_nodes() -> list[str]:
    return sorted(d.name for d in docs_root().iterdir() if (d / "en.md").is_file())


def source_file(hit: dict) -> str:
    """The file a search hit comes from: ``metadata["source"]`` or its parent section's id when the
    hit carries them, else its own id; the part before ``#`` in each case."""
    metadata = hit.get("metadata") or {}
    parent = hit.get("parent")
    parent = parent.get("id") if isinstance(parent, dict) else parent
    path = metadata.get("source") or metadata.get("parent") or parent or hit["id"]
    return str(path).split("#", 1)[0]


def from_file(hit: dict, expected: str) -> bool:
    """Whether a search hit comes from the file ``expected`` (``KSampler/en.md``); a path that
    ends in ``/expected`` counts too.

    Matching on the file, not the section, is what keeps the score fair across readers: one reader
    cuts a page at every heading, another also into chunks under the model's window, and their ids
    and slugs differ, but every one of them keeps the page a hit came from, and the page is the
    answer a user asking "which node does this" needs. A reader that returns three sections of one
    wrong page fills top-3 with one miss, which is the cost its user sees too.
    """
    path = source_file(hit)
    return path == expected or path.endswith("/" + expected)


def first_rank(hits: list[dict], expected: str, one_per_file: bool = False) -> int | None:
    """1-based rank of the first hit from ``expected``, or None; with ``one_per_file``, hits from a
    file already listed are dropped first."""
    seen: set[str] = set()
    rank = 0
    for hit in hits:
        if one_per_file:
            file = source_file(hit)
            if file in seen:
                continue
            seen.add(file)
        rank += 1
        if from_file(hit, expected):
            return rank
    return None


@dataclass
class Measurement:
    sections_read: int
    chunks_stored: int
    ingest_seconds: float
    search_seconds: list[float] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)  # as search returns them
    file_ranks: list[int | None] = field(default_factory=list)  # one hit per file
    hits: list[list[dict]] = field(default_factory=list)  # every question's hits, to look into a miss
    hybrid: dict[str, list[int | None]] = field(default_factory=dict)  # hybrid ranks, by how the words were given
    full_text_found: dict[str, int] = field(default_factory=dict)  # questions whose words matched any section


def as_stored(source, service):
    """The sections to store, as ``sections ingest`` stores a folder of documents: each cut into
    chunks that fit the model's window (``sections.reading.chunking``, the CLI's defaults), so a long page is
    found by its passages instead of one vector averaged over all of them. A ``core`` without the
    chunker (the "before" checkout) stores one vector per section."""
    try:
        from sections.reading.chunking import ChunkPolicy, chunk_sections
    except ImportError:
        return source
    return chunk_sections(source, service.tokenizer, ChunkPolicy.for_model(service.limits.max_input_tokens))


HYBRID = {"ours: --hybrid, the question as typed": lambda question: question,
          "ours: --hybrid, its words joined by `or`": lambda question: " or ".join(question.split())}


def measure(folder: Path, questions: list[dict], database_url: str, k: int = K, hybrid: bool = False,
            model: str = MODEL) -> Measurement:
    """Read ``folder``, ingest it into ``database_url`` with the local ``model``, ask every question
    (``hybrid``: also through hybrid search, which older checkouts of ``core`` lack)."""
    service = EmbeddingService(model=model)  # loaded before the clock starts
    with SupabaseStore(database_url) as store:
        started = time.perf_counter()
        source = open_sources([folder])
        summary = store.ingest(as_stored(source, service), service, build_index=False)
        seconds = time.perf_counter() - started
        assert summary["failed_count"] == 0, summary.get("errors")
        stored = store.status(service.model)[service.model]["embedded"]
        result = Measurement(source.count, stored, seconds)
        for question in questions:
            started = time.perf_counter()
            hits = [dict(hit) for hit in store.search(question["question"], service, k=k)]
            result.search_seconds.append(time.perf_counter() - started)
            result.hits.append(hits)
            result.ranks.append(first_rank(hits, question["expected"]))
            result.file_ranks.append(first_rank(hits, question["expected"], one_per_file=True))
        vectors = [service.generate_embedding(q["question"]) for q in questions] if hybrid else []
        for name, words in (HYBRID.items() if hybrid else ()):  # the question's vector; its words, as given
            result.hybrid[name] = [first_rank([dict(hit) for hit in store.search_by_vector(
                vector, service.model, k, text=words(q["question"]))], q["expected"]) for vector, q in zip(vectors, questions)]
            with store.connection() as conn:
                result.full_text_found[name] = sum(bool(conn.execute(
                    "select exists (select 1 from sections where fts @@ sections_tsquery(%s))",
                    (words(q["question"]),)).fetchone()[0]) for q in questions)
    return result


def rates(ranks: list[int | None]) -> dict[str, float]:
    """top-1, top-3 and top-10 hit rates and the mean reciprocal rank (0 for a miss)."""
    n = len(ranks) or 1
    return {"top-1": sum(r == 1 for r in ranks) / n, "top-3": sum(r is not None and r <= 3 for r in ranks) / n,
            "top-10": sum(r is not None for r in ranks) / n, "MRR": sum(1 / r for r in ranks if r) / n}


def chosen(quick: bool) -> tuple[list[str], list[dict]]:
    """The nodes to copy and the questions whose doc is among them: all of both, or at quick size
    the first question of each topic plus other nodes, evenly spread, up to QUICK_DOCS."""
    nodes, questions = english_nodes(), load_questions()
    missing = sorted({q["expected"] for q in questions} - {f"{n}/en.md" for n in nodes})
    if missing:
        raise SystemExit(f"{QUESTIONS.name}: no such page in {CORPUS}: {', '.join(missing)}")
    if not quick:
        return nodes, questions
    firsts = list({q["topic"]: q for q in reversed(questions)}.values())
    wanted = [q["expected"].split("/")[0] for q in firsts]
    others = [n for n in nodes if n not in wanted]
    step = max(1, len(others) // max(1, QUICK_DOCS - len(wanted)))
    picked = sorted(set(wanted) | set(others[::step][:QUICK_DOCS - len(wanted)]))
    return picked, [q for q in questions if q["expected"].split("/")[0] in picked]


def float32_reference(folder: Path) -> Path | None:
    """The float32 graph derived from the safetensors (the torch extra), to hold the default's
    int8-stored weights against; None without the torch extra."""
    try:
        from sections.providers.onnx_export import export

        export(folder)
    except ImportError:
        return None
    return folder


def run(quick: bool = False) -> Result:
    from sections.postgres.embedded import EmbeddedPostgres  # here, so measure() imports on older checkouts too

    nodes, questions = chosen(quick)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(Path(tmp) / "data") as pg:
        folder = Path(tmp) / "docs"
        copy_english(folder, nodes)
        found = measure(folder, questions, fresh_database(pg, "retrieval"), hybrid=True)
        fp32 = float32_reference(Path(tmp) / f"{MODEL}-fp32")
        reference = measure(folder, questions, fresh_database(pg, "retrieval_fp32"), model=str(fp32)) if fp32 else None
    views = {"ours: hits as search returns them": found.ranks,
             "ours: one hit per file (later hits of a listed file dropped)": found.file_ranks, **found.hybrid}
    if reference:
        views["the same, float32 weights derived from the safetensors (torch extra)"] = reference.ranks
    rows = []
    for name, ranks in views.items():
        r, by = rates(ranks), (reference if reference and ranks is reference.ranks else found)
        rows.append([name, len(ranks), f"{r['top-1']:.2f}", f"{r['top-3']:.2f}", f"{r['top-10']:.2f}",
                     f"{r['MRR']:.2f}", by.sections_read, by.chunks_stored, f"{by.ingest_seconds:.1f}"])
    first, hybrid = rates(found.ranks), rates(next(iter(found.hybrid.values())))
    topics = sorted({q["topic"] for q in questions})
    return Result(
        key="retrieval",
        title=f"Retrieval: {len(questions)} hand-written questions over {len(nodes)} ComfyUI node docs, {MODEL}",
        conditions=(f"Corpus: the English pages of the {CORPUS} package ({len(nodes)} docs, "
                    f"{found.sections_read} sections read). Questions in a user's words, each with the doc that "
                    f"answers it, over {len(topics)} topics ({', '.join(topics)}). Read with open_sources, cut to the "
                    "model's window as `sections ingest` does, stored with SupabaseStore.ingest into the embedded "
                    f"Postgres, then store.search(question, k={K}), exact scan; the hybrid rows add the full-text "
                    "ranking (English, every word required unless joined by `or`), fused by reciprocal rank. A hit "
                    "is a result from the expected file (any section or chunk of it). "
                    f"Ingest: read → embed → store, one run; search: median {median(found.search_seconds) * 1000:.0f} ms "
                    "a question."),
        header=["ranking", "questions", "top-1", "top-3", "top-10", "MRR@10", "sections read", "chunks stored",
                "ingest s"],
        rows=rows,
        verdict=(f"{sum(r == 1 for r in found.ranks)} of {len(questions)} questions find their node's doc first, "
                 f"{sum(r is not None and r <= 3 for r in found.ranks)} within the first three "
                 f"(top-3 {first['top-3']:.2f}); --hybrid: top-1 {hybrid['top-1']:.2f}, top-3 {hybrid['top-3']:.2f}. "
                 "The full-text side found a section with all of a question's words for "
                 f"{next(iter(found.full_text_found.values()))} of {len(questions)} questions, one with any of them "
                 f"for {list(found.full_text_found.values())[-1]}."
                 + (f" The default's int8-stored weights: top-3 {first['top-3']:.2f}, float32 ones "
                    f"{rates(reference.ranks)['top-3']:.2f}." if reference else "")),
        plot={"top-3 hit rate": {name: rates(ranks)["top-3"] for name, ranks in views.items()}},
        plot_ylabel="hit rate",
    )
