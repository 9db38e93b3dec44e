"""The README's Quickstart commands are the ones that run: ``.ci/run`` runs its test command word
for word, and its first command installs the package without the test and benchmark extras."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_word_for_word():
    install, test = _quickstart()
    assert test.startswith("pip install ") and "'.[test,bench]'" in test and test.endswith("&& python -m pytest")
    assert test in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_the_first_command_installs_no_extra_and_runs_the_demo():
    install, _ = _quickstart()
    assert install.startswith("pip install ") and "[" not in install and install.endswith("&& sections demo")
