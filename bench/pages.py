"""Where the benchmark results are shown, all drawn from ``bench/results.json``: the tables
(``results.md`` and the results block of docs/benchmarks.md) and the README's headline figures.

Nothing is typed by hand: ``python -m bench`` rewrites the blocks between their markers, and
test/test_bench.py fails when a block differs from what the stored results render.
"""
from __future__ import annotations

from pathlib import Path

from bench.report import Result

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
RESULTS_BLOCK = ("<!-- bench:results -->", "<!-- /bench:results -->")
HEADLINE_BLOCK = ("<!-- bench:headline -->", "<!-- /bench:headline -->")
PLOT_ALT = "time per scenario per player"


def as_result(entry: dict) -> Result:
    return Result(**{k: v for k, v in entry.items() if k != "environment"})


def tables(entries: dict[str, dict], order: list[str], image: str) -> str:
    """The plot and every scenario's table with its conditions, verdict and environment."""
    parts = [f"![{PLOT_ALT}]({image})", ""]
    for key in order:
        if key in entries:
            parts += [as_result(entries[key]).markdown(), "", f"<sub>{entries[key]['environment']}</sub>", ""]
    return "\n".join(parts).rstrip() + "\n"


def headline(entries: dict[str, dict], order: list[str], image: str) -> str:
    """The plot and one line per scenario: what it runs and its verdict, the figure it was run for."""
    parts = [f"![{PLOT_ALT}]({image})", ""]
    for key in order:
        if key in entries:
            result = as_result(entries[key])
            name, _, what = result.title.partition(":")
            parts.append(f"- **{name}** ({what.strip()}): {result.verdict}")
    return "\n".join(parts).rstrip() + "\n"


def filled(text: str, markers: tuple[str, str], block: str, where: Path) -> str:
    """``text`` with the block between ``markers`` replaced by ``block``."""
    begin, end = markers
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"{where}: no {begin} … {end} block to fill")
    return text[:start + len(begin)] + "\n" + block + text[stop:]


def block(text: str, markers: tuple[str, str]) -> str:
    """What stands between ``markers`` in ``text`` now."""
    begin, end = markers
    return text.split(begin, 1)[1].split(end, 1)[0].lstrip("\n")


def rewrite(entries: dict[str, dict], order: list[str]) -> None:
    """The docs' results block and the README's headline, from ``entries``."""
    for page, markers, render in ((DOCS_PAGE, RESULTS_BLOCK, tables(entries, order, "assets/results.png")),
                                  (README, HEADLINE_BLOCK, headline(entries, order, "bench/results.png"))):
        page.write_text(filled(page.read_text(encoding="utf-8"), markers, render, page), encoding="utf-8")
