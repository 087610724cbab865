"""The documentation's links and its "tested" claims, checked offline: every relative link and image in
README.md, BENCHMARKS.md and docs/**/*.md points to a file that exists, every `#anchor` to a heading of its
target (GitHub's anchor rules), and every sentence that says "tested" names a test file that exists."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
TEST_FILE = re.compile(r"\b(?:tests/[\w/]+/)?test_\w+\.py\b|\btests/[\w/]+\.py\b")
TESTED = re.compile(r"\btested\b", re.IGNORECASE)
# A claim's test may be a benchmark script or a test file; "not tested" / "untested" claim nothing.
NAMES_A_TEST = re.compile(r"test_\w+\.py|bench/\w+\.(py|sh)|\bnot tested\b|\buntested\b", re.IGNORECASE)


def prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks (a `# comment` in a shell block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text, lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    found = set()
    for line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if match:
            anchor = github_anchor(match.group(2))
            found.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")  # repeats get -1, -2, ...
            seen[anchor] += 1
    return found


def links(page: Path) -> list[str]:
    return [target for line in prose_lines(page.read_text())
            for target in LINK.findall(INLINE_CODE.sub("code", line))]


def sentences(page: Path) -> list[str]:
    """The page's prose split into sentences; a table row or list item ends one too."""
    text = "\n".join(prose_lines(page.read_text()))
    blocks = re.split(r"\n\s*\n|\n(?=\s*(?:[-*|]|\d+\.)\s)", text)
    return [" ".join(part.split()) for block in blocks
            for part in re.split(r"(?<=[.!?])\s+(?=[A-Z`*(])", block) if part.strip()]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_point_to_files_and_headings_that_exist(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked (no network)
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page_id(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_tested_claim_names_a_test_that_exists(page: Path) -> None:
    unnamed = [sentence for sentence in sentences(page)
               if TESTED.search(sentence) and not NAMES_A_TEST.search(sentence)]
    assert not unnamed, f"{page_id(page)}: says tested without naming the test: {unnamed}"
    test_files = {path.name for path in (ROOT / "tests").rglob("test_*.py")}
    missing = [name for name in TEST_FILE.findall(page.read_text())
               if not ((ROOT / name).exists() if name.startswith("tests/") else name in test_files)]
    assert not missing, f"{page_id(page)} names test files that do not exist: {missing}"


def test_github_anchor_rules() -> None:
    assert github_anchor("The paper's model: `paper128` and the residual family") == \
        "the-papers-model-paper128-and-the-residual-family"
    assert github_anchor("Continuing a run, truncation and latent walks") == \
        "continuing-a-run-truncation-and-latent-walks"
    assert github_anchor("What changed (issues 16 and 17)") == "what-changed-issues-16-and-17"
