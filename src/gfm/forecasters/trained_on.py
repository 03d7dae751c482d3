"""What a saved model was fitted on (:class:`TrainedOn`), gathered from the model itself, ``summary.json`` beside
the per-seed directories and the training store, with sources that contradict each other refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfm.core.layout import ParamSpec
from gfm.forecasters.base import Forecaster, ModelFileError

__all__ = ["TrainedOn", "read_trained_on", "model_directory"]


@dataclass(frozen=True)
class TrainedOn:
    """What a saved model was fitted on, as far as it is known (None: unknown).

    Attributes:
        store: the training store's key ``<task>-<optimizer>``.
        optimizer: optimizer name of the training runs.
        record_every: optimizer steps between records of the training runs.
        steps: optimizer steps of a whole training run (the time axis).
        n_params: parameters of the training runs' network.
        layout: the training runs' parameter layout.
        sources: where these facts were read, for messages.
    """

    store: str | None = None
    optimizer: str | None = None
    record_every: int | None = None
    steps: int | None = None
    n_params: int | None = None
    layout: tuple[ParamSpec, ...] | None = None
    sources: tuple[str, ...] = ()




def _summary_store_key(model_dir: Path) -> str | None:
    from gfm.artifacts.inputs import read_json

    path = model_dir.parent / "summary.json"
    if not path.is_file():
        return None
    meta = read_json(path, root=model_dir.parent, error=ModelFileError)
    key = meta.get("store") if isinstance(meta, dict) else None
    return key if isinstance(key, str) and "-" in key else None


def _pipeline_store(model_dir: Path, key: str | None) -> Path | None:
    """``<data>/trajectories/<task>/<optimizer>.zarr`` for ``<data>/models/<task>/<optimizer>/<model>/<seed>``,
    when that store key is the one summary.json names and the store is there."""
    parents = model_dir.resolve().parents
    if key is None or len(parents) < 5 or parents[3].name != "models":
        return None
    task, opt = parents[2].name, parents[1].name
    path = parents[4] / "trajectories" / task / f"{opt}.zarr"
    return path if key == f"{task}-{opt}" and path.exists() else None


_CHECKED_FACTS = ("optimizer", "record_every", "steps", "n_params")


def read_trained_on(fc: Forecaster, model_dir: Path, store: str | Path | None) -> TrainedOn:
    """Facts from summary.json, the training store and the model itself; sources that contradict each other
    (a store regenerated after training, or the wrong ``store=``) are refused, not silently preferred."""
    from gfm.store.reader import open_trajectories

    found: list[tuple[str, dict[str, Any]]] = []
    key = _summary_store_key(model_dir)
    if key is not None:
        found.append((str(model_dir.parent / "summary.json"), {"store": key, "optimizer": key.rsplit("-", 1)[1]}))
    path = Path(store) if store is not None else _pipeline_store(model_dir, key)
    if path is not None:
        ts = open_trajectories(path)
        found.append((str(path), {"store": ts.attrs.get("store"), "optimizer": ts.optimizer["name"],
                                  "record_every": ts.record_every, "steps": int(ts.attrs["task"]["steps"]),
                                  "n_params": ts.n_params, "layout": ts.layout}))
    own = {k: fc.extra[k] for k in _CHECKED_FACTS if k in fc.extra}
    if own:
        found.append((str(model_dir / "config.json"), own))
    facts: dict[str, Any] = {}
    where: dict[str, str] = {}
    clash = []
    for source, values in found:
        for k, v in values.items():
            if k in _CHECKED_FACTS and k in facts and facts[k] != v:
                clash.append(f"{k} {facts[k]!r} in {where[k]}, {v!r} in {source}")
            facts[k], where[k] = v, source
    if clash:
        raise ModelFileError(f"{model_dir}: what the model was trained on is contradicted ({'; '.join(clash)}): a "
                             "store that is not the one it was fitted on; pass store= the right one or re-run train")
    return TrainedOn(**facts, sources=tuple(source for source, _ in found))


def model_directory(model_dir: str | Path, seed: int | str | None) -> Path:
    d = Path(model_dir)
    if seed is not None:
        return d / str(seed)
    if not (d / "config.json").exists() and (d / "summary.json").exists():
        seeds = sorted((p.name for p in d.iterdir() if (p / "config.json").is_file()), key=lambda s: (len(s), s))
        raise ModelFileError(f"{d}: a model of the train stage holds one fit per dataset seed "
                             f"({', '.join(seeds) or 'none found'}); pass seed= one of them or the seed's directory")
    return d
