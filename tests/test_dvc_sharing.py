"""Sharing results through a DVC remote, tested with the real tools on the tiny study.

A producer runs the pipeline and `dvc push`es to the project's default remote (.dvc/config: a directory next
to the checkout); a consumer clones, `dvc pull`s and gets a workspace where `dvc status` is clean,
`dvc repro` runs nothing and, after `gfm adopt`, `snakemake -n` plans nothing. The bad cases are clear
errors: a missing remote, a corrupted object on the remote (nothing bad reaches the workspace), and a direct
Snakemake run after a code edit (`gfm commit` re-runs the stale outputs before recording them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_tool
from repo_helpers import make_repo, tree

pytestmark = pytest.mark.timeout(900)

NOTHING = "Nothing to be done"


def _outs(root: Path) -> list[str]:
    from gfm.drivers import dvc_stages

    return [o for s in dvc_stages(root) for o in s.outs]


@pytest.fixture(scope="module")
def producer(tmp_path_factory) -> Path:
    """The tiny pipeline run with `dvc repro`, committed, and pushed (outputs and run-cache)."""
    base = tmp_path_factory.mktemp("sharing")
    repo = make_repo(base / "producer")
    run_tool(["dvc", "repro"], repo, timeout=1200)
    run_tool(["git", "add", "dvc.lock", "metrics.json", "plots"], repo)   # headline outputs: git, not the cache
    run_tool(["git", "commit", "-qm", "results"], repo)
    run_tool(["dvc", "push", "--run-cache"], repo)
    return repo


def _clone(producer: Path, name: str) -> Path:
    dest = producer.parent / name
    run_tool(["git", "clone", "-q", str(producer), str(dest)], producer.parent)
    return dest


def test_default_remote_is_next_to_the_checkout(producer):
    remotes = run_tool(["dvc", "remote", "list"], producer).stdout.split()
    assert remotes[:2] == ["local", str(producer.parent / "gfm-dvc-remote")], remotes
    assert "(default)" in remotes
    assert any((producer.parent / "gfm-dvc-remote" / "files" / "md5").iterdir()), "dvc push stored nothing"


def test_fresh_clone_pull_plans_nothing(producer):
    consumer = _clone(producer, "consumer")
    run_tool(["dvc", "pull"], consumer)
    outs = _outs(consumer)
    assert tree(consumer, outs) == tree(producer, outs)          # byte for byte
    assert json.loads(run_tool(["dvc", "status", "--json"], consumer).stdout) == {}
    repro = run_tool(["dvc", "repro"], consumer)
    assert "Data and pipelines are up to date" in repro.stdout, repro.stdout
    assert "Running stage" not in repro.stdout

    adopted = run_tool(["gfm", "adopt"], consumer)
    assert "dvc status clean" in adopted.stdout
    plan = run_tool(["snakemake", "-n"], consumer)
    assert NOTHING in plan.stdout + plan.stderr, plan.stdout[-2000:]
    assert json.loads(run_tool(["dvc", "status", "--json"], consumer).stdout) == {}

    # adopt recorded what each output was made from: a params edit is seen by Snakemake again
    params = yaml.safe_load((consumer / "params.yaml").read_text())
    params["split"]["train"] = 0.4
    params["split"]["val"] = 0.35
    (consumer / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rows = {r["output_file"]: r for r in _summary(consumer)}
    changed = {o for o, r in rows.items() if r["status"] == "params changed"}
    assert changed == {o for o in rows if o.startswith("data/splits/")}, rows


def _summary(root: Path) -> list[dict]:
    from snakemake_helpers import snakemake_summary

    return snakemake_summary(root)


def test_pull_with_run_cache_then_repro_runs_nothing(producer):
    consumer = _clone(producer, "consumer-runcache")
    run_tool(["dvc", "pull", "--run-cache"], consumer)
    repro = run_tool(["dvc", "repro"], consumer)
    assert "Running stage" not in repro.stdout, repro.stdout


def test_pull_from_missing_remote_is_a_clear_error(producer):
    consumer = _clone(producer, "consumer-noremote")
    run_tool(["dvc", "remote", "modify", "--local", "local", "url", str(producer.parent / "nowhere")], consumer)
    plain = run_tool(["dvc", "pull"], consumer, check=False)
    assert plain.returncode != 0
    proc = run_tool(["gfm", "adopt", "--pull"], consumer, check=False)
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "does not exist" in proc.stderr, proc.stderr
    assert "dvc remote modify --local" in proc.stderr
    assert not any((consumer / "data").rglob("*.json")), "nothing may be checked out"


def test_corrupted_remote_object_never_reaches_the_workspace(producer):
    lock = yaml.safe_load((producer / "dvc.lock").read_text())
    name, stage = next((n, s) for n, s in lock["stages"].items() if not s["outs"][0]["md5"].endswith(".dir"))
    out = stage["outs"][0]
    obj = producer.parent / "gfm-dvc-remote" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
    good = obj.read_bytes()
    bad = b'{"corrupted": true}\n'
    obj.chmod(0o644)
    obj.write_bytes(bad)
    try:
        consumer = _clone(producer, "consumer-corrupt")
        # gfm audits the local remote first (a plain `dvc pull` refuses the object, then deletes it from the
        # remote and reports it "missing")
        proc = run_tool(["gfm", "adopt", "--pull"], consumer, check=False)
        assert proc.returncode == 2
        assert "hash mismatch" in proc.stderr and out["md5"] in proc.stderr, proc.stderr
        assert str(obj) in proc.stderr
        plain = run_tool(["dvc", "pull"], consumer, check=False)
        assert plain.returncode != 0, "DVC accepted a corrupted object"
        for f in [*consumer.joinpath("data").rglob("*"), *consumer.joinpath(".dvc", "cache").rglob("*")]:
            assert not (f.is_file() and f.read_bytes() == bad), f"bad data reached {f}"
        assert not (consumer / out["path"]).exists()
        status = json.loads(run_tool(["dvc", "status", "--json"], consumer).stdout)
        assert name in status   # reported missing, not silently present
    finally:
        obj.write_bytes(good)


def test_commit_after_direct_snakemake_run_reruns_stale_outputs(producer, tmp_path):
    """Cluster path without a cluster: outputs made by a direct `snakemake` run, then `gfm commit`."""
    repo = _clone(producer, "cluster-like")
    run_tool(["dvc", "pull"], repo)
    run_tool(["gfm", "adopt"], repo)
    outs = _outs(repo)
    split_outs = [o for o in outs if o.startswith("data/splits/")]
    before = {o: (repo / o).stat().st_mtime for o in split_outs}

    # 1. a params edit: Snakemake re-runs the affected jobs itself; gfm commit re-runs nothing more
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["split"]["train"] = 0.4
    params["split"]["val"] = 0.35
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_tool(["snakemake", "--cores", "2"], repo)
    dry = run_tool(["gfm", "commit", "--dry-run"], repo)
    verdicts = dry.stdout.splitlines()
    assert not any(v.startswith("re-run ") for v in verdicts) and "would re-run 0 stages" in dry.stdout, dry.stdout
    run_tool(["gfm", "commit"], repo)
    assert json.loads(run_tool(["dvc", "status", "--json"], repo).stdout) == {}
    after_params = {o: (repo / o).stat().st_mtime for o in split_outs}
    assert all(after_params[o] > before[o] for o in split_outs)

    # 2. a code edit: a stage's code is a rule input, so Snakemake sees it and re-runs the jobs that read it;
    # before that, gfm commit finds the split outputs stale by content (the checksum Snakemake recorded for
    # split.py differs), and after it, made from the current code (nothing to re-run)
    module = repo / "src/gfm/stages/split.py"
    module.write_text(module.read_text() + "\n# edited\n")
    plan = run_tool(["snakemake", "-n"], repo)
    assert NOTHING not in plan.stdout + plan.stderr and "split" in plan.stdout
    dry = run_tool(["gfm", "commit", "--dry-run"], repo)
    assert dry.stdout.count("re-run  split@") == len(split_outs), dry.stdout
    assert "re-run  generate@" not in dry.stdout       # generation does not import gfm.stages.split
    run_tool(["snakemake", "--cores", "2"], repo)
    dry = run_tool(["gfm", "commit", "--dry-run"], repo)
    assert "would re-run 0 stages" in dry.stdout, dry.stdout
    run_tool(["gfm", "commit"], repo)
    assert json.loads(run_tool(["dvc", "status", "--json"], repo).stdout) == {}
    assert all((repo / o).stat().st_mtime > after_params[o] for o in split_outs), "stale outputs committed"

    # 3. the recorded results can be shared
    run_tool(["dvc", "remote", "add", "--local", "-f", "-d", "mine", str(tmp_path / "remote")], repo)
    run_tool(["dvc", "push"], repo)
    assert any((tmp_path / "remote").rglob("*"))


def test_make_run_path_records_what_dvc_repro_would(producer, tmp_path):
    """`make run` = one `snakemake --cores all` over the whole DAG, then `gfm commit`: on a fresh repository
    nothing is re-run, `dvc status` is clean, `dvc repro` has nothing to do, and the outputs are byte for byte
    the ones `dvc repro` made in the producer."""
    repo = make_repo(tmp_path / "make-run")
    run_tool(["snakemake", "--cores", "all"], repo, timeout=1200)
    dry = run_tool(["gfm", "commit", "--dry-run"], repo)
    assert "would re-run 0 stages" in dry.stdout and "re-run " not in dry.stdout.replace("would re-run", ""), dry.stdout
    run_tool(["gfm", "commit"], repo)
    assert json.loads(run_tool(["dvc", "status", "--json"], repo).stdout) == {}
    plan = run_tool(["dvc", "repro", "--dry"], repo)
    assert "Running stage" not in plan.stdout, plan.stdout
    outs = _outs(repo)
    assert outs and tree(repo, outs) == tree(producer, outs)
