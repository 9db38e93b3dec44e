"""The benchmark harness end to end at tiny sizes: every scenario runs, and its checks can fail.

Timing numbers prove nothing at these sizes and are not asserted; what is asserted is that the
harness runs every player against a real simulator and database, writes its three outputs, and
that its correctness check catches misplaced vectors (the peers trust reply order, so shuffled
replies misplace theirs) while ours stay right.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import players as P

# The quick run is every scenario at tiny sizes in one subprocess, Ray's start-up (the ray scenario)
# included: past pytest's 300 s on a busy 2-CPU machine.
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    shown = [ROOT / "README.md", ROOT / "docs" / "benchmarks.md"]
    before = [page.read_text() for page in shown]
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=480)  # the ray scenario starts Ray: ~15 s more
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [page.read_text() for page in shown] == before, "a --quick run must never touch the pages"
    return out


def _rows(entry: dict) -> dict[str, list]:
    return {row[0]: row for row in entry["rows"]}


def test_writes_tables_plot_and_data_for_every_scenario(quick_run):
    entries = json.loads((quick_run / "results.json").read_text())
    assert list(entries) == ["w1", "w2", "correctness", "write", "local", "scale", "ray", "retrieval", "search",
                             "workers", "startup"]
    markdown = (quick_run / "results.md").read_text()
    for entry in entries.values():
        assert entry["title"] in markdown
        assert "langchain-openai" in entry["environment"] and "CPUs" in entry["environment"]
    assert (quick_run / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_correctness_check_catches_misplaced_vectors(quick_run):
    rows = _rows(json.loads((quick_run / "results.json").read_text())["correctness"])
    for name in (P.OURS.name, P.LEGACY.name, P.END_TO_END, *[p.name for p in P.SWAPPED]):
        wrong, failed, lost = rows[name][1:4]
        assert (wrong, lost) == (0, 0), rows[name]
    for peer in P.PEERS:  # shuffled replies, read in order: nearly every vector lands on the wrong text
        assert rows[peer.name][1] > 50, rows[peer.name]


def test_every_w1_player_embeds_every_text_right(quick_run):
    rows = _rows(json.loads((quick_run / "results.json").read_text())["w1"])
    for name in (P.LEGACY.name, *[p.name for p in P.PEERS], *[p.name for p in P.SWAPPED], P.OURS.name, P.END_TO_END):
        right, total = rows[name][5].split("/")
        assert right == total and rows[name][6] == 0, rows[name]


def test_unknown_scenario_is_refused():
    done = subprocess.run([sys.executable, "-m", "bench", "w9"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown scenario w9" in done.stderr


def test_the_pages_show_what_the_stored_results_render():
    """No benchmark figure is typed by hand: the docs' tables and the README's headline are what
    ``python -m bench`` renders from bench/results.json (``python -m bench --redraw`` redraws them)."""
    from bench import pages
    from bench.__main__ import SCENARIOS

    entries = json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))
    docs = pages.DOCS_PAGE.read_text(encoding="utf-8")
    readme = pages.README.read_text(encoding="utf-8")
    assert pages.block(docs, pages.RESULTS_BLOCK) == pages.tables(entries, list(SCENARIOS), "assets/results.png")
    assert pages.block(readme, pages.HEADLINE_BLOCK) == pages.headline(entries, list(SCENARIOS), "bench/results.png")
