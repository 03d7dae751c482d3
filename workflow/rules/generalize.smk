# Stage generalize: forecasters fitted on one store forecast another store's test runs.


def generalize_inputs():
    """Every store's trajectories, split and trained models: the job reads the pairs' subset, but its DVC
    stage depends on the parent directories (dvc.yaml cannot list pair-dependent paths), so both drivers
    wait for the same things."""
    out = []
    for task, optimizer in STORES.values():
        out += [trajectory_path(task, optimizer), split_path(task, optimizer)]
        if store_models(task, optimizer):
            out.append(train_index_path(task, optimizer))
    return out


rule generalize:
    """Cross-architecture / cross-initialisation transfer of trained forecasters."""
    input:
        generalize_inputs(),
    output:
        "data/metrics/generalize.json",
    log:
        "logs/generalize.log",
    benchmark:
        "logs/benchmarks/generalize.tsv"
    params:
        config=lambda wc: json.dumps({"forecast": config.get("forecast", {}),
                                      "generalize": config.get("generalize", {}),
                                      "tasks": config["tasks"], "stores": config["stores"]}, sort_keys=True),
    threads: 1
    shell:
        "{GFM} generalize --params {PARAMS_FILE} --out {output} --threads {threads} > {log} 2>&1"
