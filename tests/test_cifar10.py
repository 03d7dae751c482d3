"""cifar10 task: the official binary format (a tiny file written here), the stacked grouped-conv CNN against
per-run torch.optim loops, and a whole store generated from params."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from benchmarks.reference import train_reference

from conftest import TINY
from gfm.base.errors import ParamsError
from gfm.config import CIFAR10Config, OptimizerConfig, parse_params
from gfm.stages import generate
from gfm.stages.generate import simulate
from gfm.stages.runs import run_ids, setup_run
from gfm.store.reader import open_trajectories
from gfm.tasks import make_task
from gfm.tasks.cifar10 import RECORD_BYTES, CifarDataError, load_cifar10_binary


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a small shared CPU, OpenMP threads contending with other jobs made these tests many
    times slower (BENCHMARKS.md, "Test suite")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_fake_cifar(directory, n_per_file=(40, 30), seed=0):
    """Files in the official binary layout: label byte + 1024 R + 1024 G + 1024 B bytes per image.
    Images get a class-dependent brightness so the network has something to learn."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for i, n in enumerate(n_per_file, start=1):
        y = rng.integers(0, 10, n).astype(np.uint8)
        img = np.clip(rng.normal(25 * y[:, None, None, None], 40, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
        rec = np.concatenate([y[:, None], img.reshape(n, -1)], axis=1)
        rec.tofile(directory / f"data_batch_{i}.bin")
        images.append(img)
        labels.append(y)
    (directory / "test_batch.bin").write_bytes(b"\0" * RECORD_BYTES)  # present in the real folder, never read
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-bin"
    write_fake_cifar(d)
    return d


def task_cfg(cifar_dir, **kw) -> CIFAR10Config:
    base = dict(data_dir=str(cifar_dir), n_samples=48, batch_size=16, channels=[4, 6], downsample=2, steps=30,
                runs_per_dataset=2)
    return CIFAR10Config(**{**base, **kw})


def test_reads_the_binary_format(tmp_path):
    img, lab = write_fake_cifar(tmp_path / "c")
    load_cifar10_binary.cache_clear()
    x, y = load_cifar10_binary(str(tmp_path / "c"))
    assert x.shape == (70, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(img)) and torch.equal(y, torch.from_numpy(lab.astype(np.int64)))
    # channel planes are R, G, B in that order, each 32x32 row-major
    raw = np.fromfile(tmp_path / "c" / "data_batch_1.bin", dtype=np.uint8).reshape(-1, RECORD_BYTES)
    assert x[3, 1, 2, 5] == raw[3, 1 + 1024 + 2 * 32 + 5]


def test_refuses_missing_or_malformed_data(tmp_path):
    with pytest.raises(CifarDataError, match="no data_batch_.*cifar-10-binary.tar.gz"):
        load_cifar10_binary(str(tmp_path / "missing"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data_batch_1.bin").write_bytes(b"\x80\x04pickle" * 10)
    with pytest.raises(CifarDataError, match="not a whole number of 3073-byte records"):
        load_cifar10_binary(str(tmp_path / "bad"))


def test_stacked_forward_equals_each_run_module(cifar_dir):
    task = make_task(task_cfg(cifar_dir))
    setups = [setup_run(task, OptimizerConfig(name="sgd", lr=0.1), 0, r, task_name="cifar10") for r in run_ids([1], 3)]
    theta = torch.stack([s.w0 for s in setups])
    x = torch.stack([s.x[:16] for s in setups])
    out = task.forward(theta, x)
    assert out.shape == (3, 16, 10)
    for r, s in enumerate(setups):
        net = task.build_module()
        net.load_state_dict(task_unflatten(task, s.w0))
        torch.testing.assert_close(out[r], net(s.x[:16]), rtol=1e-5, atol=1e-6)
    # each run draws its own subset of images
    assert not torch.equal(setups[0].x, setups[1].x)


def task_unflatten(task, flat):
    return {s.name: flat[s.offset : s.offset + s.size].view(s.shape) for s in task.layout}


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "rmsprop"])
def test_stacked_cnn_equals_independent_torch_optim_runs(cifar_dir, name):
    """The generator (grouped conv, generic autograd path) against R plain nn.Module + torch.optim loops."""
    task = make_task(task_cfg(cifar_dir, downsample=4, n_samples=32, batch_size=8))  # 8x8 images: seconds
    assert not task.manual_backward
    lr = {"sgd": 0.05, "momentum": 0.02, "adam": 0.003, "rmsprop": 0.001}[name]
    opt = OptimizerConfig(name=name, lr=lr, weight_decay=1e-4)
    setups = [setup_run(task, opt, 0, r, task_name="cifar10") for r in run_ids([1, 2], 2)]
    rec = simulate(task, opt, setups, device=torch.device("cpu"))
    for i, s in enumerate(setups):
        ref = train_reference(task, opt, s)
        assert np.abs(ref["weights"] - rec["weights"][i]).max() <= 1e-5
        np.testing.assert_allclose(rec["loss"][i], ref["loss"], rtol=1e-4, atol=1e-6)
    assert rec["weights"].shape == (4, 31, task.n_params)
    assert np.all(rec["loss"][:, -1] < rec["loss"][:, 0])  # they really trained


def test_generated_store_from_params(cifar_dir, tmp_path):
    data = yaml.safe_load(TINY.read_text())
    data["tasks"] = {"cifar10": {"kind": "cifar10", "data_dir": str(cifar_dir), "n_samples": 32, "batch_size": 8,
                                 "channels": [4], "downsample": 4, "steps": 40, "runs_per_dataset": 4}}
    data["stores"] = {"cifar10-momentum": {"task": "cifar10", "optimizer": {"name": "momentum", "lr": 0.01}}}
    data["report"]["target_task"] = "cifar10"  # report.target_task must be a task some store trains
    data["accelerate"]["stores"] = {}  # the tiny study's jump-ahead store is not in this study
    params = parse_params(data)
    generate.run(params, "cifar10-momentum", out=tmp_path / "c.zarr", progress=False)
    ts = open_trajectories(tmp_path / "c.zarr")
    assert ts.weights.shape == (8, 41, 4 * 3 * 9 + 4 + 10 * 4 * 4 * 4 + 10)
    assert ts.attrs["task"]["kind"] == "cifar10" and not ts.runs["diverged"].any()
    net = ts.load_into(make_task(params.tasks["cifar10"]).build_module(), run=5, step=40)
    assert isinstance(net[1], torch.nn.Conv2d)


def test_config_checks(cifar_dir):
    data = yaml.safe_load(TINY.read_text())
    data["tasks"]["c"] = {"kind": "cifar10", "downsample": 3, "steps": 40}
    with pytest.raises(ParamsError, match="tasks.c.downsample: got 3; expected a divisor of 32"):
        parse_params(data)
    data["tasks"]["c"] = {"kind": "cifar10", "downsample": 8, "channels": [4, 4, 4], "steps": 40}
    with pytest.raises(ParamsError, match="tasks.c.channels: got 3 conv blocks"):
        parse_params(data)
    # a cifar10 task whose store is not listed is never read (the default params: off until data is there)
    data["tasks"]["c"] = {"kind": "cifar10", "data_dir": "/nowhere", "steps": 40}
    assert parse_params(data).tasks["c"].data_dir == "/nowhere"
    task = make_task(dataclasses.replace(task_cfg(cifar_dir), data_dir="/nowhere"))
    with pytest.raises(CifarDataError, match="/nowhere"):
        task.sample_data(torch.Generator().manual_seed(0))
