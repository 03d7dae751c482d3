"""The pipeline on a real SLURM cluster. Marked `cluster`; `.ci/run` runs it as
root after tests/cluster/slurm-up.sh has brought up a one-node cluster (and tears it down afterwards).

Run by hand:  sudo tests/cluster/slurm-up.sh && pytest -m cluster; sudo tests/cluster/slurm-down.sh
Without a running cluster the fixture brings one up itself when it can (root + apt-get) and stops it at the
end; otherwise every test is skipped with the reason (never passed silently).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT, run_tool
from gfm import drivers
from repo_helpers import make_repo, tree
from test_profiles import local_rules

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500)]

UP = ROOT / "tests" / "cluster" / "slurm-up.sh"
DOWN = ROOT / "tests" / "cluster" / "slurm-down.sh"


def _idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return proc.returncode == 0 and "idle" in proc.stdout.split() + [s.rstrip("*") for s in proc.stdout.split()]


@pytest.fixture(scope="module")
def slurm():
    """A usable SLURM cluster: the one that is up, or one brought up (and later stopped) here."""
    started = False
    if not _idle():
        if os.geteuid() != 0:
            pytest.skip("no SLURM cluster is up and bringing one up needs root (sudo tests/cluster/slurm-up.sh)")
        if shutil.which("apt-get") is None:
            pytest.skip("no SLURM cluster is up and there is no apt-get to install slurm-wlm")
        proc = subprocess.run([str(UP)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"slurm-up.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        started = True
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    accounting = "accounting_storage/none" not in conf
    yield {"accounting": accounting}
    if started:
        subprocess.run([str(DOWN)], capture_output=True, text=True, timeout=120)


def _cluster_args(slurm: dict) -> list[str]:
    """What this one small node needs on top of profiles/slurm (see profiles/README.md): the node's size as
    the group cap, per-rule requests capped to fit it (the profile's values are expressions of `attempt`, so
    the cap wraps them: min(<expr>, cap)), quick first status check, squeue without slurmdbd."""
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True).stdout
    mem = int(int(re.search(r"RealMemory=(\d+)", node).group(1)) * 0.8)
    cpus = int(re.search(r"CPUTot=(\d+)", node).group(1))
    conf = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    caps = {"cpus_per_task": cpus, "mem_mb": mem // 2}
    per_rule = []
    for rule, res in (conf.get("set-resources") or {}).items():
        for key, value in res.items():
            if key in caps:
                value = f"min({value}, {caps[key]})"
            per_rule.append(f"{rule}:{key}={value}")
    args = ["--jobs", "4", "--resources", f"cpus_per_task={cpus}", f"mem_mb={mem}", "gpu=1",
            "--set-resources", *per_rule, "--slurm-init-seconds-before-status-checks", "5"]
    if not slurm["accounting"]:   # sacct cannot see jobs without slurmdbd: poll with squeue
        args += ["--slurm-status-command", "squeue"]
    return args


def test_pipeline_on_slurm_equals_local_run(slurm, tmp_path):
    # device: auto makes the GPU rules ask SLURM for a GPU (the fake one slurm-up.sh declares); on a CPU
    # machine the code still runs on the CPU, so the outputs must equal the local run's.
    local = make_repo(tmp_path / "local")
    cluster = make_repo(tmp_path / "cluster")
    for repo in (local, cluster):
        doc = yaml.safe_load((repo / "params.yaml").read_text())
        doc["device"] = "auto"
        (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    run_tool(["dvc", "repro"], local, timeout=1200)

    planned = [j for j in drivers.snakemake_jobs(cluster) if j["output"]]
    assert planned
    proc = run_tool(["timeout", "1200", "snakemake", "--profile", "profiles/slurm", *_cluster_args(slurm)],
                    cluster, timeout=1300)
    log = proc.stdout + proc.stderr
    job_ids = sorted(set(re.findall(r"submitted with SLURM jobid (\d+)", log)))
    assert job_ids, log[-3000:]
    assert "Rule: generate" not in log.split("submitted with SLURM jobid")[0], "a job ran before any sbatch"

    # every job of a submitted rule ran inside a SLURM job (its outputs appear in the kept SLURM job logs);
    # the local rules ran on the submit host (theirs appear in none)
    slurm_logs = "".join(p.read_text() for p in (cluster / "logs" / "slurm").rglob("*.log"))
    assert set(re.findall(r"/(\d+)\.log", "\n".join(map(str, (cluster / "logs" / "slurm").rglob("*.log"))))) \
        == set(job_ids)
    on_host = local_rules()
    not_in_slurm = [o for j in planned if j["rule"] not in on_host for o in j["output"] if o not in slurm_logs]
    assert not not_in_slurm, f"outputs not made inside a SLURM job: {not_in_slurm}"
    local_jobs = [j for j in planned if j["rule"] in on_host]
    assert local_jobs and not [o for j in local_jobs for o in j["output"] if f"output: {o}" in slurm_logs]
    # grouping bundles the jobs: far fewer SLURM jobs than Snakemake jobs
    assert len(job_ids) < len(planned), (job_ids, len(planned))
    if slurm["accounting"]:
        states = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                                capture_output=True, text=True).stdout
        assert {line.split("|")[0] for line in states.split()} >= set(job_ids)
        assert all(line.split("|")[1] == "COMPLETED" for line in states.split()), states

    # a GPU rule asked SLURM for a GPU
    gpu_jobs = [j for j in planned if j["rule"] == "generate"]
    assert gpu_jobs and "gpu" in log, "no job requested a GPU"

    # item 4: record the cluster run in DVC; status clean; outputs byte-identical to the local run
    committed = run_tool(["gfm", "commit", "--profile", "profiles/slurm"], cluster)
    # On SLURM the scheduler can leave a models directory newer than the forecasts made from it (grouped
    # jobs are touched after they finish); gfm commit then re-makes those cheap, deterministic stages, which
    # is its job. The expensive ones must never be re-made after a clean cluster run.
    rerun = [v for v in committed.stdout.splitlines() if v.startswith("re-run ")]
    assert not [v for v in rerun if v.split()[1].split("@")[0] in ("generate", "split", "train")], committed.stdout
    assert json.loads(run_tool(["dvc", "status", "--json"], cluster).stdout) == {}
    outs = [o for s in drivers.dvc_stages(cluster) for o in s.outs]
    assert tree(cluster, outs) == tree(local, outs)
    lock_c = yaml.safe_load((cluster / "dvc.lock").read_text())["stages"]
    lock_l = yaml.safe_load((local / "dvc.lock").read_text())["stages"]
    assert {n: s["outs"] for n, s in lock_c.items()} == {n: s["outs"] for n, s in lock_l.items()}
    run_tool(["dvc", "remote", "add", "--local", "-f", "-d", "ci", str(tmp_path / "remote")], cluster)
    run_tool(["dvc", "push"], cluster)
    assert any((tmp_path / "remote").rglob("*"))


def test_unknown_partition_is_a_clear_error(slurm, tmp_path):
    repo = make_repo(tmp_path / "repo")
    bad = tmp_path / "bad-profile"
    shutil.copytree(ROOT / "profiles" / "slurm", bad)
    conf = yaml.safe_load((bad / "config.yaml").read_text())
    conf["default-resources"]["slurm_partition"] = "no_such_partition"
    (bad / "config.yaml").write_text(yaml.safe_dump(conf))

    check = run_tool(["gfm", "slurm-check", "--profile", str(bad)], repo, check=False)
    assert check.returncode == 2
    assert "no_such_partition" in check.stderr and "this cluster has:" in check.stderr, check.stderr
    ok = run_tool(["gfm", "slurm-check", "--profile", "profiles/slurm"], repo)
    assert "ok" in ok.stdout

    # Snakemake itself fails fast (no hang), and gfm commit refuses before submitting anything
    proc = run_tool(["timeout", "300", "snakemake", "--profile", str(bad), *_cluster_args(slurm)], repo,
                    check=False, timeout=400)
    assert proc.returncode not in (0, 124), "a bad partition must fail, not succeed or hang"
    assert "Error in group" in proc.stdout + proc.stderr or "sbatch" in proc.stdout + proc.stderr, \
        (proc.stdout + proc.stderr)[-3000:]
    commit = run_tool(["gfm", "commit", "--profile", str(bad)], repo, check=False)
    assert commit.returncode == 2 and "no_such_partition" in commit.stderr
