"""Start-up: what one ``sections search`` costs from a cold process, and what repeated ones cost.

Every row is the command a user runs, as a fresh subprocess timed from launch to exit (or, for
``search -``, to each answer), with the CPU seconds it used beside the wall time, against the embedded Postgres holding the same sections embedded
with both models:
  - ``import sections.cli.app``: the floor every command pays (Python, typer, rich, psycopg);
  - ``sections search`` with an OpenAI-compatible model (the simulator, no latency): the SDK's
    import is most of it; no model runtime is imported;
  - ``sections search`` with the local model: onnxruntime and the tokenizer are imported and the
    model loaded (its weights' checksum first), for one query;
  - ``sections search -`` with the local model: the same load once, then one query a line;
  - a refused ``--database-url`` with the local model: reported before any model loads.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

from bench.players import API_KEY, fresh_database
from bench.report import Result, median, spread
from sections.engine.service import EmbeddingService
from sections.postgres.embedded import EmbeddedPostgres
from sections.reading.sample_corpus import stdlib_sections
from sections.simulator.server import SimulatorProcess
from sections.store.supabase_store import SupabaseStore

QUERIES = ["read a file line by line", "sort a list by a key", "parse a date from a string",
           "run a command in a subprocess", "join paths on any platform", "format a number with commas",
           "compress a folder into an archive", "wait for threads to finish", "send an email message",
           "match text with a regular expression"]
REFUSED = "postgresql://u:pw@127.0.0.1:1/none"


class Timed(NamedTuple):
    wall: float  # launch to exit: what a user waits, neighbours' load included
    cpu: float  # user + system seconds of the process: what the command itself costs


def _timed(args: list[str]) -> Timed:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == (1 if REFUSED in args else 0), done.stderr[-2000:]
    return Timed(seconds, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)


def _answers(args: list[str], queries: list[str]) -> tuple[float, list[float]]:
    """``sections search -``: seconds to the first answer, then each further query's own seconds,
    each written only once the one before is answered (a program using it as a warm worker)."""
    started = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "sections.cli.app", "search", "-", *args, "--json"], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert worker.stdin is not None and worker.stdout is not None
    moments = [started]
    for query in queries:
        worker.stdin.write(query + "\n")
        worker.stdin.flush()
        assert json.loads(worker.stdout.readline())["hits"], query
        moments.append(time.perf_counter())
    worker.stdin.close()
    assert worker.wait(timeout=60) == 0
    return moments[1] - moments[0], [b - a for a, b in zip(moments[1:], moments[2:])]


def run(quick: bool = False) -> Result:
    sections, repeats = (20, 1) if quick else (200, 5)
    corpus = stdlib_sections(sections, tokens_per_section=200)
    with SimulatorProcess() as sim, tempfile.TemporaryDirectory() as data, EmbeddedPostgres(data) as pg:
        url = fresh_database(pg, "startup")
        with SupabaseStore(url) as store:
            for service in (EmbeddingService(api_key=API_KEY, base_url=sim.base_url, model="text-embedding-3-small"),
                            EmbeddingService(model="all-MiniLM-L6-v2")):
                with service:
                    assert store.ingest(corpus, service)["failed_count"] == 0
        remote = ["--model", "text-embedding-3-small", "--base-url", sim.base_url, "--database-url", url]
        local = ["--database-url", url]
        times: dict[str, list[Timed]] = {"floor": [], "remote": [], "local": [], "refused": []}
        answers: dict[str, list[float]] = {"first": [], "each": []}
        for i in range(repeats):  # interleaved, so the neighbours' load hits every row alike
            query = QUERIES[i % len(QUERIES)]
            times["floor"].append(_timed(["-c", "import sections.cli.app"]))
            times["remote"].append(_timed(["-m", "sections.cli.app", "search", query, *remote, "--json"]))
            times["refused"].append(_timed(["-m", "sections.cli.app", "search", query, "--database-url", REFUSED]))
            times["local"].append(_timed(["-m", "sections.cli.app", "search", query, *local, "--json"]))
            if i < max(1, repeats // 2):  # a few repeats say enough
                first, each = _answers(local, QUERIES[:3] if quick else QUERIES)
                answers["first"].append(first)
                answers["each"] += each
    commands = [
        ("python -c 'import sections.cli.app' (the floor of every command)", times["floor"]),
        ("sections search, OpenAI-compatible model (simulator)", times["remote"]),
        ("sections search, local model, a fresh process", times["local"]),
        ("sections search, local model, refused --database-url", times["refused"]),
    ]
    rows = [[name, f"{median([t.wall for t in runs]):.3f}", spread([t.wall for t in runs]),
             f"{median([t.cpu for t in runs]):.3f}", len(runs)] for name, runs in commands if runs]
    rows += [["sections search -, local model: first answer", f"{median(answers['first']):.3f}",
              spread(answers["first"]), "-", len(answers["first"])],
             ["sections search -, local model: each further query", f"{median(answers['each']):.3f}",
              spread(answers["each"]), "-", len(answers["each"])]]
    remote, each_s = times["remote"], median(answers["each"])
    remote_s, local_s = median([t.wall for t in remote]), median([t.wall for t in times["local"]])
    return Result(
        key="startup",
        title="Start-up: one search from a cold process, and repeated searches",
        conditions=(f"Each row a fresh subprocess timed from launch to exit (`search -`: to each answer, "
                    f"the next query written once the last is answered), {sections} sections embedded with "
                    "both models in the embedded Postgres, the simulator without latency; rows interleaved, "
                    f"{repeats} repeats (the `search -` rows {max(1, repeats // 2)}), median and min–max. CPU seconds: "
                    "user + system time of the command's own process, which neighbours' load changes far less "
                    "than the wall time on a shared machine."),
        header=["command", "seconds (median)", "spread", "CPU seconds (median)", "runs"],
        rows=rows,
        verdict=(f"A search with an OpenAI-compatible model takes {remote_s:.2f} s from launch to exit "
                 f"({median([t.cpu for t in remote]):.2f} s of CPU); one with the local model on ONNX Runtime "
                 f"{local_s:.2f} s ({median([t.cpu for t in times['local']]):.2f} s of CPU), "
                 f"{local_s / remote_s:.2f} × the OpenAI-compatible one: importing onnxruntime and loading the model "
                 f"(checksum, session) is what it adds, which `sections search -` pays once: each further query "
                 f"then takes {1000 * each_s:.0f} ms."),
        plot={"seconds": {row[0]: float(row[1]) for row in rows}},
        plot_log=True,
    )
