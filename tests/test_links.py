"""Every relative link in the repository's Markdown files leads somewhere in a clone.

Issue 13, report 6: the README linked ``../shared/SPEC.md`` (outside the repository) and
``docs/clients.md`` linked files relative to the wrong folder. Links to other sites are not
fetched; a link to a heading must name one that exists (GitHub's anchor rules).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in listed]


def anchors(path: Path) -> set[str]:
    found = set()
    for line in path.read_text().splitlines():
        if match := re.match(r"#+ (.*)", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        inside = linked.exists() and ROOT in (linked, *linked.parents)
        heading_missing = (
            inside and bool(anchor) and linked.suffix == ".md" and (anchor not in anchors(linked))
        )
        if not inside or heading_missing:
            broken.append(target)
    assert broken == []


def test_links_are_found() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/protocol.md" in LINK.findall(readme)
