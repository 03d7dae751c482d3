"""Ways the kill tests interrupt a writer: a SIGKILL inside zarr's n-th file write, or an interrupt of
``gfm generate`` at its n-th block."""

from __future__ import annotations

import os
import signal
import uuid


def sigkill_at_zarr_write(n: int) -> None:
    """Make the n-th file write of zarr's local store (in this process) leave what ``_atomic_write`` leaves when
    killed midway, half the bytes in a ``*.partial`` temporary, then SIGKILL the process. For a forked child."""
    from zarr.storage import _local

    real, count = _local._put, [0]

    def put(path, value, exclusive=False):
        count[0] += 1
        if count[0] == n:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = bytes(value.as_buffer_like())
            with open(path.with_suffix(f".{uuid.uuid4().hex}.partial"), "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, value, exclusive)

    _local._put = put


def interrupt_generate_at_block(monkeypatch, n: int = 2) -> None:
    """``gfm.stages.generate.simulate`` raises KeyboardInterrupt on its n-th call (block n), as a kill there would."""
    from gfm.stages import generate

    real, calls = generate.simulate, [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "simulate", dying)
