"""The SLURM profile's requests, checked without a cluster.

Snakemake itself evaluates the profile: a dry run (`snakemake -n --profile profiles/slurm`) prints every job's
threads, resources and shell command as they would go to sbatch, and `--attempt 2` shows what the retry asks
for. Checked on the tiny study: threads = CPUs = the stage's `--threads` for every job (also after
`--set-threads`), a retry doubles time and memory, the requests are the ones profiles/README.md derives from
its measurements, the cheap rules are local and ungrouped, and GPUs are asked for as `device` says. Then on
a real run of one store: changing `device` changes no DVC stage and no Snakemake params trigger.
(The real cluster run is tests/test_cluster.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, run_tool
from gfm import drivers
from gfm.forecasters import FORECASTERS
from repo_helpers import make_repo
from snakemake_helpers import snakemake_summary

pytestmark = pytest.mark.timeout(900)

PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
README = ROOT / "profiles" / "README.md"
CHEAP = {"train_index", "generalize", "report"}   # must never wait in the SLURM queue


def local_rules(snakefile: Path = ROOT / "workflow" / "Snakefile") -> set[str]:
    """The rule names of the workflow's `localrules:` directive."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?[ \t]*\n)+)", snakefile.read_text(), flags=re.M)
    assert block, f"{snakefile} has no localrules: directive"
    return set(re.findall(r"\w+", block.group(1)))


def readme_table() -> dict[str, dict[str, str]]:
    """profiles/README.md's per-rule table ("Where the numbers come from"), keyed by rule."""
    rows = re.findall(r"^\| (\w+) \| (SLURM[^|]*|local) \| (\d+) \| ([\d.]+)[^|]* \| (\d+)[^|]* \| (\d+) \| "
                      r"(\d+|local) \| (\d+|local) \|$", README.read_text(), flags=re.M)
    assert rows, "profiles/README.md: the per-rule table was not found"
    keys = ("runs_as", "jobs", "wall_s", "rss_mb", "total_s", "runtime", "mem_mb")
    return {r[0]: dict(zip(keys, r[1:])) for r in rows}


def parse_dry_run(text: str) -> list[dict]:
    """One dict per job of `snakemake -n` output: rule, group (None outside a group job), threads,
    resources (str -> str), shell command, outputs."""
    jobs: list[dict] = []
    group = None
    for line in text.splitlines():
        if m := re.match(r"^\[.*\] Group job (\w+)", line):
            group = m.group(1)
        elif m := re.match(r"^(\s*)rule (\w+):$", line):
            jobs.append({"rule": m.group(2), "group": group if m.group(1) else None, "threads": 1,
                         "resources": {}, "shell": None, "output": ""})
        elif jobs and (m := re.match(r"^\s+threads: (\d+)$", line)):
            jobs[-1]["threads"] = int(m.group(1))
        elif jobs and (m := re.match(r"^\s+resources: (.*)$", line)):
            jobs[-1]["resources"] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
        elif jobs and (m := re.match(r"^\s+output: (.*)$", line)):
            jobs[-1]["output"] = m.group(1)
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["shell"] = line.removeprefix("Shell command: ")
    return jobs


