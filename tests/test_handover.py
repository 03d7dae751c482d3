"""gfm commit's decision, on its own: which stages `dvc status` reports must be re-run before `dvc commit`,
from content (checksums, dvc.lock) and Snakemake's job records, never from file mtimes; and the SLURM
status-command switch for clusters without an accounting database. The end-to-end paths are in
test_dvc_sharing.py (local) and test_cluster.py (SLURM, with and without slurmdbd)."""

from __future__ import annotations

import hashlib
import json
import os
import types
from pathlib import Path

import pytest
import yaml

from gfm.drivers import slurm
from gfm.drivers.dvc import DvcStage
from gfm.drivers.process import DriverError
from gfm.drivers.provenance import Evidence, params_reported, stale_stages
from gfm.drivers.snakemake import Record, incomplete_outputs, read_records

SPLIT = DvcStage("split@s", "snakemake --allowed-rules split -- data/splits/s.json", ("split",),
                 ("data/splits/s.json",), ("data/splits/s.json",), ("data/trajectories/s.zarr", "src/gfm/stages/split.py"),
                 ("split",))
TRAIN = DvcStage("train@s", "snakemake --allowed-rules train -- data/models/s/index.json", ("train",),
                 ("data/models/s/index.json",), ("data/models/s",),
                 ("data/trajectories/s.zarr", "data/splits/s.json", "src/gfm/stages/train.py"), ("train",))
STAGES = [SPLIT, TRAIN]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "data" / "trajectories" / "s.zarr").mkdir(parents=True)
    (tmp_path / "data" / "trajectories" / "s.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "data" / "splits").mkdir()
    (tmp_path / "data" / "splits" / "s.json").write_text('{"train": [0]}')
    (tmp_path / "data" / "models" / "s" / "lstm").mkdir(parents=True)
    (tmp_path / "data" / "models" / "s" / "index.json").write_text("{}")
    for module in ("src/gfm/stages/split.py", "src/gfm/stages/train.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text(f"# {Path(module).stem}\n")
    return tmp_path


def _records(split_json: bytes, *, generate_at: float = 10.0, split_at: float = 20.0,
             train_at: float = 30.0) -> dict[str, Record]:
    gen = Record("data/trajectories/s.zarr", "generate", (), {}, generate_at)
    split = Record("data/splits/s.json", "split", ("data/trajectories/s.zarr",), {}, split_at)
    train_in = ("data/trajectories/s.zarr", "data/splits/s.json")
    lstm = Record("data/models/s/lstm", "train", train_in, {"data/splits/s.json": _sha(split_json)}, train_at)
    index = Record("data/models/s/index.json", "train_index", ("data/models/s/lstm",), {}, train_at + 5)
    return {r.output: r for r in (gen, split, lstm, index)}


def _verdicts(status, repo, **evidence):
    return {v.name: v for v in stale_stages(status, STAGES, Evidence(**evidence), repo)}


def test_a_file_dependency_is_judged_by_the_checksum_snakemake_recorded(repo):
    status = {"train@s": [{"changed deps": {"data/splits/s.json": "modified"}}]}
    same = _records((repo / "data/splits/s.json").read_bytes())
    assert not _verdicts(status, repo, records=same, locked=frozenset({"train@s"}))["train@s"].stale
    # an mtime says nothing: the file is touched into the future and the verdict stays
    os.utime(repo / "data/splits/s.json", (4e9, 4e9))
    assert not _verdicts(status, repo, records=same, locked=frozenset({"train@s"}))["train@s"].stale
    other = _records(b'{"train": [1]}')
    verdict = _verdicts(status, repo, records=other, locked=frozenset({"train@s"}))["train@s"]
    assert verdict.stale and "data/splits/s.json differs" in verdict.reason


def test_a_directory_made_by_another_stage_is_judged_by_snakemakes_job_order(repo):
    status = {"train@s": [{"changed deps": {"data/trajectories/s.zarr": "modified"}}]}
    split_json = (repo / "data/splits/s.json").read_bytes()
    ok = _verdicts(status, repo, records=_records(split_json, generate_at=10, train_at=30))
    assert not ok["train@s"].stale
    # the store was re-made by a later Snakemake run than the one that trained on it
    late = _verdicts(status, repo, records=_records(split_json, generate_at=100, train_at=30))
    assert late["train@s"].stale and "data/trajectories/s.zarr was re-made" in late["train@s"].reason
    # one group job registers its jobs together, in no fixed order: within a second is the same submission
    group = _verdicts(status, repo, records=_records(split_json, generate_at=30.5, train_at=30))
    assert not group["train@s"].stale


def test_code_snakemake_does_not_see_is_stale_only_against_a_recorded_lock(repo):
    status = {"split@s": [{"changed deps": {"src/gfm/stages/split.py": "modified"}}]}
    records = _records((repo / "data/splits/s.json").read_bytes())
    first = _verdicts(status, repo, records=records, locked=frozenset())
    assert not first["split@s"].stale          # first commit: nothing recorded to differ from
    edited = _verdicts(status, repo, records=records, locked=frozenset({"split@s"}))
    assert edited["split@s"].stale and "src/gfm/stages/split.py changed since dvc.lock" in edited["split@s"].reason
    # once the code is a rule input, Snakemake's checksum decides (re-made after the edit: current)
    code = (repo / "src/gfm/stages/split.py").read_bytes()
    records["data/splits/s.json"] = Record("data/splits/s.json", "split", ("src/gfm/stages/split.py",),
                                           {"src/gfm/stages/split.py": _sha(code)}, 20.0)
    assert not _verdicts(status, repo, records=records, locked=frozenset({"split@s"}))["split@s"].stale


def test_params_are_judged_by_snakemakes_recorded_params(repo):
    status = {"split@s": [{"changed deps": {"params.yaml": {"split": "modified"}}}]}
    assert params_reported(status) and not params_reported({"split@s": [{"changed outs": {"x": "modified"}}]})
    records = _records((repo / "data/splits/s.json").read_bytes())
    remade = _verdicts(status, repo, records=records, params_changed=frozenset())
    assert not remade["split@s"].stale
    old = _verdicts(status, repo, records=records, params_changed=frozenset({"data/splits/s.json"}))
    assert old["split@s"].stale and "params changed" in old["split@s"].reason


def test_what_is_stale_by_itself(repo):
    records = _records((repo / "data/splits/s.json").read_bytes())
    deps = [{"changed deps": {"src/gfm/stages/split.py": "modified"}}]
    assert not _verdicts({"split@s": [{"changed outs": {"data/splits/s.json": "modified"}}]}, repo,
                         records={})["split@s"].stale                          # only outputs changed
    assert _verdicts({"split@s": ["changed command"]}, repo, records=records)["split@s"].stale
    assert "no record" in _verdicts({"split@s": deps}, repo, records={})["split@s"].reason
    unfinished = _verdicts({"split@s": deps}, repo, records=records, incomplete=frozenset({"data/splits/s.json"}))
    assert "incomplete" in unfinished["split@s"].reason
    (repo / "data/splits/s.json").unlink()
    assert "output missing" in _verdicts({"split@s": deps}, repo, records=records)["split@s"].reason


def test_records_are_read_from_snakemakes_own_file_layout(tmp_path):
    from snakemake.persistence.file import FilePersistence

    meta = tmp_path / ".snakemake" / "metadata"
    short, long = "data/splits/s.json", "data/models/" + "x" * 300 + "/index.json"
    stub = types.SimpleNamespace(_fetch_max_len=lambda subject: 40)   # forces '@' chunks for long keys
    for key, start in ((short, 1.5), (long, 2.5)):
        path = Path(FilePersistence._record_path(stub, str(meta), key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rule": "r", "input": ["a"], "input_checksums": {"a": "abc"},
                                    "starttime": start}))
    records = read_records(tmp_path)
    assert set(records) == {short, long}
    assert records[short].checksums == {"a": "sha256:abc"} and records[long].started == 2.5
    assert incomplete_outputs(tmp_path) == set()


@pytest.fixture
def profile(tmp_path) -> Path:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"executor": "slurm",
                                                          slurm.INIT_KEY: 20}))
    return tmp_path


