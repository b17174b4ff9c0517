"""The repository stands alone: it cites only documents it contains.

Every Markdown document a tracked file mentions, by file name or by path, must be a file of the
repository: a document that lives elsewhere is not shipped with it. The README stays user
documentation of a readable length (details live under docs/).
"""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO

MD_MENTION = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b(?!x)")
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


def outside_citations(text: str, shipped: set[str]) -> list[int]:
    """1-based lines of `text` that mention a .md document that is not among `shipped` (repository paths):
    a bare name must be the name of a shipped document, a path must be one."""
    names = {path.rsplit("/", 1)[-1] for path in shipped}

    def missing(mention: str) -> bool:
        return mention not in shipped if "/" in mention else mention not in names

    return [n for n, line in enumerate(text.splitlines(), start=1)
            if any(missing(m) for m in MD_MENTION.findall(line))]


def cited_docs(text: str) -> set[str]:
    """Names of the docs/*.md files that `text` cites."""
    return set(DOCS_CITATION.findall(text))


def test_the_scanners_find_what_they_look_for():
    md = ".md"  # the examples are assembled so that this file mentions no document itself
    shipped = {f"README{md}", f"docs/units{md}"}
    assert outside_citations(f"x = 1\n# facts: PLANS{md} section 3\n", shipped) == [2]
    assert outside_citations(f"# see ../notes/units{md} and docs/other{md}\n", shipped) == [1]
    assert outside_citations(f"# README{md}, docs/units{md}, units{md}\nfile{md}x\n", shipped) == []
    assert cited_docs(f"(docs/units{md}), [x](docs/ho3d_format{md}#frames) docs/make_picture.py") == {
        f"units{md}", f"ho3d_format{md}"}


def test_no_tracked_file_cites_a_document_outside_the_repository():
    texts = tracked_text_files()
    shipped = {rel for rel in texts if rel.endswith(".md")}
    offenders = [f"{rel}:{n}" for rel, text in texts.items() for n in outside_citations(text, shipped)]
    assert not offenders, f"cite a document of the repository (docs/<file>.md) instead: {offenders}"


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
