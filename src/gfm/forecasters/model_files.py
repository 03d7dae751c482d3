"""The model directory format: ``config.json`` + ``weights.safetensors``, written and read without pickle, and
its validator for ``gfm check``.

Saved models hold only these two files (and the train stage's ``train_log.csv``): a model pulled from a shared
DVC remote cannot run code. :func:`read_model` refuses unknown kinds, non-float32 tensors, oversized
headers and tensor names that are not plain identifiers; everything ``gfm check`` asks of a model directory is
checked there, so a stage never forecasts with a model that check refuses.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gfm.artifacts.inputs import is_int
from gfm.artifacts.outputs import MODEL, discard_temp, open_temp_dir, replace_output
from gfm.artifacts.verdict import Verdict
from gfm.base.errors import GFMError, OutOfMemory, is_out_of_memory, out_of_memory_text, shorten
from gfm.config import to_dict
from gfm.forecasters.base import Forecaster, ModelFileError, make_forecaster
from gfm.forecasters.fitted import fitted_problems

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_HEADER_BYTES", "save_model", "write_model", "read_model", "check_model_dir",
           "check_trained_models", "check_safetensors_file"]

FORMAT = "gfm-forecaster"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a safetensors header larger than this is refused unread
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def save_model(fc: Forecaster, directory: str | Path) -> Path:
    """Write ``fc``'s ``config.json`` + ``weights.safetensors`` to ``directory`` atomically (temp dir + rename);
    a directory that is not an earlier model is refused (gfm.artifacts.outputs)."""
    directory = Path(directory)
    tmp = open_temp_dir(directory, MODEL)
    try:
        write_model(fc, tmp, directory)
    except BaseException:
        discard_temp(tmp)
        raise
    replace_output(tmp, directory, MODEL)
    return directory


def write_model(fc: Forecaster, tmp: Path, directory: Path) -> None:
    """Write ``fc``'s ``config.json`` and ``weights.safetensors`` into ``tmp`` (renamed to ``directory`` by
    :func:`save_model`), keeping the ``train_log.csv`` of an earlier model there."""
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "kind": fc.name,
            "config": to_dict(fc.config), "prefix_end": fc.prefix_end,
            "horizons": list(fc.horizons), "extra": fc.extra}
    tensors = fc.state_tensors()
    for k in tensors:
        if not _NAME_RE.match(k):
            raise ModelFileError(f"{fc.name}: tensor name {k!r} is not a plain identifier")
    save_file({k: v.float() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
    (tmp / "config.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    keep = [p for p in ("train_log.csv",) if (directory / p).is_file()]
    for p in keep:
        shutil.copy2(directory / p, tmp / p)


def _check_safetensors_header(path: Path, root: Path | None = None) -> dict[str, tuple[int, ...]]:
    """Check a safetensors file before any tensor is read; return its tensor shapes by name.

    Refused (``ModelFileError`` naming the file): not a regular file or a link leaving ``root``; a length
    field past the end of the file or above :data:`MAX_HEADER_BYTES`; a header that is not a JSON object
    (a list, a number, nesting deeper than ``gfm.artifacts.inputs.MAX_JSON_DEPTH``); tensor names that are not plain
    identifiers; dtypes other than F32; shapes that are not lists of non-negative integers; data offsets that
    do not match the shape, overlap or do not cover the data exactly (a truncated or padded file)."""
    import stat

    from gfm.artifacts.inputs import parse_json, regular_file

    regular_file(path, root, error=ModelFileError)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{path}: not a regular file")
        size = st.st_size
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ModelFileError(f"{path}: truncated safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise ModelFileError(f"{path}: safetensors header of {n} bytes is larger than allowed "
                                     f"({min(MAX_HEADER_BYTES, size - 8)})")
            text = f.read(n)
    finally:
        os.close(fd)
    header = parse_json(text, f"{path}: safetensors header", error=ModelFileError)
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: safetensors header must be a JSON object; got a {type(header).__name__}")
    shapes: dict[str, tuple[int, ...]] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ModelFileError(f"{path}: safetensors __metadata__ must map strings to strings")
            continue
        if not _NAME_RE.match(name):
            raise ModelFileError(f"{path}: tensor name {name!r:.80} is not a plain identifier")
        if not isinstance(info, dict):
            raise ModelFileError(f"{path}: tensor {name!r} must be described by an object")
        if info.get("dtype") != "F32":
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r:.40}; expected F32")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
            raise ModelFileError(f"{path}: tensor {name!r} has shape {shape!r:.60}; expected non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(is_int, offsets))
                or not 0 <= offsets[0] <= offsets[1] or offsets[1] - offsets[0] != 4 * math.prod(shape)):
            raise ModelFileError(f"{path}: tensor {name!r} has data_offsets {offsets!r:.60}; expected "
                                 f"[begin, begin + {4 * math.prod(shape)}] for shape {shape}")
        shapes[name] = tuple(shape)
        spans.append(tuple(offsets))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise ModelFileError(f"{path}: tensor data overlap or leave gaps (at byte {begin}, expected {end})")
        end = stop
    if end != size - 8 - n:
        raise ModelFileError(f"{path}: tensor data end at byte {end} but the file holds {size - 8 - n} data bytes "
                             "(truncated or padded)")
    return shapes


def _nonfinite_numbers(obj: Any, where: str = "extra") -> list[str]:
    """Paths of non-finite numbers in a config's fitted values (JSON allows NaN and Infinity)."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [where]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _nonfinite_numbers(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _nonfinite_numbers(v, f"{where}[{i}]")]
    return []