def test_status_command_follows_the_clusters_accounting(profile, monkeypatch):
    conf = {"AccountingStorageType": "accounting_storage/slurmdbd", "MinJobAge": "600 sec"}
    monkeypatch.setattr(slurm, "_cluster_config", lambda: conf)
    assert slurm.is_slurm_profile(profile)
    assert slurm.status_command_args(profile) == []
    conf["AccountingStorageType"] = "accounting_storage/none"
    assert slurm.status_command_args(profile) == ["--slurm-status-command", "squeue"]
    conf["MinJobAge"] = "30 sec"    # squeue would forget a finished job before the first poll
    with pytest.raises(DriverError, match="MinJobAge"):
        slurm.status_command_args(profile)
    doc = yaml.safe_load((profile / "config.yaml").read_text())
    (profile / "config.yaml").write_text(yaml.safe_dump({**doc, slurm.STATUS_KEY: "squeue"}))
    assert slurm.status_command_args(profile) == []   # the profile says it itself


def test_a_code_directory_is_judged_by_the_checksums_of_its_files(repo):
    """DVC tracks a code subpackage as one directory dependency; Snakemake checksums its files one by one as
    rule inputs. A changed lock entry for the directory (e.g. a dvc.lock from before the files were inputs)
    makes the stage stale only when a file differs from what its outputs were made from."""
    pkg = repo / "src" / "gfm" / "tasks"
    pkg.mkdir()
    (pkg / "a.py").write_text("A = 1\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    status = {"split@s": [{"changed deps": {"src/gfm/tasks": "modified"}}]}
    records = _records((repo / "data/splits/s.json").read_bytes())
    records["data/splits/s.json"] = Record("data/splits/s.json", "split", ("src/gfm/tasks/a.py",),
                                           {"src/gfm/tasks/a.py": _sha(b"A = 1\n")}, 20.0)
    locked = frozenset({"split@s"})
    assert not _verdicts(status, repo, records=records, locked=locked)["split@s"].stale
    (pkg / "a.py").write_text("A = 2\n")
    verdict = _verdicts(status, repo, records=records, locked=locked)["split@s"]
    assert verdict.stale and "src/gfm/tasks/a.py differs" in verdict.reason
