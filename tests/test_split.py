"""Train / val / test run ids: per dataset seed, in run order, diverged runs listed."""

from __future__ import annotations

import json

import numpy as np

from gfm.config import SplitConfig
from gfm.stages import split


def test_lfd2_split_per_dataset():
    seeds = np.repeat([1, 2], 200)
    index = np.tile(np.arange(200), 2)
    diverged = np.zeros(400, bool)
    diverged[[5, 250]] = True
    out = split.make_split(seeds, index, diverged, SplitConfig())
    d1, d2 = out["datasets"]["1"], out["datasets"]["2"]
    assert d1["train"] == list(range(100)) and d1["val"] == list(range(100, 150)) and d1["test"] == list(range(150, 200))
    assert d2["train"][0] == 200 and len(d2["test"]) == 50
    assert d1["diverged"] == [5] and d2["diverged"] == [250]


def test_split_stage_writes_json_atomically(tiny_store, tiny_params, tmp_path):
    out = tmp_path / "s" / "split.json"
    split.run(tiny_params.split, store=tiny_store, out=out)
    data = json.loads(out.read_text())
    assert set(data["datasets"]) == {"1", "2"}
    sizes = [len(data["datasets"]["1"][k]) for k in ("train", "val", "test")]
    assert sizes == [6, 3, 3]
    assert not list(out.parent.glob("*.tmp"))
