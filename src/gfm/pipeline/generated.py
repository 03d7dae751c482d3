"""Files generated from the code and checked in: dvc.yaml (``gfm pipeline``) and the params schema (``gfm schema``).

Each starts with its generated-by line, which is its ownership marker (YAML has no place for the JSON marker of
gfm.artifacts.outputs): ``--write`` replaces only a file that its command wrote, never params.yaml or a README.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gfm.artifacts.outputs import Kind, claim_output, write_text_output

__all__ = ["generated_kind", "emit"]


def generated_kind(name: str, header: str, command: str) -> Kind:
    """The output kind ``name`` of the files whose text starts with the first line of ``header``, which
    ``command`` writes."""
    first = (header.splitlines()[0] + "\n").encode()

    def marked(path: Path) -> str | None:
        try:
            with path.open("rb") as f:
                return name if f.read(len(first)) == first else None
        except OSError:
            return None

    def own(path: Path) -> str | None:
        return None if marked(path) else (f"is a file that `{command}` did not write (it does not start with the "
                                          f"generated-by line of a {name.removeprefix('generated ')})")

    return Kind(name, False, own, marked)


def emit(write: str | None, kind: Kind, render: Callable[[], str], source: str) -> int:
    """Print ``render()``, or write it to ``write`` (atomically; an up-to-date file is left as it is). The
    output is claimed before any work: a file of another kind is refused untouched."""
    out = None if write is None else claim_output(write, kind)
    text = render()
    if out is None:
        print(text, end="")
        return 0
    if out.is_file() and out.read_bytes() == text.encode():
        print(f"{out}: up to date")
        return 0
    write_text_output(out, kind, text)
    print(f"{out}: written from {source}")
    return 0
