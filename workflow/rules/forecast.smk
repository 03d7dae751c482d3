# Stage forecast: one job per (task, optimizer, model): forecast the store's test runs from their prefix.


def forecast_config():
    """The params keys a forecast job reads (mirrors its DVC stage's `params:`)."""
    return json.dumps({"forecast": config.get("forecast", {})}, sort_keys=True)


rule forecast:
    """Forecast every non-diverged test run of one store with one model (one fit per dataset seed)."""
    input:
        store="data/trajectories/{task}/{optimizer}.zarr",
        split="data/splits/{task}/{optimizer}.json",
        models="data/models/{task}/{optimizer}/{model}",
    output:
        directory("data/forecasts/{task}/{optimizer}/{model}.zarr"),
    log:
        "logs/forecast/{task}/{optimizer}/{model}.log",
    benchmark:
        "logs/benchmarks/forecast/{task}/{optimizer}/{model}.tsv"
    params:
        store="{task}-{optimizer}",
        config=lambda wc: forecast_config(),
    threads: 1
    shell:
        "{GFM} forecast --params {PARAMS_FILE} --store {params.store} --model {wildcards.model} "
        "--in {input.store} --split {input.split} --models {input.models} --out {output} > {log} 2>&1"


rule forecast_index:
    """The list of a store's forecasts: the one target of its DVC stage."""
    input:
        lambda wc: [forecast_path(wc.task, wc.optimizer, m) for m in train_models()],
    output:
        "data/forecasts/{task}/{optimizer}/index.json",
    log:
        "logs/forecast/{task}/{optimizer}/index.log",
    params:
        models=lambda wc: json.dumps(train_models()),
    run:
        index = {"store": f"{wildcards.task}-{wildcards.optimizer}", "models": json.loads(params.models)}
        with open(output[0], "w") as f:
            f.write(json.dumps(index, indent=1, sort_keys=True) + "\n")
        with open(log[0], "w") as f:
            f.write(f"{len(index['models'])} forecasts\n")
