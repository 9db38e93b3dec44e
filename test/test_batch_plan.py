"""Batch files planned within every limit, result lines joined on custom_id and matched by index, and
a crash between creating a batch and recording it: the parts of the Batch API path, one at a time."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from sections.batch.plan import plan_files
from sections.batch.records import (BatchLimits, BatchState, BatchStatus, FailureKind, JobItem, PendingItem, RequestResult,
                                Slot, request_number)
from sections.batch.results import CollectedJob
from sections.engine.batching import Limits
from core.embedding_service import EmbeddingService
from sections.pipeline.batch import BatchOptions
from sections.providers.openai_batch import parse_line
from sections.records import EmbeddingOutcome
from sections.simulator.server import expected_embedding
from sections.engine.tokens import LongInputPolicy, TiktokenTokenizer

BODY = {"model": "text-embedding-3-small", "encoding_format": "base64"}
TOKENIZER = TiktokenTokenizer()


def plan(texts: dict[str, str], limits: BatchLimits = BatchLimits(), request_limits: Limits = Limits(), **options):
    ready: list[EmbeddingOutcome] = []
    items = [(PendingItem(sid, sid.encode()), text) for sid, text in texts.items()]
    files = list(plan_files(items, TOKENIZER, request_limits, limits, LongInputPolicy.AVERAGE, BODY, ready, **options))
    return files, ready


def lines(planned) -> list[dict]:
    return [json.loads(raw) for raw in planned.content.read().splitlines()]


def test_every_piece_of_every_section_is_where_its_slots_say_and_identical_texts_are_sent_once():
    long_text = " ".join(f"token{i}" for i in range(9000))
    texts = {f"s{i}": f"text number {i}" for i in range(50)} | {"twin-a": "same", "twin-b": "same", "long": long_text}
    files, ready = plan(texts, window=16)
    assert not ready and len(files) == 1
    requests = lines(files[0])
    assert [request_number(line["custom_id"]) for line in requests] == list(range(len(requests)))
    assert all(line["method"] == "POST" and line["url"] == "/v1/embeddings" and line["body"]["model"] == BODY["model"]
               for line in requests)
    sent = [line["body"]["input"] for line in requests]
    items = {item.section_id: item for item in files[0].items}
    assert set(items) == set(texts)
    for sid, item in items.items():
        pieces = [sent[slot.request][slot.position] for slot in item.slots]
        if sid == "long":
            expected = TOKENIZER.split(long_text, 8191)
            assert pieces == [piece for piece, _ in expected] and [s.weight for s in item.slots] == [n for _, n in expected]
        else:
            assert pieces == [texts[sid]] and item.slots[0].weight == TOKENIZER.count(texts[sid])
    assert items["twin-a"].slots == items["twin-b"].slots  # one input for both
    assert files[0].inputs == sum(map(len, sent)) == 50 + 1 + len(items["long"].slots)
    files[0].content.seek(0)
    assert files[0].bytes == len(files[0].content.read())


@pytest.mark.parametrize("limits", [BatchLimits(max_inputs=7), BatchLimits(max_requests=2),
                                    BatchLimits(max_bytes=600)], ids=["inputs", "requests", "bytes"])
def test_files_stay_within_each_limit_and_a_section_never_spans_two(limits):
    texts = {f"s{i}": f"section {i} " + "word " * (i % 5) for i in range(40)}
    files, ready = plan(texts, limits, Limits(max_inputs=3), window=4)
    assert not ready and len(files) > 2
    seen = []
    for planned in files:
        requests = lines(planned)
        assert planned.requests == len(requests) <= limits.max_requests
        assert planned.inputs == sum(len(line["body"]["input"]) for line in requests) <= limits.max_inputs
        planned.content.seek(0)
        assert planned.bytes == len(planned.content.read()) <= limits.max_bytes
        assert all(slot.request < len(requests) for item in planned.items for slot in item.slots)
        seen += [item.section_id for item in planned.items]
    assert sorted(seen) == sorted(texts)


def test_openais_limits_are_the_defaults_and_50001_inputs_make_two_files():
    assert BatchLimits() == BatchLimits(max_requests=50_000, max_inputs=50_000, max_bytes=200 * 1024 * 1024)
    files, ready = plan({f"s{i}": f"t{i}" for i in range(50_001)})
    assert not ready and len(files) == 2
    assert files[0].inputs <= 50_000 and files[0].inputs + files[1].inputs == 50_001
    assert all(planned.bytes <= 200 * 1024 * 1024 and planned.requests <= 50_000 for planned in files)


def test_isolating_puts_one_input_in_each_request_and_unsendable_sections_are_told_once():
    texts = {"a": "first", "b": "second", "c": "third", "blank": "  "}
    files, ready = plan(texts, isolate=True)
    assert [line["body"]["input"] for line in lines(files[0])] == [["first"], ["second"], ["third"]]
    assert [(outcome.key.section_id, outcome.error) for outcome in ready] == [("blank", "empty text")]
    # a window too big for one file is planned again in halves: its refusals are still told once
    files, ready = plan(texts | {f"x{i}": f"more text {i}" for i in range(20)}, BatchLimits(max_inputs=4), window=64)
    assert len(ready) == 1 and sum(planned.inputs for planned in files) == 23


def _line(request: int, vectors: list[np.ndarray], order: list[int] | None = None) -> bytes:
    data = [{"index": i, "embedding": base64.b64encode(vectors[i].astype("<f4").tobytes()).decode()}
            for i in (order or range(len(vectors)))]
    body = {"data": data, "usage": {"prompt_tokens": 3 * len(vectors)}}
    return json.dumps({"custom_id": f"req-{request}", "response": {"status_code": 200, "body": body}}).encode()


def test_result_lines_are_matched_by_index_and_a_reply_that_does_not_add_up_is_a_transient_failure():
    vectors = [expected_embedding(f"text {i}", dimensions=8) for i in range(3)]
    result = parse_line(_line(4, vectors, order=[2, 0, 1]), {4: 3}, 8)
    assert result.request == 4 and result.tokens == 9
    assert all(np.array_equal(got, want) for got, want in zip(result.vectors, vectors))
    short = parse_line(_line(4, vectors[:2]), {4: 3}, 8)
    assert short.vectors is None and short.kind is FailureKind.TRANSIENT and "2 embeddings for 3 inputs" in short.reason
    assert parse_line(_line(9, vectors), {4: 3}, 8) is None  # nothing waits on it
    refused = {"custom_id": "req-4", "response": {"status_code": 400, "body": {"error": {"message": "bad input"}}}}
    assert parse_line(json.dumps(refused), {4: 3}, 8)[3:] == (FailureKind.REJECTED, "rejected (400): bad input")
    broken = {"custom_id": "req-4", "response": {"status_code": 500, "body": {"error": {"message": "oops"}}}}
    assert parse_line(json.dumps(broken), {4: 3}, 8).kind is FailureKind.TRANSIENT
    expired = {"custom_id": "req-4", "response": None, "error": {"code": "batch_expired", "message": "late"}}
    assert parse_line(json.dumps(expired), {4: 3}, 8)[3:] == (FailureKind.EXPIRED, "batch_expired: late")


def test_a_job_gives_each_item_its_vector_or_the_reason_of_its_own_request():
    v = [expected_embedding(f"piece {i}", dimensions=4) for i in range(4)]
    items = [JobItem("one", b"d1", (Slot(1, 0, 5),), 1), JobItem("twin", b"d2", (Slot(1, 0, 5),), 1),
             JobItem("long", b"d3", (Slot(0, 1, 10), Slot(1, 1, 30)), 1), JobItem("lost", b"d4", (Slot(2, 0, 5),), 1),
             JobItem("refused", b"d5", (Slot(3, 0, 5),), 2)]
    answers = {1: RequestResult(1, [v[0], v[1]], 8), 0: RequestResult(0, [v[3], v[2]], 9),
               3: RequestResult(3, None, 0, FailureKind.REJECTED, "rejected (400): no")}

    def read(file_id, sizes):
        assert sizes == {0: 2, 1: 2, 2: 1, 3: 1}
        yield from ([answers[1], answers[0]] if file_id == "out" else [answers[3]])

    job = CollectedJob(items, BatchState("b", BatchStatus.EXPIRED, 4, 2, 2, "out", "err"), read)
    results = {result.item.section_id: result for result in job}
    assert np.array_equal(results["one"].vector, v[0]) and np.array_equal(results["twin"].vector, v[0])
    mean = v[2].astype(np.float64) * 10 + v[1].astype(np.float64) * 30
    assert np.allclose(results["long"].vector, (mean / np.linalg.norm(mean)).astype(np.float32))
    assert results["lost"].kind is FailureKind.EXPIRED and results["lost"].vector is None
    assert (results["refused"].kind, results["refused"].alone) == (FailureKind.REJECTED, True)
    assert job.billed_tokens == 17


class CrashAfterCreating:
    """The real Batch API side, but the process "dies" right after the provider created the batch,
    before the run could record its id."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def create(self, input_file_id, job_id):
        self.real.create(input_file_id, job_id)
        raise KeyboardInterrupt


