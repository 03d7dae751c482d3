"""The pipeline under its two drivers, on the tiny params in a throwaway repository copy."""

from __future__ import annotations

import re

import yaml

from conftest import run_tool


def stale_stages(repo) -> set[str]:
    """Stages `dvc repro --dry` would run."""
    out = run_tool(["dvc", "repro", "--dry"], repo).stdout
    return set(re.findall(r"Running stage '([^']+)'", out))


def test_dvc_repro_twice_then_one_store_edit(repo_copy):
    repo = repo_copy
    run_tool(["dvc", "repro"], repo, timeout=1200)
    stores = yaml.safe_load((repo / "params.yaml").read_text())["stores"]
    for spec in stores.values():
        task, opt = spec["task"], spec["optimizer"]["name"]
        assert (repo / "data" / "trajectories" / task / f"{opt}.zarr" / "zarr.json").is_file()
        assert (repo / "data" / "splits" / task / f"{opt}.json").is_file()
    assert (repo / "dvc.lock").is_file()
    assert "Data and pipelines are up to date" in run_tool(["dvc", "repro"], repo).stdout
    assert stale_stages(repo) == set()

    # DVC sees the metrics and renders the plots.
    shown = run_tool(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "final_xlv" in shown and "final_mse" not in shown   # the headline (metrics.json), not the full metrics
    run_tool(["dvc", "plots", "show", "-o", str(repo / "dvc_plots")], repo)
    assert (repo / "dvc_plots" / "index.html").is_file()
    assert (repo / "reports" / "summary.md").is_file() and (repo / "reports" / "summary.html").is_file()

    # Changing only an evaluate parameter re-runs only evaluate and report.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["trajectory_params"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = stale_stages(repo)
    assert stale and all(s.startswith("evaluate@") or s == "report" for s in stale), stale
    params["evaluate"]["trajectory_params"] -= 1

    # Change one optimizer's learning rate: only that store's stages are stale.
    params["stores"]["mlp_regression-adam"]["optimizer"]["lr"] = 0.02
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = stale_stages(repo)
    assert "generate@mlp_regression-adam" in stale
    # plus the stages that read every store's entry (report, generalize, headline), never another store's stages
    assert all(s.endswith("@mlp_regression-adam") or s in ("report", "generalize", "headline") for s in stale), stale


def test_snakemake_plans_every_store(repo_copy):
    out = run_tool(["snakemake", "-n"], repo_copy).stdout
    stores = yaml.safe_load((repo_copy / "params.yaml").read_text())["stores"]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert int(counts["generate"]) == len(stores) and int(counts["split"]) == len(stores)
