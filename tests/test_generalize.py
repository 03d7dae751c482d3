"""Transfer across architectures: a per-parameter model fitted on one MLP width forecasts another width."""

from __future__ import annotations

import json
import math

import yaml

from conftest import TINY
from gfm.config import parse_params
from gfm.forecasters import StoreNotSupported
from gfm.stages import generalize, generate, split, train


def test_transfer_between_widths(tmp_path, monkeypatch):
    data = yaml.safe_load(TINY.read_text())
    wide = dict(data["tasks"]["mlp_regression"], hidden=[10], runs_per_dataset=8)
    data["tasks"]["mlp_regression_w10"] = wide
    data["stores"] = {"mlp_regression-sgd": data["stores"]["mlp_regression-sgd"],
                      "mlp_regression_w10-sgd": {"task": "mlp_regression_w10", "optimizer": {"name": "sgd", "lr": 0.05},
                                                 "models": ["last_value", "linear", "lstm"]}}
    data["train"]["models"] = ["last_value", "linear", "lstm"]
    data["accelerate"]["stores"] = {}  # not part of this study
    data["generalize"] = {"models": ["linear", "lstm"],
                          "pairs": [{"source": "mlp_regression-sgd", "target": "mlp_regression_w10-sgd"}]}
    params = parse_params(data)
    root = tmp_path / "data"
    for key, spec in params.stores.items():
        store = root / "trajectories" / spec.task / f"{spec.optimizer.name}.zarr"
        sp = root / "splits" / spec.task / f"{spec.optimizer.name}.json"
        generate.run(params, key, out=store, progress=False)
        split.run(params.split, store=store, out=sp)
        for m in params.store_models(key):
            train.run(params, store_key=key, model=m, split=sp, store=store,
                      out=root / "models" / spec.task / spec.optimizer.name / m, progress=False)
    out = tmp_path / "generalize.json"
    result = generalize.run(params, data=root, out=out)
    pair = result["pairs"][0]
    assert pair["label"] == "hidden [6] -> [10]"
    for name in ("linear", "lstm"):
        m = pair["models"][name]
        assert m["error"] is None
        assert math.isfinite(m["transfer"]["mean"]) and math.isfinite(m["in_distribution"]["mean"])
        assert m["transfer"]["n"] == 2  # one score per dataset seed
        # per-seed values for the report's paired comparisons, in generate.dataset_seeds order
        assert len(m["transfer"]["per_seed"]) == len(m["in_distribution"]["per_seed"]) == 2
        assert sum(m["transfer"]["per_seed"]) / 2 == m["transfer"]["mean"]
    assert pair["dataset_seeds"] == list(params.generate.dataset_seeds)
    assert len(pair["last_value"]["per_seed"]) == 2
    # linear extrapolation has no parameters: transfer and in-distribution are the same forecast
    assert pair["models"]["linear"]["transfer"]["mean"] == pair["models"]["linear"]["in_distribution"]["mean"]
    assert json.loads(out.read_text())["pairs"][0]["target"] == "mlp_regression_w10-sgd"
    # a model that refused the target store at train time (refused.json, no weights): not scored, the reason kept
    refused = root / "models" / "mlp_regression_w10" / "sgd" / "lstm"
    for seed in refused.iterdir():
        if seed.is_dir():
            for f in seed.iterdir():
                f.unlink()
            seed.rmdir()
    (refused / "refused.json").write_text(json.dumps({"model": "lstm", "kind": "lstm", "refused": "no tanh"}))
    again = generalize.run(params, data=root, out=tmp_path / "again.json")["pairs"][0]
    assert again["models"]["lstm"] == {"refused": "target mlp_regression_w10-sgd: no tanh"}
    assert again["models"]["linear"] == pair["models"]["linear"]
    # a model that refuses, at forecast time, the store it was fitted on is refused too; one fitted on the source
    # that refuses the target cannot transfer (a scored entry's error)
    score = generalize._final_mse
    data["generalize"]["models"] = ["linear"]
    for refuser in ("mlp_regression_w10", "mlp_regression"):
        def refusing(model_dir, target, k, final, refuser=refuser):
            if model_dir.parent.name == "linear" and model_dir.parents[2].name == refuser:
                raise StoreNotSupported("needs the tanh network")
            return score(model_dir, target, k, final)

        monkeypatch.setattr(generalize, "_final_mse", refusing)
        got = generalize.run(parse_params(data), data=root, out=tmp_path / f"{refuser}.json")["pairs"][0]["models"]
        if refuser == "mlp_regression_w10":
            assert got["linear"] == {"refused": "target mlp_regression_w10-sgd: needs the tanh network"}
        else:
            assert got["linear"]["error"] == "transfer: StoreNotSupported: needs the tanh network"
            assert math.isnan(got["linear"]["transfer"]["mean"]) and math.isfinite(got["linear"]["in_distribution"]["mean"])
