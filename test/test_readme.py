"""The README's Quickstart commands are the ones that run: ``.ci/run`` runs its test command word
for word (with the torch extra, which the fidelity tests compare against), and its first command
installs the package without any extra and without torch. The README stays a front page whose
links lead somewhere."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_word_for_word():
    install, test = _quickstart()
    assert test.startswith("pip install ") and "'.[test,bench,torch]'" in test and test.endswith("&& python -m pytest")
    assert test in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_the_first_command_installs_no_extra_and_runs_the_demo():
    install, _ = _quickstart()
    assert install.startswith("pip install ") and "[" not in install and install.endswith("&& sections demo")
    assert "torch" not in install  # the local model runs on ONNX Runtime


def test_the_readme_is_a_front_page():
    """Everything else lives in docs/ (test/test_docs.py runs its examples)."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_getting_started_shows_the_same_two_commands():
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    block = page.split("## Install and try it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [line.strip() for line in block.splitlines() if line.strip()] == _quickstart()


def test_every_link_of_the_readme_leads_somewhere():
    """Relative links name a file of the repository, and a heading of it when they name one."""
    from markdown.extensions.toc import slugify

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path
        if not file.exists():
            broken.append(target)
        elif anchor:
            headings = re.findall(r"^#+ (.+?)\s*$", file.read_text(encoding="utf-8"), re.MULTILINE)
            if anchor not in {slugify(heading, "-") for heading in headings}:
                broken.append(target)
    assert broken == []
