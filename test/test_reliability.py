"""Reliability: crashes, database faults, provider faults, bad input, hostile input and secrets.

Everything runs against the real pieces: the ``sections`` CLI as a subprocess (or in-process through
typer's runner), the simulator over HTTP, the embedded Postgres. "Exactly once" is always proven
the same way (``bench.reliability.check_store``): every stored vector equals the simulator's vector
of its own section's text, no orphan or duplicate rows, and a rerun is billed exactly the tokens
of the sections that were not stored yet.

The crash test here is the fast variant (2,000 sections, a few trials); the long one is
``python -m bench.reliability --long``. Set ``RELIABILITY_SEED`` to replay other kill moments.
Properties of the packer, dispatcher and result matcher are in test_properties.py.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import psutil
import psycopg
import pytest
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st
from typer.testing import CliRunner

from sections.cli.app import app
from sections.engine.dispatch import RetryPolicy
from core.embedding_service import EmbeddingService
from sections.engine.errors import ProviderFatalError
from sections.reading.sample_corpus import stdlib_sections
from sections.simulator.server import SimulatorConfig, expected_embedding
from sections.reading.sources import open_sources
from sections.reading.chunking import fold_small
from core.supabase_store import SupabaseStore, section_text


def _load_harness():
    """``bench/reliability.py``: importable as ``bench.reliability`` from the repository root, and
    loaded from its path otherwise (``bench`` is not an installed package)."""
    try:
        import bench.reliability as module
        return module
    except ImportError:
        path = Path(__file__).resolve().parents[1] / "bench" / "reliability.py"
        spec = importlib.util.spec_from_file_location("bench_reliability", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module


rel = _load_harness()

MODEL = rel.MODEL
DIMS = rel.DIMS
SEED = int(os.environ.get("RELIABILITY_SEED", "20240601"))
FAST_RETRY = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.05)
runner = CliRunner()


def cli(*args, env=None, input=None):
    """The CLI in-process; an exception that escapes the command fails the test (no silent traceback)."""
    return runner.invoke(app, [str(a) for a in args], env=env, input=input, catch_exceptions=False)


def cli_options(sim, database_url, model=MODEL):
    return ["--model", model, "--base-url", sim.base_url, "--database-url", database_url, "--dimensions", str(DIMS)]


def corpus_of(sections):
    return {s["id"]: s for s in sections}


# =====================================================================================================
# 1. Crash and resume: kill -9 at a random moment, rerun, everything exactly once
# =====================================================================================================


@pytest.fixture(scope="module")
def crash_corpus(tmp_path_factory):
    sections = stdlib_sections(2000, tokens_per_section=200)
    path = rel.write_jsonl(tmp_path_factory.mktemp("crash") / "corpus.jsonl", sections)
    return path, sections, rel.section_tokens(sections)


CRASH_CONCURRENCY = 2
# ~2.3 s of embedding for the 400k-token corpus at concurrency 2: 13 requests in 7 waves, so a kill
# can land before, between and after the writer's commits (one per 1,000 sections).
CRASH_LATENCY = {"latency_base": 0.05, "latency_per_token": 1e-5}


@pytest.mark.parametrize("trial, mode, kills", [(0, "startup", 1), (1, "embedding", 1), (2, "embedding", 2)])
def test_kill_9_at_a_random_moment_then_a_rerun_stores_every_section_exactly_once(
        trial, mode, kills, sim, database_url, crash_corpus):
    """``startup``: killed within 1.5 s of spawn; ``embedding``: within 2.4 s of its first request. With
    two kills, the second lands in the rerun of the first. See bench/reliability.py for every check."""
    path, sections, tokens = crash_corpus
    rng = random.Random(SEED * 1000 + trial)
    result = rel.crash_trial(sim, database_url, path, sections, tokens, rng, kills=kills,
                             concurrency=CRASH_CONCURRENCY, latency=CRASH_LATENCY, startup_window=1.5,
                             embed_window=2.4, modes=(mode,))
    context = f"RELIABILITY_SEED={SEED} trial {trial}: stored at the kill {result.stored_at_kills}"
    assert result.problems == [], context
    assert result.lost == result.duplicated == result.misplaced == result.orphans == 0, context
    # the rerun embedded exactly what was missing: nothing twice
    assert result.final_tokens == result.final_expected_tokens, context
    assert result.vectors_checked >= len(sections)


def test_a_crash_loses_only_the_requests_in_flight_not_replies_received_seconds_ago(sim, database_url, crash_corpus):
    path, sections, _ = crash_corpus
    sim.configure(latency_base=0.7)  # one ~160-section request every 0.7 s at concurrency 1
    command = rel.ingest_command(path, sim.base_url, database_url, concurrency=1)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=rel.child_env(), cwd=rel.ROOT)
    try:
        first_reply_at = None
        while process.poll() is None:  # kill once 4 replies (~640 sections, under one writer batch) are in
            answered = sim.stats()["by_status"].get("200", 0)
            if answered and first_reply_at is None:
                first_reply_at = time.monotonic()
            if answered >= 4:
                break
            time.sleep(0.005)
        assert process.poll() is None, "the run ended before the kill"
        first_reply_age = time.monotonic() - first_reply_at
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rel.wait_quiet(sim, database_url)
    check = rel.check_store(database_url, corpus_of(sections))
    assert check.problems(complete=False) == []
    assert first_reply_age > 2.0  # the writer's flush_interval is 1 s
    # the first reply (~160 paid vectors) arrived > 2 s before the kill: it must have been committed
    assert len(check.stored_ids) > 0, f"nothing stored although the first reply arrived {first_reply_age:.1f} s ago"


# =====================================================================================================
# 2. Database faults
# =====================================================================================================

DB_SECRET = "hunter2-Db-Secret-77"


@pytest.fixture
def one_section_file(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text('{"id": "a", "title": "t", "content": "some content"}\n')
    return path


def _with_password(url: str, password: str = DB_SECRET) -> str:
    """An embedded-Postgres URL with a password in it (the socket's trust auth ignores it)."""
    assert "postgres:@" in url, url
    return url.replace("postgres:@", f"postgres:{password}@", 1)


@pytest.mark.parametrize("make_url", [
    pytest.param(lambda pg: f"postgresql://admin:{DB_SECRET}@127.0.0.1:1/nowhere", id="port-refused"),
    pytest.param(lambda pg: f"postgresql://admin:{DB_SECRET}@no-such-host.invalid:5432/db", id="unknown-host"),
    pytest.param(lambda pg: _with_password(pg.url_for("no_such_database")), id="no-such-database"),
    pytest.param(lambda pg: f"postgresql://admin:{DB_SECRET}@/db?host=/no/such/socket/dir", id="no-socket"),
    pytest.param(lambda pg: f"postgresql://admin:{DB_SECRET}@127.0.0.1:99999/db", id="invalid-port"),
    pytest.param(lambda pg: f"postgresql://admin:{DB_SECRET}@[::1:5432/db", id="malformed-uri"),
    pytest.param(lambda pg: f"host=/no/such/dir password={DB_SECRET} dbname=x", id="keyword-conninfo"),
    pytest.param(lambda pg: f"postgresql://admin:{DB_SECRET}@127.0.0.1:1/db?password={DB_SECRET}", id="password-param"),
    pytest.param(lambda pg: f"mysql://admin:{DB_SECRET}@localhost/db", id="not-postgres"),
])
def test_a_wrong_database_url_exits_1_with_a_clear_error_before_any_token_is_spent(
        make_url, embedded_pg, sim, one_section_file):
    url = make_url(embedded_pg)
    result = cli("ingest", one_section_file, *cli_options(sim, url))
    assert result.exit_code == 1
    assert "error: cannot open" in result.output
    assert DB_SECRET not in result.output and "Traceback" not in result.output
    assert sim.stats()["requests"] == 0


def test_a_database_password_with_a_question_mark_never_appears_in_the_error(sim, one_section_file):
    password = "Xy?z9-" + DB_SECRET
    result = cli("ingest", one_section_file, *cli_options(sim, f"postgresql://admin:{password}@127.0.0.1:1/db"))
    assert result.exit_code == 1 and "error: cannot open" in result.output
    assert DB_SECRET not in result.output


def test_postgres_restarted_mid_run_then_a_rerun_finishes_exactly_once(sim, tmp_path, crash_corpus):
    sections = crash_corpus[1][:800]
    path = rel.write_jsonl(tmp_path / "s.jsonl", sections)
    # concurrency 1, 0.3 s a request: Postgres goes down after the 2nd request, comes back 0.5 s later
    stop = rel.postgres_stop_trial(sim, tmp_path / "own-pg", path, sections, restart_after=0.5,
                                   latency={"latency_base": 0.3}, after_requests=2)
    assert stop.returncode in (0, 1), stop.stderr[-3000:]
    assert stop.problems == []
    assert stop.final.missing == stop.final.duplicated == stop.final.misplaced == stop.final.orphans == 0


def test_connections_terminated_mid_run_stop_or_finish_and_a_rerun_completes(sim, database_url, crash_corpus):
    path, sections, tokens = crash_corpus
    sim.configure(**CRASH_LATENCY)
    command = rel.ingest_command(path, sim.base_url, database_url, concurrency=CRASH_CONCURRENCY)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=rel.child_env(), cwd=rel.ROOT)
    terminated = 0
    try:
        while process.poll() is None and sim.stats()["requests"] == 0:
            time.sleep(0.005)
        with psycopg.connect(database_url, autocommit=True) as admin:
            for _ in range(6):
                time.sleep(0.25)
                terminated += admin.execute(
                    "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity "
                    "where datname = current_database() and pid <> pg_backend_pid() "
                    "and backend_type = 'client backend'").fetchone()[0]
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert terminated > 0
    assert process.returncode in (0, 1), stderr[-3000:]
    rel.wait_quiet(sim, database_url)
    corpus = corpus_of(sections)
    partial = rel.check_store(database_url, corpus)
    assert partial.problems(complete=False) == []

    sim.configure(latency_base=0.0, latency_per_token=0.0)
    sim.reset()
    rerun = subprocess.run(command, capture_output=True, text=True, env=rel.child_env(), cwd=rel.ROOT, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sim.stats()["tokens"] == sum(t for i, t in tokens.items() if i not in partial.stored_ids)
    final = rel.check_store(database_url, corpus)
    assert final.problems(complete=True) == []


REFUSE_WRITES = """
create function refuse_writes() returns trigger language plpgsql as $$
begin
    raise exception 'could not extend file "base/16384/16385": No space left on device' using errcode = 'disk_full';
end $$;
create trigger refuse_writes before insert or update on section_embeddings
    for each statement execute function refuse_writes();
"""


def test_a_database_that_refuses_writes_mid_run_stops_the_run_and_a_rerun_finishes(sim, database_url, db, tmp_path):
    sections = stdlib_sections(300, tokens_per_section=60)
    path = rel.write_jsonl(tmp_path / "s.jsonl", sections)
    db.execute(REFUSE_WRITES)  # like a full disk: every write of a vector fails
    command = rel.ingest_command(path, sim.base_url, _with_password(database_url))
    first = subprocess.run(command, capture_output=True, text=True, env=rel.child_env(), cwd=rel.ROOT, timeout=120)
    assert first.returncode == 1
    assert "No space left on device" in first.stderr
    assert DB_SECRET not in first.stdout + first.stderr
    assert db.execute("select count(*) from section_embeddings").fetchone()[0] == 0
    assert db.execute("select count(*) from embedding_failures").fetchone()[0] == 0  # nothing false recorded

    db.execute("drop trigger refuse_writes on section_embeddings")
    sim.reset()
    second = subprocess.run(command, capture_output=True, text=True, env=rel.child_env(), cwd=rel.ROOT, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sim.stats()["tokens"] == sum(rel.section_tokens(sections).values())
    assert rel.check_store(database_url, corpus_of(sections)).problems(complete=True) == []


def test_a_database_error_mid_run_is_a_clear_error_not_a_traceback(sim, database_url, db, one_section_file):
    db.execute(REFUSE_WRITES)
    result = runner.invoke(app, ["ingest", str(one_section_file), *cli_options(sim, database_url)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}"
    assert "error:" in result.output


# =====================================================================================================
# 3. Provider faults: each run ends all done or stopped cleanly with a report; a rerun finishes exactly once
# =====================================================================================================


@pytest.fixture(scope="module")
def fault_sections():
    sections = stdlib_sections(400, tokens_per_section=120)
    return sections, rel.section_tokens(sections)


FAULTS = {
    "connection-resets": ({"drop_rate": 0.3}, {}),
    "hung-replies": ({"slow_rate": 0.3, "slow_seconds": 3.0}, {"timeout": 0.3}),
    "5xx-storm": ({"error_rate": 0.5}, {}),
    "429-storm-with-headers": ({"rate_limit_storm": 0.5, "storm_retry_ms": 20}, {}),
    "429-storm-without-headers": ({"rate_limit_storm": 0.4, "rate_headers": False}, {}),
    # two requests of ~25k tokens at concurrency 2: the first fits the quota, the second does not
    "quota-exhausted-mid-run": ({"quota_tokens": 30_000}, {"concurrency": 2}),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_provider_faults_end_cleanly_and_a_rerun_finishes_exactly_once(fault, sim, store, db, database_url,
                                                                       fault_sections):
    sections, tokens = fault_sections
    corpus = corpus_of(sections)
    config, options = FAULTS[fault]
    sim.configure(**config)
    service = EmbeddingService(api_key="test", base_url=sim.base_url, dimensions=DIMS, retry=FAST_RETRY, **options)
    try:
        result, stopped = store.ingest(sections, service), None
    except ProviderFatalError as error:
        result, stopped = error.result, error
    finally:
        service.close()

    check = rel.check_store(database_url, corpus)
    failure_rows = dict(db.execute("select section_id, reason from embedding_failures").fetchall())
    assert check.duplicated == check.misplaced == check.orphans == check.strangers == 0
    assert result["success_count"] == len(check.stored_ids)
    assert set(result["failed_ids"]) == set(failure_rows) and not set(failure_rows) & check.stored_ids
    if stopped is not None:  # stopped cleanly, with a report
        assert fault.startswith("quota") and "quota" in str(stopped)
        assert 0 < result["success_count"] < len(sections) and failure_rows == {}  # nothing false recorded
    else:  # all done: each section stored or failed with its reason
        assert result["success_count"] + result["failed_count"] == len(sections)
        assert all(reason for reason in failure_rows.values())
        if fault == "quota-exhausted-mid-run":
            pytest.fail("the quota was meant to run out mid-run")

    sim.configure(**dataclasses.asdict(SimulatorConfig()))
    sim.reset()
    with EmbeddingService(api_key="test", base_url=sim.base_url, dimensions=DIMS, retry=FAST_RETRY) as service:
        rerun = store.ingest(sections, service)
    stored = check.stored_ids
    assert rerun["skipped_count"] == len(stored) and rerun["success_count"] == len(sections) - len(stored)
    assert rerun["failed_count"] == 0
    assert sim.stats()["tokens"] == sum(t for i, t in tokens.items() if i not in stored)
    assert sim.stats()["embedded_inputs_total"] == len(sections) - len(stored)
    assert rel.check_store(database_url, corpus).problems(complete=True) == []


def test_a_faulty_provider_through_the_cli_exits_0_or_2_and_a_rerun_exits_0(sim, database_url, db, tmp_path,
                                                                             fault_sections):
    sections, tokens = fault_sections
    path = rel.write_jsonl(tmp_path / "s.jsonl", sections)
    sim.configure(error_rate=0.4, drop_rate=0.1, shuffle=True)  # the CLI retries with its default backoff
    first = cli("ingest", path, *cli_options(sim, database_url), "--json")
    assert first.exit_code in (0, 2)
    summary = json.loads(first.stdout)
    stored = {r[0] for r in db.execute("select section_id from section_embeddings")}
    assert summary["embedded"] == len(stored) and summary["embedded"] + summary["failed"] == len(sections)
    assert (first.exit_code == 2) == (summary["failed"] > 0)
    assert db.execute("select count(*) from embedding_failures").fetchone()[0] == summary["failed"]

    sim.configure(error_rate=0.0, drop_rate=0.0)
    sim.reset()
    second = cli("ingest", path, *cli_options(sim, database_url), "--json")
    assert second.exit_code == 0
    assert json.loads(second.stdout)["embedded"] == len(sections) - len(stored)
    assert sim.stats()["tokens"] == sum(t for i, t in tokens.items() if i not in stored)
    assert rel.check_store(database_url, corpus_of(sections)).problems(complete=True) == []


# =====================================================================================================
# 5. Bad input: random and malformed files of every format through the real CLI
# =====================================================================================================

# Text Postgres can store (NUL and lone surrogates are refused at validation: tested below).
safe_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
safe_text = st.text(safe_chars, max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | safe_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(safe_text, inner, max_size=3),
    max_leaves=6,
)
records = st.fixed_dictionaries({}, optional={
    "id": st.one_of(safe_text, st.integers(-5, 10**6), json_values),
    "title": st.one_of(safe_text, json_values),
    "content": st.one_of(safe_text, safe_text.map(lambda t: t + " some words"), json_values),
    "metadata": st.one_of(st.dictionaries(safe_text, json_values, max_size=3), json_values),
    "extra": json_values,
})
nonblank = st.builds(lambda a, b: f"{a.strip()}x{b}", safe_text, safe_text)
valid_records = st.fixed_dictionaries(
    {"id": st.one_of(nonblank, st.integers(0, 10**6)), "content": nonblank},
    optional={"title": safe_text, "metadata": st.dictionaries(safe_text, json_values, max_size=3)})
any_record = st.one_of(valid_records, valid_records, records)
garbage_line = st.one_of(safe_text, st.sampled_from(['{"id": "a", "content": ', "[1, 2", "{}", "null", '"str"',
                                                     '{"id": "x", "content": "y"} trailing', "\ufeff{}", "{'a': 1}"]))


def _jsonl(draw):
    encoded = st.builds(json.dumps, any_record, ensure_ascii=st.booleans())
    lines = draw(st.lists(st.one_of(encoded, encoded, json_values.map(json.dumps), garbage_line), max_size=6))
    return "\n".join(lines).encode("utf-8")


def _json(draw):
    kind = draw(st.sampled_from(["array", "object", "value", "text"]))
    if kind == "array":
        doc = json.dumps(draw(st.lists(st.one_of(any_record, json_values), max_size=5)),
                         indent=draw(st.sampled_from([None, 1])), ensure_ascii=draw(st.booleans()))
    elif kind == "object":
        doc = json.dumps({**draw(st.dictionaries(safe_text, json_values, max_size=2)),
                          "sections": draw(st.lists(any_record, max_size=4))})
    elif kind == "value":
        doc = json.dumps(draw(json_values))
    else:
        doc = draw(safe_text)
    return doc.encode("utf-8")


def _csv(draw):
    columns = draw(st.one_of(
        st.permutations(["id", "title", "content"]).flatmap(lambda c: st.lists(safe_text, max_size=2).map(
            lambda extra: list(c) + extra)),
        st.lists(st.one_of(st.sampled_from(["id", "title", "content", "lang"]), safe_text), max_size=5)))
    cell = st.one_of(nonblank, safe_text, st.sampled_from(['"', '""', '"a,b"', ",", "\n"]))
    rows = draw(st.lists(st.one_of(st.lists(nonblank, min_size=len(columns), max_size=len(columns)),
                                   st.lists(cell, max_size=6)), max_size=5))

    def quote(cell):
        return cell if draw(st.booleans()) else '"' + cell.replace('"', '""') + '"'

    lines = [",".join(columns)] + [",".join(quote(c) for c in row) for row in rows]
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines).encode("utf-8")


def _markdown(draw):
    parts = draw(st.lists(st.one_of(safe_text, st.sampled_from(["# Title", "## Sub", "```", "~~~", "#", "### ###",
                                                                 "    # indented", "text under"])), max_size=8))
    return "\n".join(parts).encode("utf-8")


def _text(draw):
    return draw(safe_text).encode("utf-8")


BUILDERS = {"jsonl": _jsonl, "json": _json, "csv": _csv, "md": _markdown, "txt": _text}


@st.composite
def source_files(draw, fmt):
    data = BUILDERS[fmt](draw)
    for _ in range(draw(st.integers(0, 3))):  # byte-level damage: cut, insert (bad UTF-8 too), duplicate
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["cut", "insert", "repeat"]))
        if action == "cut":
            data = data[:where] + data[where + draw(st.integers(1, 8)):]
        elif action == "insert":
            data = data[:where] + draw(st.binary(min_size=1, max_size=4)) + data[where:]
        else:
            data = data + b"\n" + data
    return data


_LONE_SURROGATE = re.compile(rb"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})"  # a high one alone
                             rb"|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}")  # a low one alone


def _known_unvalidated(data: bytes) -> bool:
    """NUL or lone surrogates: what sources.py does not catch (test_nul_and_lone_surrogates_...)."""
    lowered = data.lower()
    return b"\x00" in data or b"\\u0000" in lowered or _LONE_SURROGATE.search(lowered) is not None


def _empty_tables(db):
    db.execute("truncate sections, section_embeddings, embedding_failures, section_leases")


@pytest.mark.parametrize("fmt", list(BUILDERS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_random_and_malformed_files_exit_1_with_file_and_line_or_ingest_cleanly(fmt, data, sim, database_url, db,
                                                                                tmp_path):
    content = data.draw(source_files(fmt), label="file bytes")
    assume(not _known_unvalidated(content))
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(content)
    _empty_tables(db)
    sim.reset()
    result = cli("ingest", path, *cli_options(sim, database_url), "--json")
    event(f"exit {result.exit_code}")
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1 and "no sections read" in result.output:  # valid, but nothing in it
        assert open_sources([path]).count == 0 and sim.stats()["requests"] == 0
    elif result.exit_code == 1:
        assert re.search(re.escape(str(path)) + r":\d+: ", result.output), result.output
        assert "nothing was written" in result.output
        assert db.execute("select (select count(*) from sections) + (select count(*) from section_embeddings)"
                          ).fetchone()[0] == 0
        assert sim.stats()["requests"] == 0
    else:
        expected = {s.id: s for s in fold_small(open_sources([path]))}  # tiny sections join a neighbour
        stored = dict(db.execute("select id, content from sections").fetchall())
        assert stored == {i: s.content for i, s in expected.items()}
        assert db.execute("select count(*) from section_embeddings").fetchone()[0] == len(expected)


def test_malformed_files_of_every_format_at_once_exit_1_without_traceback_as_a_subprocess(sim, database_url, db,
                                                                                          tmp_path):
    bad = {
        "a.jsonl": b'{"id": "a", "content": "ok"}\n{"id": "b", "content": \n',
        "b.json": b'[{"id": "c", "content": "ok"},\n {"id": 5.5.5}]',
        "c.csv": b'id,title,content\nd,t,"unterminated\n',
        "d.md": b"# Heading\n\nbad byte \xff here\n",
        "e.txt": b"fine\n\xc3\x28 invalid continuation\n",
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    command = rel.ingest_command(tmp_path / "a.jsonl", sim.base_url, database_url)
    command[command.index(str(tmp_path / "a.jsonl")) + 1:1] = [str(tmp_path / n) for n in list(bad)[1:]]
    done = subprocess.run(command, capture_output=True, text=True, env=rel.child_env(), cwd=rel.ROOT, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    for name, line in (("a.jsonl", 2), ("b.json", 2), ("c.csv", 2), ("d.md", 3), ("e.txt", 2)):
        assert f"{tmp_path / name}:{line}: " in done.stderr, (name, done.stderr)
    assert db.execute("select count(*) from sections").fetchone()[0] == 0
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("name, content", [
    ("nul.jsonl", b'{"id": "a", "content": "ok"}\n{"id": "b", "content": "x\\u0000y"}\n'),
    ("surrogate.jsonl", b'{"id": "a", "content": "ok"}\n{"id": "b\\ud800", "content": "fine"}\n'),
    ("nul-metadata.json",
     b'[{"id": "a", "content": "ok"},\n {"id": "b", "content": "y", "metadata": {"k": "\\u0000"}}]'),
    ("nul.txt", b"hello\x00world"),
])
def test_nul_and_lone_surrogates_are_file_and_line_errors_and_nothing_is_written(name, content, sim, database_url,
                                                                                 db, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    result = cli("ingest", path, *cli_options(sim, database_url))
    assert result.exit_code == 1, result.output
    assert re.search(re.escape(str(path)) + r":\d+: ", result.output)
    assert db.execute("select count(*) from sections").fetchone()[0] == 0
    assert sim.stats()["requests"] == 0


# =====================================================================================================
# 6. Security: hostile input is data, secrets stay secret, servers stay local
# =====================================================================================================

HOSTILE_SECTIONS = [
    {"id": "'); DROP TABLE sections; --", "title": "Robert'); DROP TABLE section_embeddings; --",
     "content": "x'); DELETE FROM sections; --", "metadata": {"'); DROP TABLE sections; --": "$$; drop table x; $$"}},
    {"id": "1; select pg_sleep(8); --", "title": "\" OR 1=1 --", "content": "'; select pg_sleep(8); --",
     "metadata": {"nested": {"q": ["%s", "%(x)s", "{0}", "$1", "E'\\\\x41'"]}}},
    {"id": "\\'; COPY sections TO PROGRAM 'touch /tmp/pwned'; --", "title": "$body$ $$ ::regclass",
     "content": "\\x00 \\\\ backslashes \\n and 'quotes' \"everywhere\"", "metadata": {"k": "v\\"}},
    {"id": "ünïcödé ✓ 漢字 🚀 \u202e rtl", "title": "tab\there", "content": "newlines\nin\r\ncontent\u2028too",
     "metadata": {"emoji 🚀": ["ü", 1, 2.5, True, None]}},
]
HOSTILE_MODELS = ["evil'); DROP TABLE sections; --", 'm" OR 1=1; --', "a$$b; select pg_sleep(8)"]


def test_hostile_ids_titles_metadata_and_model_names_through_the_cli_are_stored_verbatim(sim, database_url, db,
                                                                                         tmp_path):
    path = rel.write_jsonl(tmp_path / "hostile.jsonl", HOSTILE_SECTIONS)
    csv_path = tmp_path / "hostile.csv"
    csv_path.write_text('id,title,content,"x""); DROP TABLE sections; --"\n'
                        '"csv\'); DROP TABLE sections; --","t","csv content","meta\'; --"\n', encoding="utf-8")
    started = time.monotonic()
    for model in HOSTILE_MODELS:
        result = cli("ingest", path, csv_path, *cli_options(sim, database_url, model=model), "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["embedded"] == len(HOSTILE_SECTIONS) + 1
    assert time.monotonic() - started < 8  # no pg_sleep ran

    for table in ("sections", "section_embeddings", "embedding_failures", "schema_migrations"):
        assert db.execute("select to_regclass(%s) is not null", (table,)).fetchone()[0], table
    rows = {r[0]: r[1:] for r in db.execute("select id, title, content, metadata from sections")}
    for s in HOSTILE_SECTIONS:
        assert rows[s["id"]] == (s["title"], s["content"], s["metadata"])
    assert rows["csv'); DROP TABLE sections; --"][2] == {'x"); DROP TABLE sections; --': "meta'; --"}
    for model in HOSTILE_MODELS:
        stored = dict(db.execute("select section_id, embedding::real[] from section_embeddings where model_name = %s",
                                 (model,)).fetchall())
        assert len(stored) == len(HOSTILE_SECTIONS) + 1
        for s in HOSTILE_SECTIONS:
            want = expected_embedding(section_text(s["title"], s["content"]), model, DIMS)
            assert np.allclose(stored[s["id"]], want, atol=1e-6), (model, s["id"])

    model = HOSTILE_MODELS[0]
    status = cli("status", "--database-url", database_url, "--json")
    assert set(json.loads(status.stdout)["models"]) == set(HOSTILE_MODELS)
    assert cli("index", "--model", model, "--database-url", database_url).exit_code == 0
    target = HOSTILE_SECTIONS[1]
    found = cli("search", section_text(target["title"], target["content"]), "-k", "2",
                *cli_options(sim, database_url, model=model), "--json")
    assert json.loads(found.stdout)["hits"][0]["id"] == target["id"]
    assert db.execute("select count(*) from sections").fetchone()[0] == len(HOSTILE_SECTIONS) + 1


API_KEY_RIGHT = "sk-proj-RightKey0123456789abcdefXYZ"
API_KEY_WRONG = "sk-proj-WrongKey9876543210zyxwvuABC"


def _all_text_of(error: BaseException) -> str:
    """An exception as anyone could see it: message, repr, traceback, and its whole cause/context chain."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        parts += [str(error), repr(error), "".join(traceback.format_exception(error))]
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpcore", "psycopg", "psycopg.pool", "sections", "core"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def test_api_keys_never_appear_in_output_logs_or_exceptions(sim, database_url, tmp_path, debug_logs):
    sim.configure(api_key=API_KEY_RIGHT)
    path = rel.write_jsonl(tmp_path / "s.jsonl", stdlib_sections(30, tokens_per_section=50))
    seen = []
    refused = cli("ingest", path, *cli_options(sim, database_url), "-v", env={"OPENAI_API_KEY": API_KEY_WRONG})
    assert refused.exit_code == 1 and "401" in refused.output
    seen.append(refused.output)
    sim.configure(poison=["the"])  # failures with reasons, listed by -v
    accepted = cli("ingest", path, *cli_options(sim, database_url), "-v", env={"OPENAI_API_KEY": API_KEY_RIGHT})
    assert accepted.exit_code in (0, 2)
    seen.append(accepted.output)
    sim.configure(poison=[])

    for key in (API_KEY_WRONG, API_KEY_RIGHT):
        service = EmbeddingService(api_key=key, base_url=sim.base_url, dimensions=DIMS)
        try:
            service.generate_embedding("hello")
        except Exception as error:  # noqa: BLE001 - the wrong key
            assert isinstance(error, (ProviderFatalError, RuntimeError))
            seen.append(_all_text_of(error))
        seen += [repr(service), str(service.get_usage()), repr(service.client)]
        service.close()
    seen.append(debug_logs.text)
    assert any("POST" in r.getMessage() or "HTTP" in r.getMessage() for r in debug_logs.records)  # logs were on
    for text in seen:
        for key in (API_KEY_RIGHT, API_KEY_WRONG):
            assert key not in text and key[8:] not in text


def test_database_passwords_never_appear_in_output_logs_or_exceptions(sim, embedded_pg, database_url, tmp_path,
                                                                      debug_logs):
    seen = []
    for url in (f"postgresql://admin:{DB_SECRET}@127.0.0.1:1/db", _with_password(embedded_pg.url_for("nope")),
                f"host=/no/such/dir password={DB_SECRET}"):
        with pytest.raises(Exception) as caught:
            SupabaseStore(url, connect_timeout=2)
        seen.append(_all_text_of(caught.value))
    working = _with_password(database_url)  # trust auth: the password is carried, never checked
    with SupabaseStore(working) as store:
        seen.append(repr(store))
        assert DB_SECRET not in store.url_masked
    path = rel.write_jsonl(tmp_path / "s.jsonl", stdlib_sections(20, tokens_per_section=40))
    for args in (["ingest", path, *cli_options(sim, working)], ["status", "--database-url", working],
                 ["ingest", path, *cli_options(sim, working), "--dry-run"]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        seen.append(result.output)
    seen.append(debug_logs.text)
    for text in seen:
        assert DB_SECRET not in text


def _listening(port: int) -> list:
    return [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def test_the_simulator_listens_on_loopback_only_unless_told_otherwise(make_simulator):
    sim = make_simulator()
    port = int(sim.base_url.rsplit(":", 1)[1].split("/")[0])
    sockets = _listening(port)
    assert sockets and {c.laddr.ip for c in sockets} == {"127.0.0.1"}

    process = subprocess.Popen([sys.executable, "-m", "sections.cli.app", "simulate", "--host", "0.0.0.0", "--port", "0"],
                               stdout=subprocess.PIPE, text=True, env=rel.child_env(), cwd=rel.ROOT)
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on http://0.0.0.0:"), line
        assert {c.laddr.ip for c in _listening(int(line.rsplit(":", 1)[1].split("/")[0]))} == {"0.0.0.0"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_embedded_postgres_listens_on_a_unix_socket_only(embedded_pg):
    with psycopg.connect(embedded_pg.url) as conn:
        assert conn.execute("show listen_addresses").fetchone()[0] == ""
    postmaster = psutil.Process(embedded_pg.pid)
    assert [c for c in postmaster.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN] == []
    unix = [c.laddr for c in postmaster.net_connections(kind="unix") if c.laddr]
    assert any(".s.PGSQL." in address for address in unix)
