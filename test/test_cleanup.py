"""Every ingest removes what the files it reads again no longer hold (incremental cleanup), lists
each removal with -v and counts it; files that vanished are left to --prune. Through the command."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

MODEL = "text-embedding-3-small"
ROOT = Path(__file__).resolve().parents[1]


def sections_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sections", *map(str, args)], capture_output=True, text=True,
                          input="", cwd=ROOT, timeout=120)


def stored(database_url: str) -> tuple[set[str], set[str]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        ids = {row[0] for row in conn.execute("select id from sections")}
        vectors = {row[0] for row in conn.execute("select section_id from section_embeddings")}
    return ids, vectors


def test_a_file_read_again_loses_the_sections_it_no_longer_yields(sim, database_url, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "config.md"
    page.write_text("# Config\n\nHow the tool is configured.\n\n### Paths\n\nWhere the files of a site live.\n\n"
                    "### Themes\n\nHow a site looks and which colours it uses.\n")
    (docs / "old.md").write_text("# Old\n\nA page that will be deleted soon.\n")
    options = ["--model", MODEL, "--base-url", sim.base_url, "--database-url", database_url, "--dimensions", "16"]
    assert sections_cli("ingest", docs, *options).returncode == 0
    assert stored(database_url)[0] == {"config.md#config", "config.md#config/paths", "config.md#config/themes",
                                       "old.md#old"}

    # a ## heading above the ### ones re-keys them; a file deleted is not the proof of anything
    page.write_text(page.read_text().replace("### Paths", "## Layout\n\nThe parts of a site.\n\n### Paths"))
    (docs / "old.md").unlink()
    again = sections_cli("ingest", docs, *options, "-v")
    assert again.returncode == 0, again.stderr
    ids, vectors = stored(database_url)
    assert ids == vectors == {"config.md#config", "config.md#config/layout", "config.md#config/layout/paths",
                              "config.md#config/layout/themes", "old.md#old"}  # no stale copies
    assert "removed: config.md#config/paths" in again.stdout and "removed: config.md#config/themes" in again.stdout
    summary = json.loads(sections_cli("ingest", docs, *options, "--json").stdout)
    assert summary["pruned"] == 0 and summary["unchanged"] == 4

    pruned = json.loads(sections_cli("ingest", docs, *options, "--prune", "--json").stdout)
    assert pruned["pruned"] == 1 and "old.md#old" not in stored(database_url)[0]
