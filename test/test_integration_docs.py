"""The LangChain and LlamaIndex examples of docs/integrations.md run as written: each section's
Python blocks, in order and in one namespace, against the simulator (as ``OPENAI_BASE_URL``) and a
fresh embedded Postgres database (as ``DATABASE_URL``), the way a reader's environment would supply
them. (The page marks them ``<!-- run by test/test_integration_docs.py -->``; test/test_docs.py
checks the rest of the docs' examples.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _examples(heading: str) -> list[str]:
    text = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return BLOCK.findall(section)


@pytest.mark.parametrize("heading", ["LangChain", "LlamaIndex"])
def test_the_examples_run(heading, sim, database_url, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("DATABASE_URL", database_url)
    blocks = _examples(heading)
    assert len(blocks) == 2, f"expected the two-line swap and the store example under {heading}"
    assert len([line for line in blocks[0].splitlines() if line.strip()]) == 2  # the swap is two lines
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, f"docs/integrations.md ({heading})", "exec"), namespace)
    store = namespace.get("store") or namespace["vector_store"]
    store.close()
