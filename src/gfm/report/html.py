"""``summary.html``: the report's Markdown as one self-contained page.

The Markdown is rendered by markdown-it-py (CommonMark plus GitHub-style tables), the same text as
``summary.md``. The page needs no other file: every image the Markdown links by a relative path (``figures/x.png``,
kept relative in ``summary.md`` for viewing it beside its figures, e.g. on GitHub) is embedded as a base64
``data:`` URI, and the style sheet is inline. So the HTML can be mailed, attached to a CI run or opened from a
download folder and still shows every figure.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from markdown_it import MarkdownIt

from gfm.base.errors import GFMError

__all__ = ["render_html", "embed_image", "STYLE"]

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

# wide tables (one column per store) scroll inside the page instead of widening it
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:13px;display:block;width:max-content;"
         "max-width:100%;overflow-x:auto}"
         "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
         "img{max-width:100%;margin:.5em 0;vertical-align:top}code{background:#f3f3f3;padding:0 3px}"
         "h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}")


def embed_image(src: str, root: Path) -> str:
    """The ``data:`` URI of the image ``src`` (a relative path below ``root``).

    Raises:
        GFMError: ``src`` is absolute, a URL, leaves ``root``, is not a PNG/SVG/JPEG, or does not exist (a
            report that would show a broken image is not written).
    """
    rel = PurePosixPath(src)
    if ":" in src or rel.is_absolute() or ".." in rel.parts:
        raise GFMError(f"report image {src!r}: expected a relative path below the report directory")
    mime = _MIME.get(rel.suffix.lower())
    if mime is None:
        raise GFMError(f"report image {src!r}: expected one of {', '.join(sorted(_MIME))}")
    path = root / rel
    if not path.is_file():
        raise GFMError(f"report image {src!r}: {path} not found")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _parser() -> MarkdownIt:
    # CommonMark with raw HTML on (the tables' headers use <br>), plus the GitHub table rule
    return MarkdownIt("commonmark").enable("table")


def render_html(title: str, markdown: str, root: Path) -> str:
    """The page for ``markdown`` whose relative image links resolve below ``root`` (embedded, see module doc)."""
    md = _parser()
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                # the parser percent-encoded the link; the file name is the decoded one
                child.attrSet("src", embed_image(unquote(str(child.attrGet("src"))), root))
    body = md.renderer.render(tokens, md.options, {})
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n")
