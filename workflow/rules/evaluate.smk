# Stages evaluate (one job per store) and report (one job).


def evaluate_config(task, optimizer):
    """The params keys an evaluate job reads (mirrors its DVC stage's `params:`)."""
    keys = {"seed": config["seed"], "forecast": config.get("forecast", {}),
            "train.models": train_models(), "stores": config["stores"][f"{task}-{optimizer}"],
            "tasks": config["tasks"][task], "evaluate": config.get("evaluate", {})}
    return json.dumps(keys, sort_keys=True)


rule evaluate:
    """Weight MSE per horizon, downstream loss/accuracy, plot data: every model of one store."""
    input:
        store="data/trajectories/{task}/{optimizer}.zarr",
        split="data/splits/{task}/{optimizer}.json",
        forecasts="data/forecasts/{task}/{optimizer}",
    output:
        metrics="data/metrics/{task}/{optimizer}.json",
        plots=directory("data/plots/{task}/{optimizer}"),
    log:
        "logs/evaluate/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/evaluate/{task}/{optimizer}.tsv"
    params:
        store="{task}-{optimizer}",
        config=lambda wc: evaluate_config(wc.task, wc.optimizer),
    threads: 1
    shell:
        "{GFM} evaluate --params {PARAMS_FILE} --store {params.store} --in {input.store} --split {input.split} "
        "--forecasts {input.forecasts} --metrics {output.metrics} --plots {output.plots} --threads {threads} > {log} 2>&1"


rule report:
    """reports/summary.md + summary.html + figures from every store's metrics."""
    input:
        metrics=[metrics_path(t, o) for t, o in STORES.values() if store_models(t, o)],
        plots=[plots_path(t, o) for t, o in STORES.values() if store_models(t, o)],
        generalize="data/metrics/generalize.json",
        accelerate=[accelerate_path(t, o) for t, o in accelerate_stores()],
        models=[train_index_path(t, o) for t, o in STORES.values() if store_models(t, o)],  # budgets, tuning, val curves
    output:
        directory("reports"),
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    params:
        config=lambda wc: json.dumps({"report": config.get("report", {}), "train": config.get("train", {}),
                                      "seed": config["seed"],
                                      "generate.dataset_seeds": config["generate"]["dataset_seeds"],
                                      "stores": config["stores"], "forecast": config.get("forecast", {}),
                                      "generalize": config.get("generalize", {}),
                                      "accelerate": config.get("accelerate", {})}, sort_keys=True),
    shell:
        "{GFM} report --params {PARAMS_FILE} --metrics data/metrics --plots data/plots --accelerate data/metrics/accelerate --models data/models --out {output} > {log} 2>&1"
