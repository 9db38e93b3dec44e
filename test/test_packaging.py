"""What a user installs: one import package, ``sections``, with its public names and its migrations,
and the seed's paths still working from a checkout."""
from __future__ import annotations

import inspect
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sections

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_installs_one_import_package_named_sections(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"sections"}, top
    assert wheel.name.startswith("sections_pgvector-")
    migrations = [n for n in names if n.startswith("sections/postgres/schema/") and n.endswith(".sql")]
    assert len(migrations) == len(list((ROOT / "sections/postgres/schema").glob("*.sql")))
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sections = sections.cli.app:app" in zipfile.ZipFile(wheel).read(entry).decode()


def test_every_public_name_imports_from_the_top() -> None:
    for name in sections.__all__:
        assert getattr(sections, name) is not None, name
    with pytest.raises(AttributeError):
        sections.NoSuchName  # noqa: B018


def test_importing_sections_loads_neither_the_sdk_nor_the_database_driver() -> None:
    code = "import sys, sections; print(sorted(m for m in ('openai', 'psycopg', 'numpy', 'torch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_seed_paths_are_the_package_classes() -> None:
    from core.embedding_service import EmbeddingService as SeedService
    from core.supabase_store import SupabaseStore as SeedStore

    assert SeedStore is sections.SupabaseStore
    assert issubclass(SeedService, sections.EmbeddingService)


def test_a_store_method_handed_to_a_part_keeps_its_signature_and_docstring() -> None:
    from sections.store.searching import Searches

    face = inspect.signature(sections.SupabaseStore.search)
    part = inspect.signature(Searches.search)
    assert face == part and "hybrid" in face.parameters
    assert sections.SupabaseStore.search.__doc__ == Searches.search.__doc__
