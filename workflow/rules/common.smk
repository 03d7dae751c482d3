# Paths and input functions shared by the rules. Output paths are defined here once; dvc.yaml mirrors them
# and tests/test_dag_agreement.py checks both describe the same DAG.

import json

PARAMS_FILE = "params.yaml"
GFM = "gfm"

STORES = {key: (spec["task"], spec["optimizer"]["name"]) for key, spec in config["stores"].items()}


def trajectory_path(task, optimizer):
    return f"data/trajectories/{task}/{optimizer}.zarr"


def split_path(task, optimizer):
    return f"data/splits/{task}/{optimizer}.json"


def model_path(task, optimizer, model):
    return f"data/models/{task}/{optimizer}/{model}"


def train_index_path(task, optimizer):
    return f"data/models/{task}/{optimizer}/index.json"


def metrics_path(task, optimizer):
    return f"data/metrics/{task}/{optimizer}.json"


def plots_path(task, optimizer):
    return f"data/plots/{task}/{optimizer}"


def accelerate_stores():
    """(task, optimizer) of every store of the jump-ahead experiment."""
    return [(s["task"], s["optimizer"]) for s in config.get("accelerate", {}).get("stores", {}).values()]


def accelerate_path(task, optimizer):
    return f"data/metrics/accelerate/{task}/{optimizer}.json"


def store_models(task, optimizer):
    """Forecasters trained on one store: its own `models` list, else train.models (as Params.store_models)."""
    own = config["stores"][f"{task}-{optimizer}"].get("models")
    return list(own if own is not None else config.get("train", {}).get("models", []))


def generate_config(task, optimizer):
    """The params keys one store is generated from (mirrors its DVC stage's `params:`). `device` is left out
    on purpose: it is a machine setting, not a study parameter (docs/architecture.md §6)."""
    keys = {
        "seed": config["seed"],
        "generate.dataset_seeds": config["generate"]["dataset_seeds"],
        "store": config["store"],
        "tasks": config["tasks"][task],
        "stores": config["stores"][f"{task}-{optimizer}"],
    }
    return json.dumps(keys, sort_keys=True)


def all_outputs():
    out = []
    for task, optimizer in STORES.values():
        out += [trajectory_path(task, optimizer), split_path(task, optimizer)]
        if store_models(task, optimizer):
            out += [train_index_path(task, optimizer), metrics_path(task, optimizer)]
    if config.get("train", {}).get("models"):
        out += ["data/metrics/generalize.json", "reports", "metrics.json", "plots"]  # headline: evaluate.smk
    out += [accelerate_path(t, o) for t, o in accelerate_stores()]  # workflow/rules/accelerate.smk
    return out


wildcard_constraints:
    task="[A-Za-z][A-Za-z0-9_]*",
    optimizer="sgd|momentum|nesterov|adam|adamw|rmsprop",