def test_a_crash_between_creating_a_batch_and_recording_it_pays_nothing_twice(sim, store, db):
    service = EmbeddingService(model="text-embedding-3-small", base_url=sim.base_url, api_key="k", dimensions=8)
    sections = [{"id": f"s{i}", "content": f"text {i}"} for i in range(100)]
    crashing = type("Crashing", (), {"settings": service.settings, "total_tokens": property(lambda _: 0),
                                     "stream_embeddings": service.stream_embeddings,
                                     "generate_embedding": service.generate_embedding,
                                     "batch_api": lambda _, limits=None: CrashAfterCreating(service.batch_api(limits))})()
    with pytest.raises(KeyboardInterrupt):
        store.batch_ingest(sections, crashing)
    assert db.execute("select status, batch_id from section_batch_jobs").fetchall() == [("submitting", None)]
    assert sim.stats()["batches"] == 1

    summary = store.batch_ingest(sections, service, options=BatchOptions(poll_initial_s=0.05))
    assert summary["success_count"] == 100 and summary["jobs_submitted"] == 0 and sim.stats()["batches"] == 1
    assert db.execute("select status, written from section_batch_jobs").fetchall() == [("completed", 100)]
    for section_id, vector in db.execute("select section_id, embedding from section_embeddings").fetchall():
        assert np.allclose(np.asarray(vector), expected_embedding(f"text {section_id[1:]}", dimensions=8), atol=1e-6)
