# Stage forecast: one job per store forecasts its test runs with every trained model (forecasting takes
# milliseconds; one process per model would spend its time importing torch).


rule forecast:
    """Forecast every non-diverged test run of one store with every model (one fit per dataset seed)."""
    input:
        store=path("trajectories"),
        split=path("split"),
        models=lambda wc: model_paths(wc.task, wc.optimizer, store_models(wc.task, wc.optimizer)),
        # index.json is written into the models directory last: waiting for it keeps that directory's
        # mtime older than the forecasts (else `gfm commit` sees the forecasts as stale)
        index=path("train_index"),
        code=CODE["forecast"],
    output:
        directory(path("forecasts")),
    log:
        "logs/forecast/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/forecast/{task}/{optimizer}.tsv"
    params:
        store="{task}-{optimizer}",
        models=lambda wc, input: os.path.dirname(input.index),  # the store's models directory
        config=trigger("forecast"),
    threads: 1
    shell:
        "gfm forecast --params params.yaml --store {params.store} --in {input.store} --split {input.split} "
        "--models {params.models} --out {output} --threads {threads} > {log} 2>&1"
