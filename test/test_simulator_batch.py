"""The simulator's Batch API, driven over real HTTP by the official openai client as a user's
pipeline drives OpenAI's: upload, create, poll, read the output and error files, join on custom_id."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import numpy as np
import openai
import pytest
from openai import OpenAI
from openai.types import Batch

from sections.simulator.server import SimulatorProcess, expected_embedding

SMALL = "text-embedding-3-small"
SETTLED = {"completed", "failed", "expired", "cancelled"}


def client(sim: SimulatorProcess, api_key: str = "test") -> OpenAI:
    return OpenAI(api_key=api_key, base_url=sim.base_url, max_retries=0)


def line(custom_id: str, input, model: str = SMALL, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
            "body": {"model": model, "input": input, **body}}


def jsonl(lines: list) -> bytes:
    return b"".join((item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n" for item in lines)


def submit(api: OpenAI, lines: list, **options) -> Batch:
    uploaded = api.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    batch = api.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h",
                               **options)
    assert batch.status == "validating" and batch.input_file_id == uploaded.id
    return batch


def wait(api: OpenAI, batch_id: str, timeout: float = 60.0) -> Batch:
    deadline = time.monotonic() + timeout
    while (batch := api.batches.retrieve(batch_id)).status not in SETTLED:
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout} s"
        time.sleep(0.02)
    return batch


def results(api: OpenAI, file_id: str | None) -> dict[str, dict]:
    """A result file's lines by custom_id, in the order the file has them."""
    if file_id is None:
        return {}
    lines = [json.loads(text) for text in api.files.content(file_id).text.splitlines()]
    joined = {item["custom_id"]: item for item in lines}
    assert len(joined) == len(lines), "a custom_id appears twice in one result file"
    return joined


def vectors(body: dict) -> list[np.ndarray]:
    """The vectors of a reply body, by input position, whatever encoding was asked for."""
    decoded = {}
    for item in body["data"]:
        raw = item["embedding"]
        decoded[item["index"]] = (np.frombuffer(base64.b64decode(raw), dtype="<f4") if isinstance(raw, str)
                                  else np.array(raw, dtype=np.float32))
    return [decoded[index] for index in range(len(decoded))]


# --- a whole batch --------------------------------------------------------------------------------

def test_a_batch_returns_each_text_its_own_vector_in_any_order_joined_on_custom_id(sim):
    api = client(sim)
    bodies = {f"req-{i}": {"input": f"section number {i} of the batch"} for i in range(24)}
    bodies["many"] = {"input": ["first of several", "second of several", "héllo wörld 🌍"]}
    bodies["short"] = {"input": "cut to 256 dimensions", "dimensions": 256}
    bodies["b64"] = {"input": "sent back as base64", "encoding_format": "base64"}
    bodies["tokens"] = {"input": [[15339, 1917], [15339]]}
    batch = submit(api, [line(custom_id, **body) for custom_id, body in bodies.items()], metadata={"run": "t1"})

    done = wait(api, batch.id)
    assert done.status == "completed" and done.model == SMALL and done.metadata == {"run": "t1"}
    assert done.request_counts.model_dump() == {"total": 28, "completed": 28, "failed": 0}
    assert done.error_file_id is None and done.errors is None
    assert done.in_progress_at <= done.finalizing_at <= done.completed_at
    output = results(api, done.output_file_id)
    assert list(output) != list(bodies) and sorted(output) == sorted(bodies)  # every one, not in file order

    tokens = 0
    for custom_id, body in bodies.items():
        response = output[custom_id]["response"]
        assert response["status_code"] == 200 and output[custom_id]["error"] is None
        synchronous = api.embeddings.with_raw_response.create(model=SMALL, **body).http_response.json()
        got, want = vectors(response["body"]), vectors(synchronous)
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
        assert response["body"]["usage"] == synchronous["usage"] and response["body"]["model"] == SMALL
        tokens += synchronous["usage"]["prompt_tokens"]
    texts = {"req-3": "section number 3 of the batch", "short": "cut to 256 dimensions"}
    assert np.array_equal(vectors(output["req-3"]["response"]["body"])[0], expected_embedding(texts["req-3"]))
    assert np.allclose(vectors(output["short"]["response"]["body"])[0], expected_embedding(texts["short"], dimensions=256))
    assert done.usage.input_tokens == done.usage.total_tokens == tokens

    stored = api.files.retrieve(done.output_file_id)
    assert stored.purpose == "batch_output" and stored.bytes == len(api.files.content(stored.id).content)
    stats = sim.stats()  # the synchronous calls above counted apart from the batch
    assert stats["batches"] == 1 and stats["batch_requests"] == 28 and stats["batch_inputs"] == 31
    assert stats["batch_tokens"] == tokens and stats["inputs"] == 31 and stats["requests"] == 28


