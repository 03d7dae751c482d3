# Stage generalize: forecasters fitted on one store forecast another store's test runs.


rule generalize:
    """Cross-architecture / cross-initialisation transfer of trained forecasters."""
    input:
        data=generalize_inputs(),
        code=CODE["generalize"],
    output:
        path("generalize"),
    log:
        "logs/generalize.log",
    benchmark:
        "logs/benchmarks/generalize.tsv"
    params:
        config=trigger("generalize"),
    threads: 1
    shell:
        "gfm generalize --params params.yaml --out {output} --threads {threads} > {log} 2>&1"
