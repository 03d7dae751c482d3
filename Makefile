# gfm-pipeline. `make run` and `make test` each set everything up on a fresh machine (Python 3.11 + pip).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# PRESET=<name>: run params.<name>.yaml in build/<name>/ instead of params.yaml here (`make run PRESET=quick`)
PRESET ?=
# DRIVER=snakemake: one Snakemake run over the whole DAG, so jobs of different stages share the cores and
# Snakemake starts once, then `gfm commit` records the outputs in dvc.lock (dvc status clean afterwards).
# DRIVER=dvc: `dvc repro`, which runs stages one after another, one Snakemake start each (BENCHMARKS.md).
DRIVER ?= snakemake
RUN_DIR := $(if $(PRESET),build/$(PRESET),.)
# TORCH_INDEX=<url>: the package index torch is installed from (version: constraints.txt). Empty = pip's own
# index: on PyPI the Linux wheel is the CUDA build (GBs of nvidia-* packages); where a CPU wheel lies in
# pip's find-links (as on the machines this was tested on) that one. https://download.pytorch.org/whl/cpu
# for the CPU-only build, .../whl/cu<version> for one CUDA version. To switch: rm -rf .venv, make venv again.
TORCH_INDEX ?=

.PHONY: help venv run test test-fast test-full lint smoke dag bench clean adopt pull commit cluster cluster-up cluster-down test-cluster

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# pip and setuptools at their pins too (tests/test_packaging.py builds the package with the venv's setuptools)
	$(BIN)/python -m pip install -q -c constraints.txt --upgrade pip setuptools
	# torch first, from TORCH_INDEX when set, so the next step finds its pin satisfied and keeps that build
	$(BIN)/python -m pip install -q -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[pipeline,test]'
	touch $(STAMP)

venv: $(STAMP)  ## create/update .venv with the pinned versions (TORCH_INDEX=<url>: CPU/CUDA torch)

run: $(STAMP)  ## run the pipeline on params.yaml; PRESET=quick: params.quick.yaml in build/quick/; DRIVER=dvc
	$(if $(filter $(DRIVER),snakemake dvc),,$(error DRIVER=$(DRIVER): expected snakemake or dvc))
ifneq ($(PRESET),)
	$(BIN)/gfm workspace build/$(PRESET) --params params.$(PRESET).yaml
endif
ifeq ($(DRIVER),dvc)
	cd $(RUN_DIR) && $(BIN)/dvc repro
else
	cd $(RUN_DIR) && $(BIN)/snakemake --cores all && $(BIN)/gfm commit
endif
	@echo "report: $(RUN_DIR)/reports/summary.md"

test: $(STAMP)  ## run the test suite (not slow, not gpu)
	$(BIN)/python -m pytest -m "not slow and not gpu and not cluster" $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the day-to-day subset (no end-to-end tool runs; its time: BENCHMARKS.md); CI runs make test
	$(BIN)/python -m pytest -m "fast and not slow and not gpu and not cluster" $(PYTEST_ARGS)

test-full: $(STAMP)  ## every test that this machine can run
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff + snakemake --lint (every lint but conda/container: no channel or registry reachable here)
	$(BIN)/ruff check src tests benchmarks
	@out=$$($(BIN)/snakemake --lint 2>&1); rc=$$?; \
	if grep -E '^ +\* ' <<<"$$out" | grep -vq 'Specify a conda environment or container'; then \
	  echo "$$out"; exit 1; \
	elif [ $$rc != 0 ] && ! grep -q '^Lints for' <<<"$$out"; then echo "$$out"; exit 1; fi; \
	echo "snakemake --lint: clean apart from the conda/container lint"

dag: $(STAMP)  ## what would run, per driver
	$(BIN)/snakemake -n
	$(BIN)/dvc repro --dry

bench: $(STAMP)  ## benchmarks behind BENCHMARKS.md
	$(BIN)/python -m benchmarks.generation

adopt: $(STAMP)  ## after dvc pull/checkout: mark the restored outputs current for Snakemake
	$(BIN)/gfm adopt

pull: $(STAMP)  ## consumer: dvc pull from the default remote, then adopt
	$(BIN)/gfm adopt --pull

cluster: $(STAMP)  ## SLURM: check the profile, run the pipeline, record it in DVC (then `dvc push`)
	$(BIN)/gfm slurm-check --profile profiles/slurm
	$(BIN)/snakemake --profile profiles/slurm
	$(BIN)/gfm commit --profile profiles/slurm

commit: $(STAMP)  ## after a direct snakemake run: re-run stale outputs, dvc commit -f
	$(BIN)/gfm commit

cluster-up:  ## (root) bring up a one-node SLURM cluster on this machine
	tests/cluster/slurm-up.sh

cluster-down:  ## (root) stop it and drop its job state
	tests/cluster/slurm-down.sh

test-cluster: $(STAMP)  ## the SLURM tests (brings a cluster up when root and none is running)
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

clean:  ## remove the venv and Snakemake state (not data/)
	rm -rf $(VENV) .snakemake
