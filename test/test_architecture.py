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
PACKAGE = ROOT / "sections"
FACES = ROOT / "core"  # the seed's two faces, kept for a checkout

LEAVES: set[str] = set()
ENGINE = {"sections.engine.batching", "sections.engine.errors", "sections.engine.ratelimit", "sections.records",
          "sections.engine.tokens", "sections.engine.usage"}
# Each module (or package, by prefix) and the package modules it may import; the longest prefix wins.
ALLOWED: dict[str, set[str]] = {
    "sections": {"sections"},  # the public names, each imported lazily from its home
    "sections.__main__": {"sections.cli.app"},
    "sections.engine": LEAVES,  # the folder's docstring
    "sections.engine.errors": LEAVES,
    "sections.redact": LEAVES,
    "sections.engine.usage": LEAVES,
    "sections.engine.tokens": LEAVES,
    "sections.engine.batching": LEAVES,
    "sections.engine.ratelimit": {"sections.rate_budget"},
    "sections.rate_budget": LEAVES,
    "sections.engine.cache": LEAVES,
    "sections.records": {"sections.engine.tokens"},
    "sections.fingerprint": {"sections.records"},
    "sections.providers": {"sections.providers", "sections.engine.batching", "sections.engine.errors", "sections.redact",
                           "sections.engine.tokens", "sections.engine.usage"},
    "sections.providers.openai_batch": {"sections.providers", "sections.batch.records", "sections.engine.errors",
                                        "sections.redact"},
    "sections.batch": LEAVES,
    "sections.batch.records": {"sections.records"},
    "sections.batch.plan": {"sections.engine.assemble", "sections.batch.records", "sections.engine.batching",
                            "sections.records", "sections.engine.tokens"},
    "sections.batch.results": {"sections.engine.assemble", "sections.batch.records"},
    "sections.batch.embedder": {"sections.batch.plan", "sections.batch.records", "sections.batch.results",
                                "sections.engine.batching", "sections.providers", "sections.records",
                                "sections.engine.tokens"},
    "sections.engine.assemble": {"sections.engine.batching", "sections.providers.base", "sections.records",
                                 "sections.engine.tokens"},
    "sections.engine.dispatch": ENGINE | {"sections.engine.assemble", "sections.providers.base"},
    "sections.engine.service": ENGINE | {"sections.engine.cache", "sections.engine.dispatch", "sections.providers",
                                         "sections.batch.records", "sections.batch.embedder", "sections.redact"},
    "sections.pipeline": {"sections.pipeline", "sections.records", "sections.fingerprint", "sections.batch.records",
                          "sections.engine.errors"},
    "sections.postgres": {"sections.postgres", "sections.records", "sections.redact", "sections.batch.records",
                          "sections.rate_budget"},
    # the store: a face and the parts it composes; each part states what it needs in its constructor
    "sections.store": {"sections.store", "sections.pipeline", "sections.postgres", "sections.records",
                       "sections.batch.records", "sections.engine.tokens"},
    "sections.store.delegation": LEAVES,
    # past one machine: the ingest's embedding on Ray actors (Ray itself imported only inside)
    "sections.scale": LEAVES,  # the folder's docstring
    "sections.scale.actor": {"sections.engine.errors", "sections.engine.service", "sections.engine.tokens",
                             "sections.postgres.budget", "sections.postgres.database", "sections.providers.base",
                             "sections.records"},
    "sections.scale.ray_embedder": {"sections.engine.errors", "sections.records", "sections.scale.actor"},
    "sections.scale.ray_ingest": {"sections.pipeline.tally", "sections.records", "sections.scale",
                                  "sections.store.supabase_store"},
    "sections.reading": LEAVES,
    "sections.reading.markup": set(),
    "sections.reading.markdown": {"sections.records", "sections.reading.markup"},
    "sections.reading.chunking": {"sections.records", "sections.fingerprint", "sections.engine.tokens"},
    "sections.reading.sources": {"sections.records", "sections.reading.markdown"},
    "sections.reading.sample_corpus": {"sections.engine.tokens"},
    "sections.simulator": LEAVES,
    "sections.simulator.server": {"sections.simulator.batch"},
    "sections.simulator.batch": LEAVES,
    "sections.cli": LEAVES,
    "sections.cli.interrupts": LEAVES,
    "sections.cli.progress_bars": LEAVES,
    "sections.cli.console": {"sections.engine.errors", "sections.cli.interrupts", "sections.cli.progress_bars",
                             "sections.redact", "sections.engine.usage", "sections.postgres.database",
                             "sections.pipeline.outage"},
    "sections.cli.common": {"sections.cli.console", "sections.records", "sections.redact", "sections.engine.service",
                            "sections.providers", "sections.store.supabase_store", "sections.pipeline"},
    "sections.cli.lifecycle": {"sections.cli.common", "sections.cli.console", "sections.records"},
    "sections.cli.ids": {"sections.cli.console", "sections.records"},
    "sections.cli.dry_run": {"sections.cli.console", "sections.engine.usage", "sections.fingerprint", "sections.pipeline"},
    "sections.cli.watch": {"sections.cli.common", "sections.cli.console", "sections.engine.errors",
                           "sections.cli.interrupts", "sections.records", "sections.pipeline"},
    "sections.cli.batch": {"sections.batch.records", "sections.cli.common", "sections.cli.console",
                           "sections.engine.errors", "sections.pipeline", "sections.redact", "sections.engine.usage"},
    "sections.cli.search": {"sections.cli.common", "sections.cli.lifecycle", "sections.cli.console",
                            "sections.engine.errors", "sections.records"},
    "sections.cli.ray_engine": {"sections.cli.console", "sections.scale"},
    "sections.cli.app": {"sections"},  # the top: it may use anything
    # the framework integrations: on top, beside the CLI, over the two faces
    "sections.integrations": LEAVES,
    "sections.integrations.common": {"sections.engine.service", "sections.records", "sections.redact",
                                     "sections.store.supabase_store"},
    "sections.integrations.langchain": {"sections.integrations.common", "sections.engine.service",
                                        "sections.fingerprint", "sections.providers.local", "sections.records",
                                        "sections.store.supabase_store"},
    "sections.integrations.llama_index": {"sections.integrations.common", "sections.engine.service",
                                          "sections.fingerprint", "sections.providers.local", "sections.records",
                                          "sections.store.supabase_store"},
    # the seed's faces re-export; nothing in the package imports them
    "core": LEAVES,
    "core.embedding_service": {"sections.engine", "sections.providers", "sections.records"},
    "core.supabase_store": {"sections.fingerprint", "sections.postgres.index", "sections.store.supabase_store"},
}
SQL = re.compile(r"^\s*(select\s|insert\s+into\s|update\s+\w+\s+set\s|delete\s+from\s|"
                 r"create\s+(table|index|temp|function)\b|alter\s+table\s|drop\s+(table|index)\s|"
                 r"copy\s+\w+\s*(\(|from\s+stdin)|with\s+\w+\s+as\s*\()", re.IGNORECASE)
