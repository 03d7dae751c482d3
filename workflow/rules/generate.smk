# Stages generate and split: one job per store each.


rule generate:
    """Train every run of one (task, optimizer) store at once and record the trajectories; a declared store
    (task kind `recorded`) is taken in from its path instead."""
    input:
        code=CODE["generate"],
        declared=declared_source,
    output:
        directory(path("trajectories")),
    log:
        "logs/generate/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/generate/{task}/{optimizer}.tsv"
    params:
        store="{task}-{optimizer}",
        # The params this store depends on: Snakemake's params trigger re-runs the job when they change.
        config=trigger("generate"),
    threads: 1
    resources:
        gpu=0 if config["device"] == "cpu" else 1,
    shell:
        "gfm generate --params params.yaml --store {params.store} --out {output} --threads {threads} > {log} 2>&1"


rule split:
    """Train / val / test run ids of one store, per dataset seed."""
    input:
        store=path("trajectories"),
        code=CODE["split"],
    output:
        path("split"),
    log:
        "logs/split/{task}/{optimizer}.log",
    benchmark:
        "logs/benchmarks/split/{task}/{optimizer}.tsv"
    params:
        config=trigger("split"),
    shell:
        "gfm split --params params.yaml --in {input.store} --out {output} > {log} 2>&1"
