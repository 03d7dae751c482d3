"""Write a file all at once or not at all: the one place that writes a temporary file and renames it.

Readers of the target (a concurrent ``dvc status``, a stage reading its input, a person) see the old file or
the new one, never half of either. What may be replaced is the caller's rule: stage outputs pass
:func:`gfm.artifacts.outputs.claim_output` as ``check`` (:func:`gfm.artifacts.outputs.write_text_output`), which runs again right
before the rename because the target may have changed while the stage ran.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_text_atomic"]


def write_text_atomic(path: str | Path, text: str, *, check: Callable[[], object] | None = None) -> Path:
    """Write ``text`` to ``path`` through a hidden temporary file beside it (a fresh name: nothing is ever
    overwritten but ``path``), flushed to disk and renamed over ``path``.

    Args:
        path: the file to write; its directory is created.
        text: the whole content.
        check: called right before the rename; it refuses by raising, which leaves ``path`` untouched and
            removes the temporary file.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: a fresh file or an error, never someone else's; mode 0o666 less the umask, as open() would make
    # it (tempfile.mkstemp's 0o600 would leave a README or a metrics file unreadable to the group)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check()
        os.replace(name, path)
    except BaseException:
        name.unlink(missing_ok=True)
        raise
    return path
