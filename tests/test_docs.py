"""The README is a short front door and every page it leads to is there: each relative link in
README.md and docs/*.md reaches a file, and a heading of it when it names one."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from helpers import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 350

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[(?:[^\]]|\\\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text in lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of ``path``'s headings, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """The targets of ``path``'s links and images that stay in this repository."""
    targets = []
    for paragraph in "\n".join(prose(path.read_text())).split("\n\n"):  # a link's text may wrap
        for match in LINK.finditer(CODE_SPAN.sub("", paragraph)):
            target = match.group(1)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                targets.append(target)
    return targets


def broken(path: Path, target: str, root: Path = ROOT) -> str | None:
    """Why ``target``, linked from ``path``, leads nowhere in the checkout ``root``; None when it resolves."""
    file_part, _, fragment = target.partition("#")
    destination = (path.parent / unquote(file_part)).resolve() if file_part else path
    if not destination.is_relative_to(root.resolve()):
        return "it leads outside the repository"
    if not destination.exists():
        return f"{destination.relative_to(root.resolve())} does not exist"
    if fragment:
        if destination.suffix != ".md":
            return "an anchor in a file that is not Markdown"
        if unquote(fragment).lower() not in anchors(destination):
            return f"{destination.name} has no heading #{fragment}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    problems = [f"{target}: {why}" for target in relative_links(page) if (why := broken(page, target))]
    assert not problems, f"{page.relative_to(ROOT)} links nowhere:\n" + "\n".join(problems)


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) < MAX_README_LINES, (
        f"README.md has {len(lines)} lines: keep it under {MAX_README_LINES} and move detail to a page in docs/")


def test_every_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs/ pages the README does not link to: {', '.join(unlinked)}"


def test_the_checker_finds_what_is_broken(tmp_path):
    """The checks themselves: a missing file and a missing heading are found, a good link is not."""
    (tmp_path / "other.md").write_text("# A page\n\n## What an agent's `login` can do\n\n## Same\n\n## Same\n")
    page = tmp_path / "page.md"
    page.write_text("```\n[in code](nowhere.md)\n```\n`[in a span](nowhere.md)` [web](https://example.com)\n"
                    "[a link that\nwraps](other.md#same)\n")
    assert relative_links(page) == ["other.md#same"]
    assert broken(page, "other.md#what-an-agents-login-can-do", tmp_path) is None
    assert broken(page, "other.md#same-1", tmp_path) is None
    assert broken(page, "other.md#same-2", tmp_path) == "other.md has no heading #same-2"
    assert broken(page, "missing.md", tmp_path) == "missing.md does not exist"
    assert broken(page, "../outside.md", tmp_path) == "it leads outside the repository"