def test_the_statuses_come_in_order_and_request_counts_move_while_in_progress(sim):
    sim.configure(batch_delay=2.0)
    api = client(sim)
    batch = submit(api, [line(f"r{i}", f"text {i}") for i in range(10)])
    seen: list[tuple[str, int]] = []
    while (current := api.batches.retrieve(batch.id)).status not in SETTLED:
        seen.append((current.status, current.request_counts.completed))
        time.sleep(0.05)
    assert current.status == "completed" and current.request_counts.completed == 10
    statuses = [status for status, _ in seen]
    assert statuses == sorted(statuses, key=["validating", "in_progress", "finalizing"].index)
    moving = {completed for status, completed in seen if status == "in_progress"}
    assert len(moving & set(range(1, 10))) >= 3, f"counts seen while in progress: {sorted(moving)}"
    counts = [completed for _, completed in seen]
    assert counts == sorted(counts)
    assert current.created_at <= current.in_progress_at <= current.finalizing_at <= current.completed_at


# --- validation: the whole batch fails, with the lines at fault ------------------------------------

GOOD = line("a", "fine")


@pytest.mark.parametrize("lines, expected", [
    ([GOOD, b'{"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {', line("c", "x")],
     [("invalid_json_line", 2)]),
    ([GOOD, b"[1, 2, 3]"], [("invalid_json_line", 2)]),
    ([GOOD, b"", line("c", "x")], [("invalid_json_line", 2)]),
    ([GOOD, line("b", "x"), line("c", "x", model="text-embedding-3-large")], [("model_mismatch", 3)]),
    ([GOOD, {**line("b", "x"), "url": "/v1/chat/completions"}], [("url_mismatch", 2)]),
    ([GOOD, {**line("b", "x"), "method": "GET"}], [("invalid_request", 2)]),
    ([GOOD, line("b", "x"), line("a", "again")], [("duplicate_custom_id", 3)]),
    ([{**line("", "x")}, {"method": "POST", "url": "/v1/embeddings", "body": {"model": SMALL, "input": "x"}}],
     [("missing_required_parameter", 1), ("missing_required_parameter", 2)]),
    ([GOOD, {**line("b", "x"), "body": {"input": "no model"}}], [("missing_required_parameter", 2)]),
    ([b"not json", GOOD, line("a", "dup"), line("c", "x", model="text-embedding-ada-002")],
     [("invalid_json_line", 1), ("duplicate_custom_id", 3), ("model_mismatch", 4)]),
    ([line(f"r{i}", "x") for i in range(50_001)], [("too_many_tasks", None)]),
    ([line(f"r{i}", ["x"] * 2001) for i in range(25)], [("too_many_inputs", None)]),
], ids=["broken-json", "not-an-object", "blank-line", "mixed-models", "wrong-url", "wrong-method",
        "duplicate-id", "missing-id", "missing-model", "several-at-once", "50001-requests", "50025-inputs"])
def test_a_file_that_breaks_a_rule_fails_the_batch_with_the_lines_at_fault(sim, lines, expected):
    api = client(sim)
    failed = wait(api, submit(api, lines).id)
    assert failed.status == "failed" and failed.failed_at is not None and failed.in_progress_at is None
    assert [(error.code, error.line) for error in failed.errors.data] == expected
    assert all(error.message for error in failed.errors.data)
    assert failed.output_file_id is None and failed.error_file_id is None
    assert sim.stats()["batch_requests"] == 0  # nothing ran


