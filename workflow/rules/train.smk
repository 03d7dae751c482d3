# Stage train: one job per (task, optimizer, model); each job fits that model once per dataset seed.

# The forecaster kinds a GPU may train (their class's `neural`), read from the forecasters' source, not imported:
# the Snakefile must not import torch.
from gfm.pipeline.forecaster_kinds import neural_kinds


rule train:
    """Fit one forecaster per dataset seed of one store (early-stopped on the val runs)."""
    input:
        store=path("trajectories"),
        split=path("split"),
        code=CODE["train"],
    output:
        directory(path("model")),
    log:
        "logs/train/{task}/{optimizer}/{model}.log",
    benchmark:
        "logs/benchmarks/train/{task}/{optimizer}/{model}.tsv"
    params:
        store="{task}-{optimizer}",
        # `device` is left out on purpose: a machine setting, not a study parameter (docs/architecture.md §6)
        config=trigger("train"),
    threads: 1
    resources:
        # Only `device: cuda` sends neural training to a GPU: with `auto` a train job asks for none, because no
        # measurement shows a GPU speeding up these small-batch fits, which are short and largely process
        # start-up (BENCHMARKS.md, "Forecaster training"; profiles/README.md). Closed-form kinds never use one.
        gpu=lambda wc: int(config["device"] == "cuda" and config["models"][wc.model]["kind"] in neural_kinds()),
    shell:
        "gfm train --params params.yaml --store {params.store} --model {wildcards.model} "
        "--split {input.split} --in {input.store} --out {output} --threads {threads} > {log} 2>&1"


rule train_index:
    """The list of a store's trained models: the one target of its DVC stage (dvc.yaml cannot interpolate
    a list of model directories into `cmd`)."""
    input:
        models=lambda wc: model_paths(wc.task, wc.optimizer, store_models(wc.task, wc.optimizer)),
        code=CODE["train"],
    output:
        path("train_index"),
    log:
        "logs/train/{task}/{optimizer}/index.log",
    benchmark:
        "logs/benchmarks/train/{task}/{optimizer}/index.tsv"
    params:
        store="{task}-{optimizer}",
        config=trigger("train_index"),
    shell:
        "gfm train-index --params params.yaml --store {params.store} --out {output} > {log} 2>&1"
