"""What makes a store writer's work durable and exclusive: the writer's lock (the ``.writer.lock`` in
``<store>.partial``, a POSIX lock the kernel drops when its process dies), the flushes that make a finished block
survive a crash, hard-linked copies of a store, and the one-step swap of two directories.

Every writer of a trajectory store takes the lock: ``gfm generate`` and ``gfm import`` (:mod:`gfm.store.writer`),
``gfm.record`` and ``gfm.record_runs`` (:mod:`gfm.recording.recorder`, :mod:`gfm.recording.runset`), so a second writer of the same
store, in another process or in this one (:data:`HELD`), is refused instead of emptying the first one's work.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from gfm.artifacts.outputs import TRAJECTORY_STORE, OutputError
from gfm.artifacts.zarr_files import LOCK_FILE, partial_path
from gfm.base.errors import StoreLockedError

__all__ = ["HELD", "fsync_tree", "fsync_dir", "lock_writer", "claim_partial", "empty_dir", "lock_partial", "lock_key",
           "remove_partial", "link_store", "exchange_paths"]


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves, so a finished block survives a crash."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f == LOCK_FILE:  # closing any descriptor of a POSIX-locked file drops the lock: never touch it
                continue
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_writer(tmp: Path, path: Path) -> int:
    """Take the writer's lock of a partial store, or refuse: two writers of one store would overwrite each
    other's blocks and race to rename. A POSIX lock (``lockf``) is released by the kernel when its process
    dies, so a SIGKILLed writer never leaves a stale lock; within one process it can be re-taken (an
    interrupted run resumed in the same interpreter).

    The lock is only good if the file it is on is still the one at ``tmp``: a writer finishing between our
    open and our lock renames the file away with its store (or removes it). Then the lock guards nothing here,
    so it is dropped and the lock at ``tmp`` is taken again (a new partial store if the old one is gone)."""
    for _ in range(5):
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(tmp / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # renamed away between the mkdir and the open
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreLockedError(f"{path}: another process is writing this store (it holds {tmp / LOCK_FILE}); "
                                   "wait for it to finish, or stop it and re-run to resume") from None
        mine = os.fstat(fd)
        try:
            there = os.stat(tmp / LOCK_FILE)
        except FileNotFoundError:
            there = None
        if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)
    raise StoreLockedError(f"{path}: another process keeps finishing and restarting this store ({tmp}); "
                           "wait for it to finish")


def claim_partial(tmp: Path) -> None:
    """A leftover ``<store>.partial`` is reused or emptied only if it is a writer's: an empty directory, one
    holding the writer's lock file (:func:`lock_writer` creates it first), or a Zarr group whose root
    attributes carry the trajectory-store marker (gfm.artifacts.outputs; :func:`gfm.store.one_run.create_run_group` writes
    it with the group). Anything else at that path, a Zarr store of someone else included, is refused untouched."""
    if not tmp.exists() and not tmp.is_symlink():
        return
    if tmp.is_dir() and not tmp.is_symlink():
        entries = {c.name for c in tmp.iterdir()}
        lock = tmp / LOCK_FILE
        if not entries or (lock.is_file() and not lock.is_symlink()) \
                or TRAJECTORY_STORE.marked_as(tmp) == TRAJECTORY_STORE.name:
            return
    what = "is a symbolic link" if tmp.is_symlink() else "is not a directory" if not tmp.is_dir() else \
        f"holds {len(list(tmp.iterdir()))} entries, no {LOCK_FILE} and no trajectory-store marker"
    raise OutputError(f"{tmp}: the store's partial path {what}, so it is not a leftover of a writer; refusing to "
                      "remove it (move it away or choose another output path)")


def empty_dir(directory: Path, *, keep: str) -> None:
    for child in directory.iterdir():
        if child.name == keep:
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def lock_partial(path: str | Path) -> int:
    """Take the writer's lock of the store at ``path`` (the ``.writer.lock`` in ``<path>.partial``, the lock
    ``gfm generate`` takes) and return its descriptor; closing it releases the lock. Refused with
    :class:`StoreLockedError` while another process holds it, and with ``OutputError`` when the partial path
    holds something that is not a writer's leftover."""
    path = Path(path)
    tmp = partial_path(path)
    claim_partial(tmp)
    return lock_writer(tmp, path)


# The lock files this process holds: a POSIX lock does not exclude its own process, so two recorders of one
# store in one interpreter are told apart here.
HELD: set[Path] = set()


def lock_key(path: Path) -> Path:
    """The entry of :data:`HELD` for a writer of the store at ``path`` (gfm.record_runs holds it too)."""
    tmp = partial_path(path)
    return Path(os.path.realpath(tmp.parent)) / tmp.name / LOCK_FILE


def remove_partial(tmp: Path) -> None:
    """Remove the recorder's ``.partial`` (the recorded run, now in the store) while still holding its lock:
    the lock file goes last, and a second writer that made a new one in the meantime keeps its directory."""
    empty_dir(tmp, keep=LOCK_FILE)
    (tmp / LOCK_FILE).unlink(missing_ok=True)
    try:
        tmp.rmdir()
    except OSError:  # a new writer's lock file is already in it: the directory is that writer's now
        pass


def link_store(src: Path, dst: Path) -> None:
    """Fill the directory ``dst`` with the files of the store ``src`` (its writer's lock file left out) as hard
    links, or copies where the file system has none. Sharing the files is safe because zarr never writes into
    a file: it writes a new one beside it and renames it over the old name (``zarr.storage._local``), so a
    write through ``dst`` replaces ``dst``'s entry and leaves ``src``'s file as it was."""
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(exist_ok=True)
        for name in files:
            if rel == Path(".") and name == LOCK_FILE:
                continue
            try:
                os.link(Path(dirpath, name), dst / rel / name)
            except OSError:  # no hard links here (or across devices): a copy is as good, only slower
                shutil.copy2(Path(dirpath, name), dst / rel / name)


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap the directory entries ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``): a reader
    of either path sees the old directory or the new one, never none. False, with nothing changed, where the
    system or the file system cannot (not Linux, an old libc, NFS and some other file systems)."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))
