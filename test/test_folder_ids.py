"""Two folders with the same relative paths in one store: refused with the fix, never overwritten;
``--id-prefix`` gives the second folder ids of its own. Through the command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

MODEL = "text-embedding-3-small"
ROOT = Path(__file__).resolve().parents[1]


def sections_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sections", *map(str, args)], capture_output=True, text=True,
                          input="", cwd=ROOT, timeout=120)


def site(root: Path, words: str) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "index.md").write_text(f"# Welcome\n\n{words}\n\n## Install\n\nInstall it with the package manager.\n")
    return root / "docs"


def test_a_second_folder_with_the_same_paths_is_refused_until_it_has_ids_of_its_own(sim, database_url, tmp_path):
    first = site(tmp_path / "one", "The first site explains the first product.")
    second = site(tmp_path / "two", "The second site explains another product entirely.")
    options = ["--model", MODEL, "--base-url", sim.base_url, "--database-url", database_url, "--dimensions", "16"]
    assert sections_cli("ingest", first, *options).returncode == 0
    before = sim.stats()["inputs"]

    clash = sections_cli("ingest", second, *options)
    assert clash.returncode == 1 and "Traceback" not in clash.stderr
    assert len(clash.stderr.strip().splitlines()) == 1 and "--id-prefix docs/" in clash.stderr
    assert "index.md#welcome" in clash.stderr and str(first / "index.md") in clash.stderr
    assert sim.stats()["inputs"] == before  # refused before anything was sent
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("select content from sections where id = 'index.md#welcome'").fetchone()[0] == \
            "The first site explains the first product."  # not overwritten

    assert sections_cli("ingest", second, *options, "--id-prefix", "two/").returncode == 0
    assert sections_cli("ingest", first, *options).returncode == 0  # the first folder again: its own ids
    with psycopg.connect(database_url, autocommit=True) as conn:
        ids = {row[0] for row in conn.execute("select id from section_embeddings e join sections s on s.id = e.section_id")}
    assert ids == {"index.md#welcome", "index.md#welcome/install", "two/index.md#welcome",
                   "two/index.md#welcome/install"}
