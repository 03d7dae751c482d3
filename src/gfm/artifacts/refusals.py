"""A model's refusal of a store, on disk (RELIABILITY.md, "One model's refusal is not the store's failure").

A forecaster that cannot forecast a store raises :class:`~gfm.forecasters.StoreNotSupported` (a layout,
activation or loss it cannot rebuild). The stages record that as the model's refusal and go on with the other
models, so one model never vetoes the forecasts and scores of the others:

* ``train``: the model directory ``data/models/<task>/<opt>/<model>/`` holds ``refused.json`` and no weights;
* ``forecast``: the forecast directory holds ``<model>.refused.json`` instead of ``<model>.zarr`` (a model
  refused at train time, or one whose forecast raised the refusal);
* ``evaluate``: the metrics list the model as ``models[<model>] = {"refused": "<reason>"}``.

A refusal JSON is an object with ``model``, ``kind`` (the forecaster kind), ``refused`` (the one-line reason),
``stage`` (where it was refused) and the ownership marker of every JSON output (gfm.artifacts.outputs). It is written
into the stage's temporary directory, so it appears with the rest of the output or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from gfm.artifacts.outputs import REFUSAL, marked
from gfm.base.errors import GFMError, one_line

__all__ = ["REFUSED_FILE", "REFUSED_SUFFIX", "refusal_reason", "write_refusal", "read_refusal", "refusal_problems",
           "forecast_refusal_path"]

REFUSED_FILE = "refused.json"  # in a model directory refused at train time, alone
REFUSED_SUFFIX = ".refused.json"  # <model>.refused.json in a forecast directory
MAX_REASON_CHARS = 400  # a reason is a message line, not a log


def refusal_reason(exc: BaseException) -> str:
    """The one-line reason of a refusal: the exception's message, non-printable characters escaped, clipped."""
    text = one_line(" ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def forecast_refusal_path(forecasts: Path, model: str) -> Path:
    """Where the forecast stage records ``model``'s refusal in the forecast directory ``forecasts``."""
    return Path(forecasts) / f"{model}{REFUSED_SUFFIX}"


def write_refusal(path: Path, *, model: str, kind: str, reason: str, stage: str) -> dict:
    """Write the refusal JSON ``path`` (inside a stage's temporary directory) and return what it holds."""
    record = {"model": model, "kind": kind, "refused": reason, "stage": stage}
    path.write_text(json.dumps(marked(REFUSAL, record), indent=1, sort_keys=True) + "\n")
    return record


def refusal_problems(data: object) -> list[str]:
    """What is wrong with a parsed refusal JSON (``gfm check`` and the readers refuse the same), one line each."""
    if not isinstance(data, dict):
        return ["expected a JSON object"]
    problems = [f"'{key}' must be a non-empty string" for key in ("model", "kind", "refused")
                if not isinstance(data.get(key), str) or not data.get(key)]
    reason = data.get("refused")
    if isinstance(reason, str) and ("\n" in reason or len(reason) > MAX_REASON_CHARS):
        problems.append(f"'refused' must be one line of at most {MAX_REASON_CHARS} characters (the reason)")
    return problems


def read_refusal(path: Path, *, model: str | None = None) -> dict:
    """The refusal recorded at ``path``, checked (:func:`refusal_problems`); ``model``: the name it must carry.

    Raises:
        GFMError: unreadable, malformed, or the refusal of another model.
    """
    from gfm.artifacts.inputs import read_json

    data = read_json(path, limit=1 << 20, error=GFMError)
    problems = refusal_problems(data)
    if not problems and model is not None and data["model"] != model:
        problems = [f"records the refusal of model {data['model']!r:.60}, not {model!r}"]
    if problems:
        raise GFMError(f"{path}: not a model refusal ({problems[0]}); re-run the stage that wrote it")
    return data
