"""Cheap structural checks of the artifacts a stage reads, shared by the stages and ``gfm check``.

A stage must not compute on an input that ``gfm check`` refuses. ``gfm check`` also decodes every chunk (a
full data scan); the stages cannot afford that on every start, so they run the *structural* level, which
reads only metadata and directory entries:

* files: every file of an artifact is a regular file inside it. A symbolic link whose target leaves the
  artifact (``/dev/zero``, ``/etc/passwd``, another user's data) and any FIFO, device or socket is refused
  by name before anything is opened: a FIFO would block a reader forever and ``/dev/zero`` never ends.
  (A DVC cache configured with ``cache.type = symlink`` makes every output a link into ``.dvc/cache`` and is
  therefore refused; this project's DVC config keeps the default reflink/copy.)
* sizes: metadata JSON is read at most :data:`MAX_JSON_BYTES` and :data:`MAX_JSON_DEPTH` deep; a chunk file
  larger than its array's chunk can encode to (:func:`chunk_file_limit`) is refused, so no read is
  unbounded.
* Zarr metadata (:func:`array_meta_problems`): shape, dtype, regular chunk grid, only codecs of
  :data:`KNOWN_CODECS`; and which files of a Zarr directory are its own (:func:`foreign_files_in_listing`).

The trajectory store's own rules (attributes, the arrays it must hold) build on these, beside the store's
reader and writer: :func:`gfm.store.check.inspect_trajectory_store`. Each rule is written once; ``gfm check``
reports every problem, a stage raises on the first one (a :class:`~gfm.base.errors.GFMError` subclass naming the
file: one ``error: ...`` line, exit 2).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gfm.artifacts.zarr_files import DONE_DIR, LOCK_FILE, SNAKEMAKE_STAMP, is_chunk_key
from gfm.base.errors import GFMError

__all__ = [
    "UnsafeInputError", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "KNOWN_CODECS", "is_int", "listed", "file_problem",
    "regular_file", "read_bytes", "read_json", "json_depth", "tree_problems", "array_meta_problems",
    "chunk_file_limit", "foreign_files_in_listing",
]

MAX_JSON_BYTES = 64 << 20  # a metadata / split / metrics JSON larger than this is refused unread
MAX_JSON_DEPTH = 64  # nesting deeper than this is refused (our own files are < 10 deep)
KNOWN_CODECS = frozenset({"bytes", "blosc", "zstd", "gzip", "crc32c", "transpose", "sharding_indexed"})
_DTYPE_SIZES = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4,
                "int64": 8, "uint64": 8, "float16": 2, "float32": 4, "float64": 8}
_MAX_LISTED = 5  # problems of one kind named before "and N more"
# A generator's own bookkeeping inside a (partial) store (its done-markers and lock, gfm.artifacts.zarr_files), and the
# stamp `snakemake --touch` (gfm adopt) leaves in a directory output.
_WRITER_FILES = re.compile(rf"{re.escape(DONE_DIR)}/\d+\.done|{re.escape(LOCK_FILE)}|{re.escape(SNAKEMAKE_STAMP)}")


class UnsafeInputError(GFMError, ValueError):
    """A file of an artifact is a link leaving it, not a regular file, too large or nested too deep."""


def is_int(v: Any) -> bool:
    """``v`` is a Python int and not a bool (what a JSON integer parses to)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def file_problem(path: Path, root: Path | None = None, *, want_dir: bool = False) -> str | None:
    """Why ``path`` must not be read (a link leaving ``root``, a broken link, a FIFO/device/socket, missing),
    or None. Nothing is opened: ``lstat``/``stat`` do not block on a FIFO."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(path)
        if root is not None and not _inside(target, os.path.realpath(root)):
            return f"a symbolic link leaving {root} (to {target})"
        try:
            st = os.stat(path)
        except OSError:
            return f"a symbolic link to nothing ({target})"
    if want_dir:
        return None if stat.S_ISDIR(st.st_mode) else "not a directory"
    if not stat.S_ISREG(st.st_mode):
        return _kind_of(st.st_mode) + ", not a regular file"
    return None


def regular_file(path: Path, root: Path | None = None, *, error: type[GFMError] = UnsafeInputError) -> None:
    """Raise ``error`` naming ``path`` unless it is a regular file (inside ``root`` when given)."""
    problem = file_problem(path, root)
    if problem:
        raise error(f"{path}: {problem}")


def read_bytes(path: Path, limit: int, *, root: Path | None = None, error: type[GFMError] = UnsafeInputError) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``; a larger file is refused, not truncated.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` after opening, so a FIFO swapped in between the
    check and the open cannot block the reader."""
    regular_file(path, root, error=error)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {_kind_of(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise error(f"{path}: {st.st_size} bytes; more than the {limit} allowed for this file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(f"{path}: more than the {limit} bytes allowed for this file")
    return data


def json_depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            depth = max(depth, d)
            if d > MAX_JSON_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return depth


def parse_json(raw: bytes | str, where: str, *, error: type[GFMError] = UnsafeInputError) -> Any:
    """``json.loads`` that turns every failure (bad bytes, bad JSON, nesting too deep) into ``error``."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise error(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{where}: not valid JSON ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise error(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def read_json(path: Path, *, limit: int = MAX_JSON_BYTES, root: Path | None = None,
              error: type[GFMError] = UnsafeInputError) -> Any:
    """A JSON file, bounded in size and depth; any failure is ``error`` naming ``path``."""
    return parse_json(read_bytes(path, limit, root=root, error=error), str(path), error=error)


def _walk(root: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """Every entry under ``root`` (relative path, entry), links not followed."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = sorted(os.scandir(root / rel if rel else root), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            sub = f"{rel}/{e.name}" if rel else e.name
            yield sub, e
            if e.is_dir(follow_symlinks=False):
                stack.append(sub)


def listed(items: list[str], what: str) -> str:
    """``what: a, b, c and N more``: the first few of ``items`` named, the rest counted."""
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{what}: {', '.join(items[:_MAX_LISTED])}{more}"


def tree_problems(root: Path) -> tuple[list[str], dict[str, int]]:
    """Walk a directory artifact without following links or opening anything.

    Returns:
        (problems, files): one line per kind of unsafe entry (links leaving ``root``, links to nothing,
        FIFOs/devices/sockets), and the regular files by relative path with their sizes.
    """
    root = Path(root)
    real_root = os.path.realpath(root)
    leaving, broken, special, files = [], [], [], {}
    for rel, e in _walk(root):
        try:
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(root / rel)
                if not _inside(target, real_root):
                    leaving.append(f"{rel} -> {target}")
                    continue
                try:
                    st = os.stat(root / rel)
                except OSError:
                    broken.append(rel)
                    continue
        except OSError:
            broken.append(rel)
            continue
        if stat.S_ISREG(st.st_mode):
            files[rel] = st.st_size
        elif not stat.S_ISDIR(st.st_mode):
            special.append(f"{rel} ({_kind_of(st.st_mode)})")
    problems = []
    if leaving:
        problems.append(listed(leaving, "symbolic links leaving the artifact (refused unread)"))
    if broken:
        problems.append(listed(broken, "symbolic links to nothing"))
    if special:
        problems.append(listed(special, "not regular files (refused unread)"))
    return problems, files


# --- Zarr v3 array metadata ------------------------------------------------------------------------------
def _codec_problems(codecs: Any, where: str, chunk: list[int]) -> list[str]:
    if not isinstance(codecs, list) or not codecs:
        return [f"{where}: codecs must be a non-empty list"]
    out = []
    for c in codecs:
        name = c.get("name") if isinstance(c, dict) else None
        if name not in KNOWN_CODECS:
            out.append(f"{where}: unknown codec {name!r:.60}; this code reads {', '.join(sorted(KNOWN_CODECS))}")
            continue
        conf = c.get("configuration", {})
        if not isinstance(conf, dict):
            out.append(f"{where}: codec {name} configuration must be a mapping")
        elif name == "sharding_indexed":
            inner = conf.get("chunk_shape")
            if (not isinstance(inner, list) or len(inner) != len(chunk) or not all(is_int(n) and n > 0 for n in inner)
                    or any(o % i for o, i in zip(chunk, inner, strict=True))):
                out.append(f"{where}: shard inner chunk_shape {inner!r:.60} must be positive integers dividing "
                           f"{chunk}")
            else:
                out += _codec_problems(conf.get("codecs"), where, inner)
                out += _codec_problems(conf.get("index_codecs"), where, [1] * len(chunk))
    return out


def array_meta_problems(meta: Any, where: str, shape: tuple[int, ...] | None, dtype: str | set[str]) -> list[str]:
    """Problems of one array's ``zarr.json`` (parsed) against the shape and dtype the store's layout says."""
    if not isinstance(meta, dict) or meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
        return [f"{where}: not a Zarr v3 array (node_type / zarr_format)"]
    got, dt = meta.get("shape"), meta.get("data_type")
    if not isinstance(got, list) or not all(is_int(n) and n >= 0 for n in got):
        return [f"{where}: shape {got!r:.80} must be a list of non-negative integers"]
    ok_dtype = dt in dtype if isinstance(dtype, set) else dt == dtype
    if (shape is not None and tuple(got) != tuple(shape)) or not ok_dtype:
        want = f"{shape} " if shape is not None else ""
        return [f"{where}: array is {tuple(got)} {dt!r:.40}; the store's layout says "
                f"{want}{dtype if isinstance(dtype, str) else ' or '.join(sorted(dtype))}"]
    grid = meta.get("chunk_grid")
    chunk = grid.get("configuration", {}).get("chunk_shape") if isinstance(grid, dict) and isinstance(
        grid.get("configuration"), dict) else None
    if (not isinstance(grid, dict) or grid.get("name") != "regular" or not isinstance(chunk, list)
            or len(chunk) != len(got) or not all(is_int(n) and n > 0 for n in chunk)):
        return [f"{where}: chunk_grid must be regular with {len(got)} positive chunk sizes"]
    enc = meta.get("chunk_key_encoding")
    sep = enc.get("configuration", {}).get("separator", "/") if isinstance(enc, dict) and isinstance(
        enc.get("configuration", {}), dict) else None
    if not isinstance(enc, dict) or enc.get("name") not in ("default", "v2") or sep not in ("/", "."):
        return [f"{where}: chunk_key_encoding must be default or v2 with separator / or ."]
    if meta.get("storage_transformers") not in (None, []):
        return [f"{where}: storage transformers are not supported"]
    return _codec_problems(meta.get("codecs"), where, chunk)


def chunk_file_limit(meta: dict) -> int:
    """The largest a chunk (or shard) file of a checked array can be: its raw bytes, plus what the known
    codecs may add (blosc and zstd at most a few bytes per block, generously 10%), plus a shard index."""
    chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
    raw = math.prod(chunk) * _DTYPE_SIZES.get(meta["data_type"], 8)
    inner = 1
    for c in meta["codecs"]:
        if c.get("name") == "sharding_indexed":
            inner = math.prod(o // i for o, i in zip(chunk, c["configuration"]["chunk_shape"], strict=True))
    return int(raw * 1.1) + 1024 * inner + 16 * inner + 4096


def foreign_files_in_listing(files: dict[str, int], groups: set[str], arrays: dict[str, dict]) -> list[str]:
    """Files of a Zarr directory that are not its own: anything but the ``zarr.json`` of the root, a group
    or a declared array, a chunk key within a declared array's grid, or a generator's done-marker / lock.
    The listing-based twin of :func:`gfm.artifacts.zarr_files.foreign_files_on_disk` (which walks a store a writer
    resumes, trusting the groups and arrays it finds): both judge chunk keys by
    :func:`gfm.artifacts.zarr_files.is_chunk_key`, so ``gfm check`` calls foreign exactly the chunk files a resumed
    writer would discard.

    Args:
        files: relative path -> size (from :func:`tree_problems`).
        groups: relative paths of the groups ("" = root).
        arrays: relative path -> parsed, checked ``zarr.json`` of each declared array.
    """
    out = []
    for rel in sorted(files):
        parent, _, name = rel.rpartition("/")
        if name == "zarr.json" and (parent in groups or parent in arrays):
            continue
        if _WRITER_FILES.fullmatch(rel):
            continue
        owner = next((a for a in arrays if rel.startswith(a + "/")), None)
        if owner is not None and is_chunk_key(arrays[owner], rel[len(owner) + 1:]):
            continue
        out.append(rel)
    return out