SQL_CALLS = {"execute", "executemany", "cursor", "copy"}
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
EXEMPT_FROM_SIZE = {"sections.reading.sources", "sections.simulator.server"}  # one format reader each / a whole fake server


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *FACES.glob("*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


MODULES = _modules()


def _rule(module: str) -> set[str]:
    candidates = [prefix for prefix in ALLOWED if module == prefix or module.startswith(prefix + ".")]
    assert candidates, f"{module} has no import rule: add it to ARCHITECTURE.md and ALLOWED here"
    return ALLOWED[max(candidates, key=len)]


OURS = {"sections", "core"}


def _own_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            if node.module in OURS:
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] in OURS]
    return found


def _covered(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("module, path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_follow_the_layers(module: str, path: Path) -> None:
    allowed = _rule(module)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}" for line, target in _own_imports(tree)
             if not _covered(target, allowed | {module})]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module, path", [(m, p) for m, p in MODULES if not m.startswith("sections.postgres")],
                         ids=[m for m, _ in MODULES if not m.startswith("sections.postgres")])
def test_sql_lives_only_under_postgres(module: str, path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
            wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: SQL text {node.value[:40]!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            if module not in {"sections.simulator.server", "sections.reading.sources"}:  # their .copy() are dicts and files
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.func.attr}() outside sections/postgres")
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
               if path.name != "__init__.py" and f"`{_on_the_map(path)}`" not in text]
    assert not missing, f"ARCHITECTURE.md does not mention: {missing}"


def _on_the_map(path: Path) -> str:
    """How ARCHITECTURE.md names a module: relative to the package (``engine/dispatch.py``); a face
    by its path in the checkout (``core/embedding_service.py``)."""
    return path.relative_to(PACKAGE if path.is_relative_to(PACKAGE) else ROOT).as_posix()


def test_no_folder_holds_more_than_fifteen_modules() -> None:
    """A folder is a stage; past fifteen modules it is two stages that want their own folders."""
    crowded = {folder.relative_to(ROOT).as_posix(): count for folder in [PACKAGE, *PACKAGE.rglob("*/")]
               if folder.is_dir() and (count := len([p for p in folder.glob("*.py") if p.name != "__init__.py"])) > 15}
    assert not crowded, crowded


def test_no_class_stacks_the_package_own_classes() -> None:
    """Compose, don't stack: a class may extend at most one class of the package (the seed's
    ``core.embedding_service.EmbeddingService`` extends the real one, nothing else)."""
    own = {node.name for _, path in MODULES for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
           if isinstance(node, ast.ClassDef)}
    stacked = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}{[ast.unparse(b) for b in node.bases]}"
               for _, path in MODULES for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.ClassDef)
               and sum(1 for base in node.bases if ast.unparse(base).split(".")[-1] in own) > 1]
    assert not stacked, stacked


def test_typed_core_passes_mypy_strict() -> None:
    """The modules listed under [tool.mypy] in pyproject.toml, in strict mode."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_frameworks_stay_optional() -> None:
    """The core never loads LangChain or LlamaIndex: only ``sections.integrations`` imports them."""
    probe = ("import sys, sections, sections.cli.app, sections.engine.service, sections.store.supabase_store, "
             "sections.integrations; print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "{'langchain_core', 'llama_index', 'langchain'}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