@pytest.mark.parametrize("limits, fits, breaks, code", [
    ({"batch_max_requests": 3}, [line(f"r{i}", "x") for i in range(3)], [line(f"r{i}", "x") for i in range(4)],
     "too_many_tasks"),
    ({"batch_max_inputs": 5}, [line("a", ["x"] * 3), line("b", ["y", "z"])], [line("a", ["x"] * 3), line("b", ["y"] * 3)],
     "too_many_inputs"),
    ({"batch_max_bytes": 200}, [line("a", "x")], [line("a", "x" * 200)], "file_too_large"),
], ids=["requests", "inputs", "bytes"])
def test_each_limit_admits_a_file_at_the_limit_and_refuses_one_past_it(sim, limits, fits, breaks, code):
    sim.configure(**limits)
    api = client(sim)
    assert wait(api, submit(api, fits).id).status == "completed"
    refused = wait(api, submit(api, breaks).id)
    assert refused.status == "failed" and [error.code for error in refused.errors.data] == [code]


def test_a_file_broken_everywhere_reports_its_first_hundred_problems(sim):
    api = client(sim)
    failed = wait(api, submit(api, [b"{"] * 150).id)
    assert [error.line for error in failed.errors.data] == list(range(1, 101))


def test_an_empty_file_fails_the_batch(sim):
    api = client(sim)
    uploaded = api.files.create(file=("empty.jsonl", b""), purpose="batch")
    batch = api.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    assert [error.code for error in wait(api, batch.id).errors.data] == ["empty_file"]


# --- single requests fail alone ---------------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 500])
def test_a_poisoned_request_fails_alone_in_the_error_file(sim, status):
    sim.configure(poison=["POISON"], poison_status=status)
    api = client(sim)
    lines = [line(f"ok-{i}", f"harmless text {i}") for i in range(6)]
    lines.insert(3, line("bad", ["harmless", "contains POISON here"]))
    lines.append(line("too-wide", "a vector too wide", dimensions=4096))  # a body error shows at run time too
    done = wait(api, submit(api, lines).id)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 8, "completed": 6, "failed": 2}
    errors, output = results(api, done.error_file_id), results(api, done.output_file_id)
    assert sorted(errors) == ["bad", "too-wide"] and sorted(output) == [f"ok-{i}" for i in range(6)]
    assert errors["bad"]["response"]["status_code"] == status and errors["bad"]["error"] is None
    assert errors["too-wide"]["response"]["status_code"] == 400
    assert "dimensions" in errors["too-wide"]["response"]["body"]["error"]["message"]
    assert sim.stats()["batch_inputs"] == 6


# --- expiry and cancellation deliver what was done ----------------------------------------------------

def test_an_expired_batch_delivers_what_finished_and_lists_the_rest_as_batch_expired(sim):
    sim.configure(batch_expire_after=3)
    api = client(sim)
    lines = [line(f"r{i}", f"text {i}") for i in range(8)]
    expired = wait(api, submit(api, lines).id)
    assert expired.status == "expired" and expired.expired_at is not None and expired.completed_at is None
    assert expired.request_counts.model_dump() == {"total": 8, "completed": 3, "failed": 5}
    output, errors = results(api, expired.output_file_id), results(api, expired.error_file_id)
    assert len(output) == 3 and sorted([*output, *errors]) == sorted(item["custom_id"] for item in lines)
    for custom_id, result in output.items():
        text = next(item["body"]["input"] for item in lines if item["custom_id"] == custom_id)
        assert np.array_equal(vectors(result["response"]["body"])[0], expected_embedding(text))
    assert all(item["response"] is None and item["error"]["code"] == "batch_expired" for item in errors.values())


