"""A store's ``index.json``: the models trained on it and their kinds (rule ``train_index``).

It is the one target of a store's DVC train stage, because ``dvc.yaml`` cannot interpolate the list of model
directories into ``cmd``; its rule waits for every model directory of the store, so writing it last keeps the
directory's mtime older than what reads it.

A model that refused the store (its directory holds ``refused.json``, gfm.artifacts.refusals) is still listed under
``models`` with its kind, and also under ``refused`` with its reason; the key is there only when a model
refused, so the index of a store every model trains is what it always was.

    gfm train-index --params params.yaml --store mlp_regression-sgd --out data/models/mlp_regression/sgd/index.json
"""

from __future__ import annotations

import json
from pathlib import Path

from gfm.artifacts.output_contents import MARKER_KEY
from gfm.artifacts.outputs import Kind, write_json_output
from gfm.artifacts.refusals import REFUSED_FILE, read_refusal
from gfm.base.errors import GFMError

__all__ = ["TRAIN_INDEX", "index", "run"]


def _own_index(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return "is a file that is not a train index (not JSON)"
    if not isinstance(data, dict) or set(data) - {MARKER_KEY, "refused"} != {"store", "models"}:
        return "is a JSON file that is not a train index (keys other than store, models, refused)"
    return None


TRAIN_INDEX = Kind("train index JSON", False, _own_index)


def index(params, store: str, models: Path | None = None) -> dict:
    """``{"store": key, "models": {name: kind}}`` for the models ``store`` trains (its own list or train.models),
    plus ``"refused": {name: reason}`` for those whose directory under ``models`` records a refusal."""
    if store not in params.stores:
        raise GFMError(f"--store {store}: not a key of `stores` (keys: {', '.join(params.stores)})")
    names = params.store_models(store)
    result = {"store": store, "models": {m: params.models[m]["kind"] for m in names}}
    refused = {}
    for m in names if models is not None else ():
        path = models / m / REFUSED_FILE
        if path.exists() or path.is_symlink():
            refused[m] = read_refusal(path, model=m)["refused"]
    if refused:
        result["refused"] = refused
    return result


def run(params_file: str | Path, store: str, out: Path) -> dict:
    """Write ``out`` (in the store's models directory, beside the model directories) atomically and print one
    line: how many models it lists, and how many of them refused the store."""
    from gfm.config import load_params

    out = Path(out)
    result = index(load_params(params_file), store, out.parent)
    write_json_output(out, TRAIN_INDEX, result)
    refused = result.get("refused", {})
    print(f"{len(result['models'])} models" + (f" ({len(refused)} refused the store: {', '.join(refused)})"
                                                if refused else ""))
    return result
