# Stage train: one job per (task, optimizer, model); each job fits that model once per dataset seed.

# Forecaster kinds that never use a GPU (closed-form or tiny per-parameter nets). Mirrors the forecasters'
# `neural = False` flag (tests/test_train_stage.py checks it) so that the Snakefile need not import torch.
CPU_KINDS = {"last_value", "linear", "exp_fit", "lfd2", "introspection", "wnn", "gfm_function"}


def model_gpus(model):
    """GPUs one train job asks for. Only `device: cuda` sends neural training to a GPU: with `auto` a train
    job asks for none, because no measurement shows a GPU speeding up these fits (seconds to ~100 s on one
    CPU thread, mostly process start-up and small batches; BENCHMARKS.md, profiles/README.md). Closed-form
    kinds never use one."""
    kind = config["models"][model]["kind"]
    return 1 if config["device"] == "cuda" and kind not in CPU_KINDS else 0


def train_config(task, optimizer, model):
    """The params keys one train job reads (its DVC stage lists their sections): the params trigger.
    The store's entry is included whole, as in DVC (which cannot list its optional `models` key alone).
    `device` is left out on purpose: a machine setting, not a study parameter (docs/architecture.md §6)."""
    keys = {
        "forecast": config.get("forecast", {}),
        "train.seed": config.get("train", {}).get("seed", 0),
        "train.budget": config.get("train", {}).get("budget", {}),
        "train.tuning": config.get("train", {}).get("tuning", {}),
        f"models.{model}": config["models"][model],
        "stores": config["stores"][f"{task}-{optimizer}"],
    }
    return json.dumps(keys, sort_keys=True)


def train_models():
    return list(config.get("train", {}).get("models", []))


rule train:
    """Fit one forecaster per dataset seed of one store (early-stopped on the val runs)."""
    input:
        store="data/trajectories/{task}/{optimizer}.zarr",
        split="data/splits/{task}/{optimizer}.json",
    output:
        directory("data/models/{task}/{optimizer}/{model}"),
    log:
        "logs/train/{task}/{optimizer}/{model}.log",
    benchmark:
        "logs/benchmarks/train/{task}/{optimizer}/{model}.tsv"
    params:
        store="{task}-{optimizer}",
        config=lambda wc: train_config(wc.task, wc.optimizer, wc.model),
    threads: 1
    resources:
        gpu=lambda wc: model_gpus(wc.model),
    shell:
        "{GFM} train --params {PARAMS_FILE} --store {params.store} --model {wildcards.model} "
        "--split {input.split} --in {input.store} --out {output} --threads {threads} > {log} 2>&1"


rule train_index:
    """The list of a store's trained models: the one target of its DVC stage (dvc.yaml cannot interpolate
    a list of model directories into `cmd`)."""
    input:
        lambda wc: [model_path(wc.task, wc.optimizer, m) for m in store_models(wc.task, wc.optimizer)],
    output:
        "data/models/{task}/{optimizer}/index.json",
    log:
        "logs/train/{task}/{optimizer}/index.log",
    benchmark:
        "logs/benchmarks/train/{task}/{optimizer}/index.tsv"
    params:
        models=lambda wc: json.dumps({m: config["models"][m]["kind"] for m in store_models(wc.task, wc.optimizer)},
                                     sort_keys=True),
    run:
        index = {"store": f"{wildcards.task}-{wildcards.optimizer}", "models": json.loads(params.models)}
        with open(output[0], "w") as f:
            f.write(json.dumps(index, indent=1, sort_keys=True) + "\n")
        with open(log[0], "w") as f:
            f.write(f"{len(index['models'])} models\n")


wildcard_constraints:
    model="[A-Za-z][A-Za-z0-9_]*",
