# Stage forecast: one job per store forecasts its test runs with every trained model (forecasting takes
# milliseconds; one process per model would spend its time importing torch).


rule forecast:
    """Forecast every non-diverged test run of one store with every model (one fit per dataset seed)."""
    input:
        store="data/trajectories/{task}/{optimizer}.zarr",
        split="data/splits/{task}/{optimizer}.json",
        models=lambda wc: [model_path(wc.task, wc.optimizer, m) for m in store_models(wc.task, wc.optimizer)],
        # index.json is written into the models directory last: waiting for it keeps that directory's
        # mtime older than the forecasts (else `gfm commit` sees the forecasts as stale)
        index=lambda wc: train_index_path(wc.task, wc.optimizer),
    output:
        directory("data/forecasts/{task}/{optimizer}"),
    log:
        "logs/forecast/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/forecast/{task}/{optimizer}.tsv"
    params:
        store="{task}-{optimizer}",
        models="data/models/{task}/{optimizer}",
        config=lambda wc: json.dumps({"forecast": config.get("forecast", {}), "train.models": train_models(),
                                      "stores": config["stores"][f"{wc.task}-{wc.optimizer}"]}, sort_keys=True),
    threads: 1
    shell:
        "{GFM} forecast --params {PARAMS_FILE} --store {params.store} --in {input.store} --split {input.split} "
        "--models {params.models} --out {output} --threads {threads} > {log} 2>&1"
