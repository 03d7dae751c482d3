# Stages evaluate (one job per store), headline (one job) and report (one job).

# `snakemake --report report.html` (after a run): the report stage's figures with their captions.
report: "../report/workflow.rst"


rule evaluate:
    """Weight MSE per horizon, downstream loss/accuracy, plot data: every model of one store."""
    input:
        store=path("trajectories"),
        split=path("split"),
        forecasts=path("forecasts"),
        code=CODE["evaluate"],
    output:
        metrics=path("metrics"),
        plots=directory(path("plots")),
    log:
        "logs/evaluate/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/evaluate/{task}/{optimizer}.tsv"
    params:
        store="{task}-{optimizer}",
        config=trigger("evaluate"),
    threads: 1
    shell:
        "gfm evaluate --params params.yaml --store {params.store} --in {input.store} --split {input.split} "
        "--forecasts {input.forecasts} --metrics {output.metrics} --plots {output.plots} --threads {threads} "
        "> {log} 2>&1"


rule headline:
    """metrics.json (one xLV per store and model) and plots/ (per-kind plot CSVs): what DVC shows, in git."""
    input:
        metrics=of_stores("metrics", evaluated_stores()),
        plots=of_stores("plots", evaluated_stores()),
        # not read, but inside data/metrics, which the DVC stage depends on as a whole: running after them
        # keeps the directory's hash at run time equal to its final one (else `gfm commit` re-runs headline)
        settled=[path("generalize")] + of_stores("accelerate", accelerate_stores()),
        code=CODE["headline"],
    output:
        metrics=path("headline_metrics"),
        plots=directory(path("headline_plots")),
    log:
        "logs/headline.log",
    benchmark:
        "logs/benchmarks/headline.tsv"
    params:
        # which stores it shows: a store removed from params.yaml must disappear from metrics.json although
        # its old metrics file may stay in data/metrics
        config=trigger("headline"),
    threads: 1
    shell:
        "gfm headline --metrics {input.metrics} --plots data/plots --out {output.metrics} "
        "--plot-data {output.plots} > {log} 2>&1"


rule report:
    """reports/summary.md + summary.html + figures from every store's metrics."""
    input:
        metrics=of_stores("metrics", evaluated_stores()),
        plots=of_stores("plots", evaluated_stores()),
        generalize=path("generalize"),
        accelerate=of_stores("accelerate", accelerate_stores()),
        models=of_stores("train_index", evaluated_stores()),  # budgets, tuning, val curves
        code=CODE["report"],
    output:
        report(directory(path("reports")), patterns=["figures/{figure}.png"], caption="../report/figure.rst",
               category=figure_category, labels={"figure": "{figure}"}),
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    params:
        config=trigger("report"),
    shell:
        "gfm report --params params.yaml --metrics data/metrics --plots data/plots "
        "--accelerate data/metrics/accelerate --models data/models --out {output} > {log} 2>&1"
