rule generate:
    """Train every run of one (task, optimizer) store at once and record the trajectories."""
    output:
        directory("data/trajectories/{task}/{optimizer}.zarr"),
    log:
        "logs/generate/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/generate/{task}/{optimizer}.tsv"
    params:
        store="{task}-{optimizer}",
        # The params this store depends on: Snakemake's params trigger re-runs the job when they change.
        config=lambda wc: generate_config(wc.task, wc.optimizer),
    threads: 1
    resources:
        gpu=0 if config["device"] == "cpu" else 1,
    shell:
        "{GFM} generate --params {PARAMS_FILE} --store {params.store} --out {output} --threads {threads} > {log} 2>&1"


rule split:
    """Train / val / test run ids of one store, per dataset seed."""
    input:
        "data/trajectories/{task}/{optimizer}.zarr",
    output:
        "data/splits/{task}/{optimizer}.json",
    log:
        "logs/split/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/split/{task}/{optimizer}.tsv"
    params:
        config=lambda wc: json.dumps(config["split"], sort_keys=True),
    shell:
        "{GFM} split --params {PARAMS_FILE} --in {input} --out {output} > {log} 2>&1"
