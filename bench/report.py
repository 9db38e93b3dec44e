"""What every benchmark table carries: markdown rendering and the machine and versions it ran on."""
from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = ("openai", "numpy", "tiktoken", "aiohttp", "psycopg", "pgvector", "pgserver")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def environment(packages: tuple[str, ...] = PACKAGES) -> str:
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}. Packages: {', '.join(versions)}.")