def read_model(directory: str | Path) -> Forecaster:
    """Load a forecaster saved by :meth:`Forecaster.save`, refusing anything unexpected.

    Everything ``gfm check`` asks of a model directory is checked here, so a stage never forecasts with a
    model that check refuses: both files regular and inside the directory, config JSON bounded in size and
    depth, safetensors header (see :func:`_check_safetensors_header`), ``prefix_end`` >= 0, fitted values
    (``extra``) holding what the forecaster declares (:meth:`Forecaster.fitted_schema`), config sizes equal to
    those the tensors were built with and tensors of exactly the shapes the model builds (both compared from
    the header before anything is allocated: :func:`_check_sizes`, :func:`_dry_load`), every tensor and fitted
    value finite.

    Raises:
        ModelFileError: missing files, wrong format, unsafe, misshapen or non-finite tensors or names.
        ForecasterError: unknown kind or invalid config.
    """
    from safetensors import SafetensorError

    from gfm.artifacts.inputs import file_problem, read_json

    directory = Path(directory)
    problem = file_problem(directory, want_dir=True)
    if problem:
        raise ModelFileError(f"{directory}: model directory is {problem}")
    cfg_path, w_path = directory / "config.json", directory / "weights.safetensors"
    for p in (cfg_path, w_path):
        problem = file_problem(p, directory)
        if problem == "missing":
            raise ModelFileError(f"{p}: missing (a model directory holds config.json and weights.safetensors)")
        if problem:
            raise ModelFileError(f"{p}: {problem}")
    meta = read_json(cfg_path, limit=MAX_HEADER_BYTES, root=directory, error=ModelFileError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{cfg_path}: not a {FORMAT} v{FORMAT_VERSION} config")
    kind = meta.get("kind")
    if not isinstance(kind, str):
        raise ModelFileError(f"{cfg_path}: 'kind' must be a string")
    prefix_end, horizons, extra = meta.get("prefix_end"), meta.get("horizons"), meta.get("extra") or {}
    if not is_int(prefix_end) or not isinstance(horizons, list) or not all(map(is_int, horizons)):
        raise ModelFileError(f"{cfg_path}: 'prefix_end' must be an integer and 'horizons' a list of integers")
    if not isinstance(extra, dict):
        raise ModelFileError(f"{cfg_path}: 'extra' must be a mapping")
    bad_extra = _nonfinite_numbers(extra)
    if bad_extra:
        raise ModelFileError(f"{cfg_path}: fitted values {', '.join(bad_extra[:5])} are not finite; re-run the "
                             "train stage")
    if not isinstance(meta.get("config") or {}, dict):
        raise ModelFileError(f"{cfg_path}: 'config' must be a mapping")
    if prefix_end < 0:
        raise ModelFileError(f"{cfg_path}: 'prefix_end' is {shorten(prefix_end, 40)}; expected a record index >= 0 "
                             "(the model reads records 0..prefix_end); re-run the train stage")
    shapes = _check_safetensors_header(w_path, directory)
    fc = make_forecaster(kind, meta.get("config") or {}, prefix_end=prefix_end, horizons=horizons)
    # sizes first: an edited size option is the cause of every fitted value that then fails to fit it
    _check_sizes(fc, shapes, cfg_path, w_path)
    bad_fitted = fitted_problems(extra, fc.fitted_schema()) or fc.fitted_relations(extra)
    if bad_fitted:  # before the tensors: building a model reads these values
        more = f" (and {len(bad_fitted) - 3} more)" if len(bad_fitted) > 3 else ""
        raise ModelFileError(f"{cfg_path}: fitted values do not fit a {kind} model: {'; '.join(bad_fitted[:3])}"
                             f"{more}; re-run the train stage")
    fc.extra = dict(extra)
    try:
        _dry_load(fc, shapes)
        fc.load_state_tensors(load_file(str(w_path)))
    except (RuntimeError, KeyError, ValueError, TypeError, SafetensorError) as exc:
        if isinstance(exc, GFMError):
            raise
        if is_out_of_memory(exc):  # not a misfit: the (consistent) model is larger than the memory left
            raise OutOfMemory(out_of_memory_text(exc, f"loading the {kind!r} model of {directory}",
                                                 "free memory or load it where more is free")) from None
        # e.g. a tensor of the wrong shape or a missing one: torch's message, first line, names it
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2]) if first else type(exc).__name__
        raise ModelFileError(f"{w_path}: tensors do not fit a {kind!r} model ({detail[:300]})") from None
    bad = sorted(n for n, t in fc.state_tensors().items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise ModelFileError(f"{w_path}: tensors {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} hold "
                             "non-finite values (NaN or Inf); re-run the train stage")
    return fc


def _check_sizes(fc: Forecaster, shapes: dict[str, tuple[int, ...]], cfg_path: Path, w_path: Path) -> None:
    """Refuse a config whose size options (widths, layers) differ from those the saved tensors were built
    with, read from the safetensors header alone: a few edited bytes of config.json must not make the load
    build (allocate) a model far larger than the file."""
    for option, found in fc.sizes_from_tensors(shapes).items():
        declared = getattr(fc.config, option)
        if declared != found:
            raise ModelFileError(f"{cfg_path}: config.{option} is {shorten(declared)} but the tensors of "
                                 f"{w_path.name} were built with {option} {found}; the two files do not belong "
                                 "together (re-run the train stage)")


def _dry_load(fc: Forecaster, shapes: dict[str, tuple[int, ...]]) -> None:
    """Build a copy of ``fc`` on torch's meta device (shapes only: nothing allocated) and load tensors of the
    header's shapes into it: every shape the model would build is compared before the real build allocates
    it. Raises what the real load would (a missing, unexpected or misshapen tensor)."""
    dry = make_forecaster(fc.name, fc.config, prefix_end=fc.prefix_end, horizons=fc.horizons)
    dry.extra = dict(fc.extra)
    with torch.device("meta"):
        dry.load_state_tensors({name: torch.empty(shape, device="meta") for name, shape in shapes.items()})


# --- gfm check: a model directory, a train stage's directory of per-seed models, a safetensors file -------
def check_model_dir(path: Path, v: Verdict) -> None:
    from gfm.artifacts.verdict import check_csv

    fc = read_model(path)  # refuses what the stages refuse: headers, shapes, non-finite tensors
    if (path / "train_log.csv").is_file():
        sub = Verdict(path / "train_log.csv", "csv")
        check_csv(path / "train_log.csv", sub)
        v.problems += [f"train_log.csv: {p}" for p in sub.problems]
    v.summary = f"{fc.name}, prefix_end {fc.prefix_end}, horizons {list(fc.horizons)}"


def check_trained_models(path: Path, v: Verdict) -> None:
    from gfm.artifacts.inputs import read_json

    summary = read_json(path / "summary.json", error=GFMError)
    if not isinstance(summary, dict) or not isinstance(summary.get("seeds"), dict) or "kind" not in summary:
        v.problems.append("summary.json must hold 'kind' and 'seeds'")
        return
    listed = set(summary["seeds"])
    present = {p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if listed != present:
        v.problems.append(f"summary.json lists seeds {sorted(listed)}, the directory holds {sorted(present)}")
    for seed in sorted(listed & present):
        sub = Verdict(path / seed, "model")
        try:
            check_model_dir(path / seed, sub)
        except GFMError as exc:
            sub.problems.append(str(exc).removeprefix(f"{path / seed}/"))
        v.problems += [f"{seed}/: {p}" for p in sub.problems]
        if sub.ok and read_json(path / seed / "config.json", error=GFMError).get("kind") != summary["kind"]:
            v.problems.append(f"{seed}/: kind differs from summary.json's {summary['kind']!r}")
    v.summary = f"{summary['kind']}, {len(listed)} dataset seeds"


def check_safetensors_file(path: Path, v: Verdict) -> None:
    _check_safetensors_header(path)
    v.summary = "header sound (F32 tensors with plain names)"
