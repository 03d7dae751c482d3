# Stage accelerate: jump-ahead training with trained forecasters (src/gfm/stages/accelerate.py), one job per store of
# `accelerate.stores`; writes data/metrics/accelerate/<task>/<optimizer>.json (read by the report).


rule accelerate:
    """Plain training vs jump-ahead training with each of accelerate.models, on a store's test runs."""
    input:
        split=path("split"),
        models=lambda wc: model_paths(wc.task, wc.optimizer, config.get("accelerate", {}).get("models", [])),
        index=path("train_index"),  # see rule forecast
        code=CODE["accelerate"],
    output:
        path("accelerate"),
    log:
        "logs/accelerate/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/accelerate/{task}/{optimizer}.tsv"
    params:
        store="{task}-{optimizer}",
        models=lambda wc, input: os.path.dirname(input.index),  # the store's models directory
        config=trigger("accelerate"),
    threads: 1
    shell:
        "gfm accelerate --params params.yaml --store {params.store} --split {input.split} "
        "--models {params.models} --out {output} --threads {threads} --quiet > {log} 2>&1"
