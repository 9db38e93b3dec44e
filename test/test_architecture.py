"""The rules ARCHITECTURE.md states, checked: who may import whom, where SQL lives, how big a
module or class may grow, and that the typed core passes ``mypy --strict``.

A rule that only lives in prose erodes one convenient import at a time; here a change that breaks
one fails CI with the module and the line.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"

LEAVES: set[str] = set()
ENGINE = {"core.batching", "core.errors", "core.ratelimit", "core.records", "core.tokens", "core.usage"}
# Each module (or package, by prefix) and the core modules it may import; the longest prefix wins.
ALLOWED: dict[str, set[str]] = {
    "core": LEAVES,  # the package's empty __init__
    "core.errors": LEAVES,
    "core.redact": LEAVES,
    "core.usage": LEAVES,
    "core.tokens": LEAVES,
    "core.batching": LEAVES,
    "core.ratelimit": LEAVES,
    "core.cache": LEAVES,
    "core.records": {"core.tokens"},
    "core.fingerprint": {"core.records"},
    "core.providers": {"core.providers", "core.batching", "core.errors", "core.redact", "core.tokens", "core.usage"},
    "core.providers.openai_batch": {"core.providers", "core.batch_records", "core.errors", "core.redact"},
    "core.batch_records": {"core.records"},
    "core.batch_plan": {"core.assemble", "core.batch_records", "core.batching", "core.records", "core.tokens"},
    "core.batch_results": {"core.assemble", "core.batch_records"},
    "core.batch_embedder": {"core.batch_plan", "core.batch_records", "core.batch_results", "core.batching",
                            "core.providers", "core.records", "core.tokens"},
    "core.assemble": {"core.batching", "core.providers.base", "core.records", "core.tokens"},
    "core.dispatch": ENGINE | {"core.assemble", "core.providers.base"},
    "core.pipeline": {"core.pipeline", "core.records", "core.fingerprint", "core.batch_records", "core.errors"},
    "core.postgres": {"core.postgres", "core.records", "core.redact", "core.batch_records"},
    "core.embedding_service": ENGINE | {"core.cache", "core.dispatch", "core.providers", "core.batch_records",
                                        "core.batch_embedder", "core.redact"},
    "core.lifecycle": {"core.pipeline", "core.postgres", "core.records"},
    "core.indexing": {"core.lifecycle", "core.pipeline", "core.postgres", "core.records"},
    "core.supabase_store": {"core.pipeline", "core.postgres", "core.records", "core.fingerprint", "core.tokens",
                            "core.lifecycle", "core.indexing", "core.batch_store", "core.searching"},
    "core.searching": {"core.postgres", "core.records", "core.lifecycle"},
    "core.batch_store": {"core.pipeline", "core.postgres", "core.records", "core.batch_records", "core.lifecycle"},
    "core.markdown": {"core.records"},
    "core.chunking": {"core.records", "core.fingerprint", "core.tokens"},
    "core.interrupts": LEAVES,
    "core.progress_bars": set(),
    "core.console": {"core.errors", "core.interrupts", "core.progress_bars", "core.redact", "core.usage"},
    "core.sources": {"core.records", "core.markdown"},
    "core.sample_corpus": {"core.tokens"},
    "core.simulator": {"core.simulator_batch"},
    "core.simulator_batch": LEAVES,
    "core.cli_common": {"core.console", "core.records", "core.redact", "core.embedding_service", "core.providers",
                        "core.supabase_store"},
    "core.cli_lifecycle": {"core.cli_common", "core.console", "core.records"},
    "core.cli_dry_run": {"core.console", "core.usage", "core.fingerprint", "core.pipeline"},
    "core.cli_watch": {"core.cli_common", "core.console", "core.errors", "core.interrupts", "core.records",
                       "core.pipeline"},
    "core.cli_batch": {"core.batch_records", "core.cli_common", "core.console", "core.errors", "core.pipeline",
                       "core.redact", "core.usage"},
    "core.cli_search": {"core.cli_common", "core.cli_lifecycle", "core.console", "core.errors", "core.records"},
    "core.cli": {"core"},  # the top: it may use anything
}
SQL = re.compile(r"^\s*(select\s|insert\s+into\s|update\s+\w+\s+set\s|delete\s+from\s|"
                 r"create\s+(table|index|temp|function)\b|alter\s+table\s|drop\s+(table|index)\s|"
                 r"copy\s+\w+\s*(\(|from\s+stdin)|with\s+\w+\s+as\s*\()", re.IGNORECASE)
SQL_CALLS = {"execute", "executemany", "cursor", "copy"}
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
EXEMPT_FROM_SIZE = {"core.sources", "core.simulator"}  # one format reader each / a whole fake server


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


MODULES = _modules()


def _rule(module: str) -> set[str]:
    candidates = [prefix for prefix in ALLOWED if module == prefix or module.startswith(prefix + ".")]
    assert candidates, f"{module} has no import rule: add it to ARCHITECTURE.md and ALLOWED here"
    return ALLOWED[max(candidates, key=len)]


def _core_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "core":
            if node.module == "core":
                found += [(node.lineno, f"core.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "core"]
    return found


def _covered(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("module, path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_follow_the_layers(module: str, path: Path) -> None:
    allowed = _rule(module)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}" for line, target in _core_imports(tree)
             if not _covered(target, allowed | {module})]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module, path", [(m, p) for m, p in MODULES if not m.startswith("core.postgres")],
                         ids=[m for m, _ in MODULES if not m.startswith("core.postgres")])
def test_sql_lives_only_under_postgres(module: str, path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
            wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: SQL text {node.value[:40]!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            if module not in {"core.simulator", "core.sources"}:  # their .copy() are dicts and files
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.func.attr}() outside core/postgres")
    assert not wrong, "\n".join(wrong)


def test_the_sql_pattern_recognises_sql() -> None:
    assert SQL.match("select s.id from sections s") and SQL.match("\n insert into sections as s (id)")
    assert not SQL.match("selected sections are embedded") and not SQL.match("Copy stdin to a temporary file")


@pytest.mark.parametrize("module, path", MODULES, ids=[m for m, _ in MODULES])
def test_modules_and_classes_stay_small(module: str, path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if module not in EXEMPT_FROM_SIZE:
        assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module}: over {MAX_MODULE_LINES} lines; split it by job"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and module not in EXEMPT_FROM_SIZE:
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{module}.{node.name}: {size} lines, over {MAX_CLASS_LINES}"


def test_every_module_is_on_the_map() -> None:
    """ARCHITECTURE.md names every module, so the map cannot silently fall behind the code."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [str(path.relative_to(ROOT)) for _, path in MODULES
               if path.name != "__init__.py" and f"`{path.relative_to(CORE).as_posix()}`" not in text]
    assert not missing, f"ARCHITECTURE.md does not mention: {missing}"


def test_typed_core_passes_mypy_strict() -> None:
    """The modules listed under [tool.mypy] in pyproject.toml, in strict mode."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
