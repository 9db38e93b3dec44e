"""MkDocs hook: the site carries the benchmark plot that ``python -m bench`` draws into
bench/results.png (the README shows it from there), as assets/results.png, so the plot is one file
in the repository and docs/benchmarks.md can show it too."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PLOT = Path(__file__).resolve().parents[1] / "bench" / "results.png"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "assets/results.png", abs_src_path=str(PLOT)))
    return files
