# Stages evaluate (one job per store), headline (one job) and report (one job).

# `snakemake --report report.html` (after a run): the report stage's figures with their captions.
report: "../report/workflow.rst"


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


def evaluated_stores():
    """(task, optimizer) of every store that trains a model, in params order: the stores evaluate scores."""
    return [(t, o) for t, o in STORES.values() if store_models(t, o)]


rule headline:
    """metrics.json (one xLV per store and model) and plots/ (per-kind plot CSVs): what DVC shows, in git."""
    input:
        metrics=[metrics_path(t, o) for t, o in evaluated_stores()],
        plots=[plots_path(t, o) for t, o in evaluated_stores()],
        # not read, but inside data/metrics, which the DVC stage depends on as a whole: running after them
        # keeps the directory's hash at run time equal to its final one (else `gfm commit` re-runs headline)
        settled=["data/metrics/generalize.json"] + [accelerate_path(t, o) for t, o in accelerate_stores()],
    output:
        metrics="metrics.json",
        plots=directory("plots"),
    log:
        "logs/headline.log",
    benchmark:
        "logs/benchmarks/headline.tsv"
    params:
        # which stores it shows: the keys its DVC stage lists (a store removed from params.yaml must
        # disappear from metrics.json although its old metrics file may stay in data/metrics)
        config=lambda wc: json.dumps({"stores": config["stores"],
                                      "train.models": config.get("train", {}).get("models", [])}, sort_keys=True),
    threads: 1
    shell:
        "{GFM} headline --metrics {input.metrics} --plots data/plots --out {output.metrics} "
        "--plot-data {output.plots} > {log} 2>&1"


def _figure_category(wildcards):
    """Snakemake report category of one reports/figures/<figure>.png, from the suffix report.py gives it."""
    for suffix, category in (("-mse", "Forecast error vs horizon"), ("-trajectory", "Trajectories"),
                             ("-val-curves", "Validation curves")):
        if wildcards.figure.endswith(suffix):
            return category
    return "Overview"


rule report:
    """reports/summary.md + summary.html + figures from every store's metrics."""
    input:
        metrics=[metrics_path(t, o) for t, o in evaluated_stores()],
        plots=[plots_path(t, o) for t, o in evaluated_stores()],
        generalize="data/metrics/generalize.json",
        accelerate=[accelerate_path(t, o) for t, o in accelerate_stores()],
        models=[train_index_path(t, o) for t, o in evaluated_stores()],  # budgets, tuning, val curves
    output:
        report(directory("reports"), patterns=["figures/{figure}.png"], caption="../report/figure.rst",
               category=_figure_category, labels={"figure": "{figure}"}),
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
