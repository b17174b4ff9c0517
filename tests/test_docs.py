"""The repository stands alone: it cites only documents it contains.

Tracked files must not cite the project's planning documents that live outside the repository,
and every `docs/<name>.md` that a tracked file mentions must exist. The README stays user
documentation of a readable length (details live under docs/).
"""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO

# Documents kept outside the repository; spelled in pieces so that this file does not cite them.
OUTSIDE_DOCUMENTS = re.compile(r"\b(?:" + "|".join(["REFERENCE", "DESIGN", "STYLE"]) + r")\.md\b")
DOCS_CITATION = re.compile(r"\bdocs/([\w.-]+\.md)\b")
README_MAX_LINES = 220


def tracked_text_files() -> dict[str, str]:
    """{path: text} of every file git tracks in the repository (binary files left out)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    texts = {}
    for rel in filter(None, listing.decode().split("\0")):
        path = REPO / rel
        if not path.is_file():  # deleted in the working tree but not yet in the index
            continue
        data = path.read_bytes()
        if b"\0" not in data:
            texts[rel] = data.decode("utf-8", errors="replace")
    return texts


def outside_citations(text: str) -> list[int]:
    """1-based lines of `text` that cite a document kept outside the repository."""
    return [n for n, line in enumerate(text.splitlines(), start=1) if OUTSIDE_DOCUMENTS.search(line)]


def cited_docs(text: str) -> set[str]:
    """Names of the docs/*.md files that `text` cites."""
    return set(DOCS_CITATION.findall(text))


def test_the_scanners_find_what_they_look_for():
    name = "REFER" + "ENCE.md"
    assert outside_citations(f"x = 1\n# facts: {name} section 3\n") == [2]
    assert outside_citations("# see " + "DESI" + "GN.md\n") == [1]
    assert outside_citations("# MY_REFERENCE.md is ours\nREFERENCE.mdx\n# docs/units.md\n") == []
    assert cited_docs("(docs/units.md), [x](docs/ho3d_format.md#frames) docs/make_picture.py") == {
        "units.md", "ho3d_format.md"}


def test_no_tracked_file_cites_a_document_outside_the_repository():
    offenders = [f"{rel}:{n}" for rel, text in tracked_text_files().items() for n in outside_citations(text)]
    assert not offenders, f"cite docs/<file>.md instead: {offenders}"


def test_every_cited_docs_file_exists():
    citations = {}
    for rel, text in tracked_text_files().items():
        for name in cited_docs(text):
            citations.setdefault(name, []).append(rel)
    missing = {name: files for name, files in citations.items() if not (REPO / "docs" / name).is_file()}
    assert not missing, f"cited but not in docs/: {missing}"
    assert {"units.md", "distributed.md", "evaluation.md"} <= set(citations)  # the code does cite docs/


def test_readme_stays_user_documentation_of_readable_length():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details to docs/"
