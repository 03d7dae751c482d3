"""`gfm check PATH`: every artifact kind passes when sound, and each kind of damage is one named line, exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from gfm.cli import main
from gfm.tools.check import check_path
from test_reliability import staged  # noqa: F401  (module fixture: split/train/forecast/evaluate/report)


def _run(paths: list[Path], capsys) -> tuple[int, list[str]]:
    code = main(["check", *map(str, paths)])
    return code, capsys.readouterr().out.strip().splitlines()


def test_every_artifact_of_a_run_checks_clean(staged, tiny_store, capsys):  # noqa: F811
    _, root, _ = staged
    code, lines = _run([tiny_store, root], capsys)
    assert code == 0, lines
    kinds = " ".join(lines)
    for kind in ("trajectory store", "split", "trained models", "forecast store", "metrics", "report", "csv"):
        assert f"({kind}" in kinds, (kind, lines)
    assert all(": ok (" in line for line in lines)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _attrs(store: Path, **changes) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"].update(changes)
    (store / "zarr.json").write_text(json.dumps(meta))


def _shard(store: Path) -> Path:
    return sorted((store / "weights" / "c").rglob("*"), key=str)[-1]  # a shard file of the weights


def _corrupt_shard(s: Path) -> None:
    f = _shard(s)
    data = bytearray(f.read_bytes())
    data[10:200] = b"\xff" * 190  # inside the compressed chunks
    f.write_bytes(bytes(data))


def _nan_in_a_run(s: Path) -> None:
    g = zarr.open_group(str(s), mode="r+")
    g["weights"][3, 5, 0] = np.nan


STORE_DAMAGE = {
    "no completion flag": (lambda s: _attrs(s, complete=False), "no completion flag"),
    "another schema version": (lambda s: _attrs(s, schema_version=7), "schema_version 7"),
    "layout offsets do not add up": (lambda s: _attrs(s, n_params=999), "layout covers"),
    "state names of another optimizer": (lambda s: _attrs(s, state_names=["momentum_buffer"]), "state_names"),
    "a chunk file that does not decode": (_corrupt_shard, "chunk data unreadable"),
    "a missing shard file": (lambda s: _shard(s).unlink(), "chunk files hold 2 (record 0 of every run is data"),
    "a missing array": (lambda s: shutil.rmtree(s / "lr"), "array lr is missing"),
    "NaN in a run not flagged diverged": (_nan_in_a_run, "runs (3) not flagged diverged"),
    "final weights that are not the last step": (
        lambda s: zarr.open_group(str(s), mode="r+")["final/weights"].__setitem__((0, 0), 123.0),
        "final/weights: 1 runs (0) differ"),
    "zarr.json not JSON": (lambda s: (s / "zarr.json").write_text("{oops"), "not readable JSON"),
}


@pytest.mark.parametrize("case", sorted(STORE_DAMAGE))
def test_each_kind_of_store_damage_is_named(case, tiny_store, tmp_path, capsys):
    damage, message = STORE_DAMAGE[case]
    s = _copy(tiny_store, tmp_path / "s.zarr")
    damage(s)
    code, lines = _run([s], capsys)
    assert code == 1 and len(lines) >= 1 and any(message in line for line in lines), lines
    assert all(line.startswith(f"{s}: ") for line in lines)


def test_a_flagged_diverged_run_may_hold_nan(tiny_store, tmp_path, capsys):
    s = _copy(tiny_store, tmp_path / "s.zarr")
    g = zarr.open_group(str(s), mode="r+")
    g["weights"][3, 5:, 0] = np.nan
    g["final/weights"][3, 0] = np.nan
    g["runs/diverged"][3] = True
    code, lines = _run([s], capsys)
    assert code == 0 and "1 diverged" in lines[0], lines


def test_model_forecast_metrics_split_and_csv_damage(staged, tmp_path, capsys):  # noqa: F811
    _, root, sp = staged
    d = _copy(root, tmp_path / "run")
    # a trained-models directory missing one seed's fit
    shutil.rmtree(d / "models" / "linear" / "2")
    # a forecast store whose horizons disagree with its weights
    _attrs(d / "forecasts" / "linear.zarr", horizons=[16, 24])
    # a forecast store never finished
    _attrs(d / "forecasts" / "last_value.zarr", complete=False)
    # metrics with a negative MSE
    mp = d / "metrics" / "mlp_regression" / "adam.json"
    m = json.loads(mp.read_text())
    m["models"]["linear"]["final_mse"]["mean"] = -1.0
    mp.write_text(json.dumps(m))
    # a split whose train and test share a run
    s = json.loads(sp.read_text())
    s["datasets"]["1"]["test"].append(s["datasets"]["1"]["train"][0])
    (d / "splits" / "mlp_regression" / "adam.json").write_text(json.dumps(s))
    # a plot CSV with a ragged line
    csvp = d / "plots" / "mlp_regression" / "adam" / "mse_vs_horizon.csv"
    csvp.write_text(csvp.read_text() + "linear,16\n")
    # leftovers and strangers
    (d / "models" / "lstm.tmp").mkdir()
    (d / "notes.pkl").write_bytes(b"\x80\x04")
    code, lines = _run([d], capsys)
    assert code == 1
    text = "\n".join(lines)
    for expected in ("seeds ['1', '2'], the directory holds ['1']", "expected (run, 2, param)",
                     "last_value.zarr: forecast store: no completion flag", "negative MSE",
                     "train and test share runs (0); test runs would leak into training",
                     "2 fields; the header has 5", "lstm.tmp: leftover",
                     "notes.pkl: file: not an artifact"):
        assert expected in text, (expected, text)
    ok = [line for line in lines if ": ok (" in line]
    assert any("linear.zarr" not in line and "report" in line for line in ok)  # untouched artifacts still pass


def test_a_missing_path_and_an_empty_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, lines = _run([tmp_path / "nothing", tmp_path / "empty"], capsys)
    assert code == 1 and len(lines) == 2
    assert "no such file" in lines[0] and "no artifact of this pipeline" in lines[1]


def test_check_streams_a_store_in_bounded_blocks(tiny_store, monkeypatch):
    """With a tiny read budget every block is one run: the check still covers every run."""
    import gfm.artifacts.verdict

    reads = []
    real = zarr.Array.__getitem__

    def spy(self, sel):
        if self.path == "weights":
            reads.append(sel)
        return real(self, sel)

    monkeypatch.setattr(gfm.artifacts.verdict, "READ_BYTES", 1)  # read by every format's validator
    monkeypatch.setattr(zarr.Array, "__getitem__", spy)
    (verdict,) = check_path(tiny_store)
    assert verdict.ok and len(reads) == 24 and all(s.stop - s.start == 1 for s in reads)
