# Stage accelerate: jump-ahead training with trained forecasters (src/gfm/accelerate.py), one job per store of
# `accelerate.stores`; writes data/metrics/accelerate/<task>/<optimizer>.json (a DVC metric read by the report).


def accelerate_config(task, optimizer):
    """The params keys one accelerate job reads (mirrors its DVC stage's `params:`)."""
    keys = {
        "seed": config["seed"],
        "generate.dataset_seeds": config["generate"]["dataset_seeds"],
        "forecast": config.get("forecast", {}),
        "accelerate": config.get("accelerate", {}),
        "tasks": config["tasks"][task],
        "stores": config["stores"][f"{task}-{optimizer}"],
    }
    return json.dumps(keys, sort_keys=True)


rule accelerate:
    """Plain training vs jump-ahead training with each of accelerate.models, on a store's test runs."""
    input:
        split="data/splits/{task}/{optimizer}.json",
        models=lambda wc: [
            model_path(wc.task, wc.optimizer, m) for m in config.get("accelerate", {}).get("models", [])
        ],
        index=lambda wc: train_index_path(wc.task, wc.optimizer),  # see rule forecast
    output:
        "data/metrics/accelerate/{task}/{optimizer}.json",
    log:
        "logs/accelerate/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/accelerate/{task}/{optimizer}.tsv"
    params:
        store="{task}-{optimizer}",
        models="data/models/{task}/{optimizer}",
        config=lambda wc: accelerate_config(wc.task, wc.optimizer),
    threads: 1
    shell:
        "{GFM} accelerate --params {PARAMS_FILE} --store {params.store} --split {input.split} "
        "--models {params.models} --out {output} --threads {threads} --quiet > {log} 2>&1"