def test_a_cancelled_batch_stops_and_delivers_what_finished(sim):
    sim.configure(batch_delay=3.0)
    api = client(sim)
    lines = [line(f"r{i}", f"text {i}") for i in range(10)]
    batch = submit(api, lines)
    while api.batches.retrieve(batch.id).request_counts.completed < 2:
        time.sleep(0.02)
    cancelling = api.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = wait(api, batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    finished = cancelled.request_counts.completed
    assert 2 <= finished < 10 and cancelled.request_counts.failed == 10 - finished
    output, errors = results(api, cancelled.output_file_id), results(api, cancelled.error_file_id)
    assert len(output) == finished and len(errors) == 10 - finished
    assert sorted([*output, *errors]) == sorted(item["custom_id"] for item in lines)
    assert all(item["error"]["code"] == "batch_cancelled" for item in errors.values())
    with pytest.raises(openai.ConflictError):
        api.batches.cancel(batch.id)


# --- listing, files, refusals ---------------------------------------------------------------------

def test_batches_are_listed_newest_first_a_page_at_a_time(sim):
    api = client(sim)
    ids = [submit(api, [line("a", f"batch {i}")]).id for i in range(5)]
    page = api.batches.list(limit=2)
    assert [batch.id for batch in page.data] == ids[::-1][:2] and page.has_more
    assert [batch.id for batch in api.batches.list(limit=2, after=ids[3]).data] == [ids[2], ids[1]]
    assert [batch.id for batch in api.batches.list(limit=2)] == ids[::-1]  # the SDK follows the pages
    last = api.batches.list(limit=2, after=ids[1])
    assert [batch.id for batch in last.data] == [ids[0]] and not last.has_more
    sim.reset()
    assert api.batches.list().data == []
    with pytest.raises(openai.NotFoundError):
        api.batches.retrieve(ids[0])


def test_files_can_be_read_back_and_deleted(sim):
    api = client(sim)
    content = jsonl([line("a", "x")])
    uploaded = api.files.create(file=("mine.jsonl", content), purpose="batch")
    assert api.files.retrieve(uploaded.id).filename == "mine.jsonl"
    assert api.files.content(uploaded.id).content == content
    assert api.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        api.files.content(uploaded.id)


@pytest.mark.parametrize("call, error", [
    (lambda api: api.files.create(file=("notes.txt", b"{}"), purpose="batch"), openai.BadRequestError),
    (lambda api: api.files.create(file=("a.jsonl", b"{}"), purpose="fine-tune"), openai.BadRequestError),
    (lambda api: api.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h"),
     openai.BadRequestError),
    (lambda api: api.batches.create(input_file_id=api.files.create(file=("a.jsonl", b"{}"), purpose="batch").id,
                                    endpoint="/v1/chat/completions", completion_window="24h"), openai.BadRequestError),
    (lambda api: api.batches.retrieve("batch_nope"), openai.NotFoundError),
    (lambda api: api.batches.list(limit=0), openai.BadRequestError),
], ids=["not-jsonl", "other-purpose", "unknown-file", "other-endpoint", "unknown-batch", "bad-limit"])
def test_requests_the_api_would_refuse_are_refused(sim, call, error):
    with pytest.raises(error):
        call(client(sim))


def test_the_batch_endpoints_need_the_api_key(sim):
    sim.configure(api_key="right")
    with pytest.raises(openai.AuthenticationError):
        client(sim, api_key="wrong").batches.list()
    assert client(sim, api_key="right").batches.list().data == []


def test_sections_simulate_takes_the_batch_flags():
    """The flags a user types reach the server: a batch expires after the number of requests given."""
    process = subprocess.Popen([sys.executable, "-m", "sections.cli.app", "simulate", "--port", "0",
                                "--batch-expire-after", "2", "--batch-delay", "0.2"], stdout=subprocess.PIPE, text=True)
    try:
        base_url = process.stdout.readline().split()[-1]
        api = OpenAI(api_key="test", base_url=base_url, max_retries=0)
        batch = submit(api, [line(f"r{i}", f"text {i}") for i in range(5)])
        expired = wait(api, batch.id)
        assert expired.status == "expired" and expired.request_counts.completed == 2
    finally:
        process.terminate()
        process.wait(timeout=10)
