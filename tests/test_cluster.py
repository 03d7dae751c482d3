"""The pipeline on a real SLURM cluster, twice: with an accounting database (slurmdbd: the SLURM executor
polls job states with `sacct`) and without one (it must poll with `squeue`, and `gfm commit` must pass
that on to the jobs it re-runs). Marked `cluster`; `.ci/run` runs it as root after
tests/cluster/slurm-up.sh has brought up a one-node cluster (and tears it down afterwards).

Run by hand (as root):  pytest -m cluster
The fixture uses the cluster that is up when its accounting is the one a test asks for; otherwise it
(re)starts the one-node cluster with tests/cluster/slurm-up.sh (WITH_DBD=1 or not) and, at the end, puts
back what it found: the same cluster, or none (tests/cluster/slurm-down.sh). Without root and apt-get the
tests that need another cluster are skipped with the reason (never passed silently).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

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


def _accounting() -> bool:
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    return "accounting_storage/none" not in conf


def _bring_up(with_dbd: bool) -> None:
    env = {**os.environ, "WITH_DBD": "1" if with_dbd else "0"}
    proc = subprocess.run([str(UP)], capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        pytest.fail(f"slurm-up.sh (WITH_DBD={env['WITH_DBD']}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="module", params=["slurmdbd", "no-accounting"])
def slurm(request):
    """A usable SLURM cluster with (slurmdbd) or without an accounting database: the one that is up if it
    fits, or one (re)started here; what was up before is restored afterwards."""
    want = request.param == "slurmdbd"
    was_up = _idle()
    had = _accounting() if was_up else None
    if had != want:
        if os.geteuid() != 0:
            pytest.skip(f"needs a SLURM cluster {'with' if want else 'without'} slurmdbd and (re)starting one "
                        f"needs root: sudo {'WITH_DBD=1 ' if want else ''}tests/cluster/slurm-up.sh")
        if shutil.which("apt-get") is None:
            pytest.skip("no fitting SLURM cluster is up and there is no apt-get to install slurm-wlm")
        _bring_up(want)
    assert _accounting() == want
    yield {"accounting": want}
    if had != want:
        if was_up:
            _bring_up(bool(had))
        else:
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

    # record the cluster run in DVC: a complete Snakemake run needs no re-run (the decision reads content
    # and Snakemake's records, so the mtimes SLURM leaves behind do not matter); status clean; outputs
    # byte-identical to the local run. No status command is passed: gfm commit finds out itself.
    t0 = time.monotonic()
    committed = run_tool(["gfm", "commit", "--profile", "profiles/slurm"], cluster)
    print(f"gfm commit after the SLURM run ({'with' if slurm['accounting'] else 'without'} slurmdbd): "
          f"{time.monotonic() - t0:.1f} s")
    assert "re-run " not in committed.stdout, committed.stdout
    assert json.loads(run_tool(["dvc", "status", "--json"], cluster).stdout) == {}
    outs = [o for s in drivers.dvc_stages(cluster) for o in s.outs]
    assert tree(cluster, outs) == tree(local, outs)
    lock_c = yaml.safe_load((cluster / "dvc.lock").read_text())["stages"]
    lock_l = yaml.safe_load((local / "dvc.lock").read_text())["stages"]
    assert {n: s["outs"] for n, s in lock_c.items()} == {n: s["outs"] for n, s in lock_l.items()}

    # an edit of evaluate's module, with no Snakemake run after it: gfm commit re-runs exactly the stages whose
    # code deps hold that module (the checksum Snakemake recorded differs), as SLURM jobs that must be seen to
    # finish (without accounting: squeue), then commits; nothing changed
    module = cluster / "src/gfm/stages/evaluate.py"
    module.write_text(module.read_text() + "\n# edited\n")
    t0 = time.monotonic()
    rerun = run_tool(["timeout", "900", "gfm", "commit", "--profile", "profiles/slurm"], cluster, timeout=1000)
    print(f"gfm commit re-running evaluate on SLURM: {time.monotonic() - t0:.1f} s")
    stale = [v.split()[1].rstrip(":") for v in rerun.stdout.splitlines() if v.startswith("re-run ")]
    readers = sorted(s.name for s in drivers.dvc_stages(cluster) if "src/gfm/stages/evaluate.py" in s.deps)
    assert any(n.startswith("evaluate@") for n in readers) and sorted(stale) == readers, rerun.stdout
    new_ids = set(re.findall(r"/(\d+)\.log", "\n".join(map(str, (cluster / "logs" / "slurm").rglob("*.log")))))
    assert new_ids - set(job_ids), "the re-run submitted no SLURM job"
    assert json.loads(run_tool(["dvc", "status", "--json"], cluster).stdout) == {}
    assert tree(cluster, outs) == tree(local, outs)
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
