"""A store's ``index.json``: the models trained on it and their kinds (rule ``train_index``).

It is the one target of a store's DVC train stage, because ``dvc.yaml`` cannot interpolate the list of model
directories into ``cmd``; its rule waits for every model directory of the store, so writing it last keeps the
directory's mtime older than what reads it.

    gfm train-index --params params.yaml --store mlp_regression-sgd --out data/models/mlp_regression/sgd/index.json
"""

from __future__ import annotations

import json
from pathlib import Path

from gfm.errors import GFMError
from gfm.outputs import MARKER_KEY, Kind, write_json_output

__all__ = ["TRAIN_INDEX", "index", "run"]


def _own_index(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return "is a file that is not a train index (not JSON)"
    if not isinstance(data, dict) or set(data) - {MARKER_KEY} != {"store", "models"}:
        return "is a JSON file that is not a train index (keys other than store, models)"
    return None


TRAIN_INDEX = Kind("train index JSON", False, _own_index)


def index(params, store: str) -> dict:
    """``{"store": key, "models": {name: kind}}`` for the models ``store`` trains (its own list or train.models)."""
    if store not in params.stores:
        raise GFMError(f"--store {store}: not a key of `stores` (keys: {', '.join(params.stores)})")
    return {"store": store, "models": {m: params.models[m]["kind"] for m in params.store_models(store)}}


def run(params_file: str | Path, store: str, out: Path) -> dict:
    """Write ``out`` atomically and print how many models it lists."""
    from gfm.config import load_params

    result = index(load_params(params_file), store)
    write_json_output(out, TRAIN_INDEX, result)
    print(f"{len(result['models'])} models")
    return result
