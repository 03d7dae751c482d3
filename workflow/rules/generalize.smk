# Stage generalize: forecasters fitted on one store forecast another store's test runs.


def generalize_inputs():
    g = config.get("generalize", {})
    out = []
    for pair in g.get("pairs", []):
        for key in (pair["source"], pair["target"]):
            task, optimizer = STORES[key]
            out += [model_path(task, optimizer, m) for m in ["last_value", *g.get("models", [])]]
        task, optimizer = STORES[pair["target"]]
        out += [trajectory_path(task, optimizer), split_path(task, optimizer)]
    return sorted(set(out))


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
                                      "generalize": config.get("generalize", {})}, sort_keys=True),
    threads: 1
    shell:
        "{GFM} generalize --params {PARAMS_FILE} --out {output} --threads {threads} > {log} 2>&1"