def dry_run(repo: Path, *args: str) -> list[dict]:
    out = run_tool(["snakemake", "-n", "--forceall", "--profile", "profiles/slurm", *args], repo).stdout
    jobs = parse_dry_run(out)
    assert jobs and all(j["resources"] for j in jobs), out[-3000:]
    return jobs


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The whole tiny study (every rule, every model kind it trains)."""
    return make_repo(tmp_path_factory.mktemp("profiles") / "repo", small=False, dvc_config=False)


@pytest.fixture(scope="module")
def first(repo) -> list[dict]:
    """The jobs as first submitted, with the default `device: auto`."""
    return dry_run(repo, "--config", "device=auto")


@pytest.fixture(scope="module")
def retry(repo) -> list[dict]:
    """The same jobs on their second attempt, with train at 2 threads and `device: cuda`."""
    return dry_run(repo, "--attempt", "2", "--set-threads", "train=2", "--config", "device=cuda")


def submitted(jobs: list[dict]) -> list[dict]:
    """The jobs that go through sbatch (not local rules, not the target rule)."""
    return [j for j in jobs if j["rule"] not in local_rules()]


def test_threads_equal_cpus_for_every_job(first, retry):
    for jobs in (first, retry):
        problems = []
        for j in jobs:
            cpus = int(j["resources"]["cpus_per_task"])
            flag = re.search(r"--threads (\d+)", j["shell"] or "")
            if cpus != j["threads"] or (flag and int(flag.group(1)) != j["threads"]):
                problems.append(f"{j['rule']} {j['output']}: threads {j['threads']}, cpus_per_task {cpus}, "
                                f"--threads {flag.group(1) if flag else '-'}")
        assert not problems, "\n".join(problems)
    # the override reached all three (else the check above would pass trivially at 1)
    assert {j["threads"] for j in retry if j["rule"] == "train"} == {2}
    assert {j["threads"] for j in first if j["rule"] == "train"} == {1}
    # every stage that takes --threads gets it from the rule
    assert all(re.search(r"--threads \d+", j["shell"]) for j in first
               if j["rule"] in ("generate", "train", "forecast", "evaluate", "accelerate", "generalize"))


def test_a_retry_asks_for_twice_the_time_and_memory(first, retry):
    again = {j["output"]: j for j in retry}
    assert len(again) == len(first)
    for j in submitted(first):
        r = again[j["output"]]["resources"]
        for key in ("runtime", "mem_mb"):
            assert int(r[key]) == 2 * int(j["resources"][key]), (j["rule"], j["output"], key)


def test_requests_are_the_measured_ones(first):
    """Each submitted rule's first request is its row of profiles/README.md, and that row keeps the stated
    margins over its measurements: runtime >= 10x the slowest job, memory >= 2x the largest RSS."""
    table = readme_table()
    profile = yaml.safe_load(PROFILE.read_text())
    problems = []
    for rule in sorted({j["rule"] for j in submitted(first)}):
        row = table.get(rule)
        if row is None or row["runs_as"] == "local":
            problems.append(f"{rule}: submitted to SLURM but profiles/README.md has no SLURM row for it")
            continue
        if rule not in profile["set-resources"]:
            problems.append(f"{rule}: no set-resources entry in {PROFILE.name} (the defaults were not measured)")
        asked = {(j["resources"]["runtime"], j["resources"]["mem_mb"]) for j in first if j["rule"] == rule}
        if asked != {(row["runtime"], row["mem_mb"])}:
            problems.append(f"{rule}: jobs ask for (runtime, mem_mb) {asked}, README says "
                            f"{(row['runtime'], row['mem_mb'])}")
        if int(row["runtime"]) * 60 < 10 * float(row["wall_s"]) or int(row["mem_mb"]) < 2 * int(row["rss_mb"]):
            problems.append(f"{rule}: {row} is below 10x the measured time or 2x the measured memory")
    assert not problems, "\n".join(problems)


def test_cheap_rules_are_local_and_ungrouped(first):
    local = local_rules()
    assert CHEAP <= local, f"localrules lacks {sorted(CHEAP - local)}"
    table = readme_table()
    for rule in local - {"all"}:
        row = table[rule]
        assert row["runs_as"] == "local" and float(row["wall_s"]) <= 30 and int(row["rss_mb"]) <= 500, (rule, row)
    assert {r for r, row in table.items() if row["runs_as"] == "local"} == local - {"all"}
    # A group decides where its jobs run: a local rule inside one would be submitted (or drag the group local).
    groups = yaml.safe_load(PROFILE.read_text()).get("groups") or {}
    assert not local & set(groups), f"local rules in the profile's groups: {sorted(local & set(groups))}"
    grouped = {j["rule"] for j in first if j["group"]}
    assert grouped and not grouped & local, grouped
    assert {j["rule"] for j in first} & local >= CHEAP   # the tiny study has them, so the check bites


def test_gpus_follow_device(first, retry):
    kinds = yaml.safe_load(TINY.read_text())["models"]

    def gpus(jobs, rule):
        return {j["output"]: int(j["resources"].get("gpu", 0)) for j in jobs if j["rule"] == rule}

    for jobs in (first, retry):   # auto and cuda: generation asks for one GPU per store
        assert set(gpus(jobs, "generate").values()) == {1}
    # auto: no train job asks for a GPU; cuda: exactly the neural ones
    assert set(gpus(first, "train").values()) == {0}
    for out, n in gpus(retry, "train").items():
        neural = FORECASTERS[kinds[Path(out).name]["kind"]].neural
        assert n == int(neural), (out, n)
    assert any(gpus(retry, "train").values())
    others = [j for j in first + retry if j["rule"] not in ("generate", "train") and int(j["resources"].get("gpu", 0))]
    assert not others, [(j["rule"], j["output"]) for j in others]


def _set_params(repo: Path, **changes) -> None:
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    doc.update(changes)
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _changed(repo: Path, stages: list[str]) -> tuple[list[str], list[str]]:
    """(stages DVC calls changed, outputs Snakemake's params trigger would re-make)."""
    status = run_tool(["dvc", "status", "--json", *stages], repo).stdout
    dvc = sorted(yaml.safe_load(status) or {})
    snk = [r["output_file"] for r in snakemake_summary(repo) if r["status"] == "params changed"]
    return dvc, snk


def test_changing_device_invalidates_nothing(tmp_path):
    repo = make_repo(tmp_path / "repo", dvc_config=False)
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    first_store = next(iter(doc["stores"]))
    doc["stores"][first_store]["models"] = ["last_value", "lstm"]   # a closed-form and a neural train job
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    stages = drivers.dvc_stages(repo)
    listing = [st.name for st in stages if any(k == "device" or k.startswith("device.") for k in st.params)]
    assert not listing, f"DVC stages hashing device: {listing}"
    train = next(st for st in stages if st.name == f"train@{first_store}")
    store = train.name.split("@", 1)[1]
    ran = [f"generate@{store}", f"split@{store}", train.name]
    # one Snakemake run makes the store's trajectories, split and models; dvc commit records them as
    # `dvc repro` would (each stage's own Snakemake start would cost more: BENCHMARKS.md, "The scontrol trap")
    run_tool(["snakemake", "--cores", "2", "--", *train.targets], repo, timeout=800)
    run_tool(["dvc", "commit", "-f", "-q", *ran], repo)

    _set_params(repo, device="cuda")   # another machine: nothing is stale
    assert _changed(repo, ran) == ([], [])

    _set_params(repo, seed=1)          # a study parameter: both tools see it (the check can fail)
    dvc, snk = _changed(repo, ran)
    assert f"generate@{store}" in dvc and any(o.startswith("data/trajectories/") for o in snk), (dvc, snk)
