"""What one model's entry in the metrics holds, as the report and the headline read it, and how user text is
written into a Markdown table cell.

An entry of ``models`` in evaluate's metrics (``data/metrics/<task>/<optimizer>.json``) or in a generalisation
pair (``generalize.json``) is one of:

* a refusal, ``{"refused": "<one-line reason>"}`` and nothing else: the model cannot forecast that store
  (gfm.forecasters.StoreNotSupported). It has no numbers; tables show ``refused: <reason>`` in its cells,
  comparisons and claims involving it are skipped with the reason;
* scored: final MSE, xLV, ... Its ``downstream`` block (and the ``reference`` losses and accuracies) may be
  absent: downstream metrics load the forecast weights into the task's network and need the run's own data,
  which a recorded store without evaluation data does not have. Those cells show :data:`NOT_COMPUTED` and the
  table says why once (:data:`DOWNSTREAM_NOTE`).

A model that refused its store at train time has ``refused.json`` in its model directory instead of weights
(:func:`refusal_of`). A refusal reason is user-facing text from a forecaster (it may quote a store's attribute, so it may hold ``|``,
``<``, newlines): :func:`cell_text` keeps it one line, keeps a table's columns and keeps it text in the HTML
page (gfm.report.html renders the Markdown with raw HTML on).
"""

from __future__ import annotations

from pathlib import Path

from gfm.artifacts.inputs import read_json
from gfm.base.errors import GFMError, one_line

__all__ = ["refusal", "scored", "refusal_of", "cell_text", "refused_cell", "NOT_COMPUTED", "DOWNSTREAM_NOTE",
           "REFUSED_LIMIT", "REFUSED_FILE"]

NOT_COMPUTED = "-"
"""A cell whose number was not computed (downstream metrics without the run's data, a score over no runs)."""
DOWNSTREAM_NOTE = ("`-`: not computed; downstream metrics need the run's own evaluation data and a network "
                   "rebuilt from the store (a recorded store without `eval/x` and `eval/y`, or without its "
                   "activation or loss).")
REFUSED_LIMIT = 300
"""Longest refusal reason a table cell shows (the whole reason stays in the JSON outputs)."""

REFUSED_FILE = "refused.json"
"""The train stage's record, in a model's directory, of a model that refused its store (no weights beside it)."""

# what would end a table cell (|), start HTML or an entity (<, >, &), a code span (`), emphasis (*, _), a
# link ([, ]) or an escape (\\); replaced one character at a time, so no replacement is escaped again
_ESCAPES = {"\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]",
            "&": "&amp;", "<": "&lt;", ">": "&gt;"}


def refusal(entry: object) -> str | None:
    """The reason a model was refused, from its metrics entry; None when the entry is not a refusal."""
    if isinstance(entry, dict) and "refused" in entry:
        return str(entry["refused"])
    return None


def scored(models: dict) -> dict[str, dict]:
    """The entries of ``models`` that hold numbers (every one but the refusals), in their order."""
    return {name: e for name, e in models.items() if isinstance(e, dict) and refusal(e) is None}


def refusal_of(model_root: Path) -> str | None:
    """The reason in ``<model_root>/refused.json`` (the model refused its store at train time), None without
    that file.

    Raises:
        GFMError: the file is not a JSON object with a string ``refused``.
    """
    path = model_root / REFUSED_FILE
    if not path.exists() and not path.is_symlink():
        return None
    data = read_json(path, error=GFMError)
    if not isinstance(data, dict) or not isinstance(data.get("refused"), str):
        raise GFMError(f"{path}: expected a JSON object whose 'refused' is the reason (a string), as the train "
                       "stage writes it")
    return data["refused"]


def cell_text(text: object, limit: int = REFUSED_LIMIT) -> str:
    """``text`` as the literal content of one Markdown table cell: one line (newlines and other non-printable
    characters escaped, gfm.base.errors.one_line), at most ``limit`` characters, and every character that Markdown
    or HTML would read as structure escaped, so it renders as written in ``summary.md`` and ``summary.html``."""
    line = one_line(str(text))
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return "".join(_ESCAPES.get(c, c) for c in line)


def refused_cell(reason: str) -> str:
    """A table cell for a refused model."""
    return f"refused: {cell_text(reason)}"
