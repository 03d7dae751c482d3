"""Documentation stays inside the repository.

A clone has only the tracked files, so no tracked file may point at notes that live beside the repository,
and every in-repo document the code and docs cite (``docs/<name>.md``, ``docs/<name>.md §N``, relative
Markdown links) must be tracked, down to the numbered section. Reads each tracked text file once (~1.5 MB).
"""

from __future__ import annotations

import functools
import posixpath
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Documents kept outside the repository. Each pattern is written so that it does not match its own source
# text (an escaped dot or a one-letter class), so this file passes its own check and a plain `git grep` for
# the names finds nothing in the repository.
OUTSIDE = re.compile(
    r"\.\./shared|/work/share[d]|DESIGN\.md|paper\.md|WORKFLOW-NOTE[S]|SLURM-NOTE[S]|GFM-PROTOTYP[E]"
    r"|LAYOUT-SKETC[H]|WEIGHT-SPAC[E]-NOTES"
)

# "docs/methods.md", "docs/methods.md §8.1", "docs/methods.md §3-5", "docs/methods.md §1.2–§1.4"; a comment
# may wrap between the name and the section ("docs/architecture.md\n    # §6").
SECTION = r"(\d+(?:\.\d+)*)"
CITATION = re.compile(
    r"docs/([\w.-]+\.md)(?:[\s#*]*§\s*" + SECTION + r"(?:\s*[-–]\s*§?\s*" + SECTION + r")?)?"
)
HEADING = re.compile(r"^#{1,6}\s+" + SECTION + r"\.?\s", re.M)
# Markdown links with a relative target: [text](target) or [text](target#anchor).
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")


@functools.cache
def tracked() -> tuple[str, ...]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:  # an sdist or a copy without .git
        pytest.skip(f"not a git checkout ({e})")
    return tuple(p for p in out.decode().split("\0") if p)


@functools.cache
def texts() -> dict[str, str]:
    """Tracked text files by path; binary files (a NUL byte) and tracked-but-deleted paths are skipped."""
    result = {}
    for rel in tracked():
        path = ROOT / rel
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        result[rel] = data.decode("utf-8", errors="replace")
    return result


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def sections(doc: str) -> set[str]:
    return set(HEADING.findall(texts()[doc]))


def section_range(first: str, last: str | None) -> list[str]:
    """'3', '5' -> 3, 4, 5; dotted ranges ('1.2'-'1.4') are checked at their ends only."""
    if last is None:
        return [first]
    if first.isdigit() and last.isdigit() and int(first) <= int(last):
        return [str(n) for n in range(int(first), int(last) + 1)]
    return [first, last]


def test_no_tracked_file_cites_a_document_outside_the_repository():
    hits = [f"{rel}:{line_of(text, m.start())}: {m.group(0)}"
            for rel, text in texts().items() for m in OUTSIDE.finditer(text)]
    assert not hits, ("tracked files cite documents that a clone does not have; cite docs/methods.md, "
                      "docs/gfm-notes.md, docs/architecture.md, docs/cluster.md, profiles/README.md or "
                      "BENCHMARKS.md instead:\n" + "\n".join(hits))


def test_every_cited_doc_and_section_is_tracked():
    files = set(tracked())
    missing = []
    for rel, text in texts().items():
        for m in CITATION.finditer(text):
            doc = f"docs/{m.group(1)}"
            where = f"{rel}:{line_of(text, m.start())}: {m.group(0).strip()!r}"
            if doc not in files:
                missing.append(f"{where}: {doc} is not a tracked file")
            elif m.group(2):
                have = sections(doc)
                missing += [f"{where}: {doc} has no section {s} (it has {', '.join(sorted(have)) or 'none'})"
                            for s in section_range(m.group(2), m.group(3)) if s not in have]
    assert not missing, "\n".join(missing)


# BENCHMARKS.md, "End to end" / BENCHMARKS.md ("Bounded memory" ...): code comments point to the section that
# holds a number instead of stating it, so each named section must exist (a heading that starts with the name).
BENCHMARK_CITATION = re.compile(r'BENCHMARKS\.md,?\s*(?:#\s*)?\(?"([^"\n]+)"')


def test_every_cited_benchmarks_section_exists():
    headings = [h.strip() for h in re.findall(r"^#{2,6}\s+(.+)$", texts()["BENCHMARKS.md"], re.M)]
    missing = [f"{rel}:{line_of(text, m.start())}: BENCHMARKS.md has no section {m.group(1)!r}"
               for rel, text in texts().items() for m in BENCHMARK_CITATION.finditer(text)
               if not any(h.startswith(m.group(1)) for h in headings)]
    assert not missing, "\n".join(missing)


def test_relative_markdown_links_resolve_to_tracked_files():
    files = set(tracked())
    dirs = {d.as_posix() for f in files for d in Path(f).parents}  # a link may name a folder
    broken = []
    for rel, text in texts().items():
        if not rel.endswith(".md"):
            continue
        for m in LINK.finditer(text):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            key = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
            if key not in files and key not in dirs:
                broken.append(f"{rel}:{line_of(text, m.start())}: ({target}) -> {key} is not tracked")
    assert not broken, "\n".join(broken)


def test_methods_sections_cited_inside_it_exist():
    """docs/methods.md refers to its own sections as a bare '§N'; each must be one of its headings."""
    text = texts()["docs/methods.md"]
    have = sections("docs/methods.md")
    bad = [f"docs/methods.md:{line_of(text, m.start())}: §{s}"
           for m in re.finditer(r"(?<!\.md )§" + SECTION + r"(?:\s*[-–]\s*§?" + SECTION + r")?", text)
           for s in section_range(m.group(1).rstrip("."), m.group(2))
           if s not in have]
    assert not bad, "\n".join(bad)
