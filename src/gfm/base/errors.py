"""Typed errors. Each also subclasses a builtin so callers can catch either (zarr-python's pattern). And the
text helpers their messages share (one line, shortened values, sizes and counts)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "one_line",
    "bound_problems",
    "shorten",
    "size_text",
    "count_text",
    "MAX_PROBLEM_CHARS",
    "MAX_PROBLEMS",
    "GFMError",
    "ParamsError",
    "StoreError",
    "StoreNotFoundError",
    "StoreIncompleteError",
    "StoreSchemaError",
    "StoreLockedError",
    "OutOfMemory",
    "is_out_of_memory",
    "out_of_memory_text",
    "on_out_of_memory",
]


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped, so that a problem naming a key like ``"a\\nb"``
    (user input) is still exactly one line of output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


MAX_PROBLEM_CHARS = 400
"""Longest problem line a ParamsError keeps (longer ones are cut, ending in "…")."""
MAX_PROBLEMS = 50
"""Most problem lines a ParamsError keeps; the rest are counted in one last line."""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "…"


def _int_text(value: int) -> str:
    """An integer as text, without ever formatting thousands of digits (Python refuses past 4,300)."""
    if -10**40 < value < 10**40:
        return repr(value)
    digits = int(abs(value).bit_length() * 0.30103) + 1
    return f"{'-' if value < 0 else ''}an integer of about {digits:,} digits"


def shorten(value, limit: int = 80, *, quote: bool = True) -> str:
    """``repr(value)`` (``str`` when not ``quote``) as one line of at most ``limit`` characters, ending in "…"
    when cut. Cheap on huge values: containers show their first few items, long strings their start, huge
    integers their number of digits. Use it for every user value printed in a message."""
    import reprlib

    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return _clip(_int_text(value), limit)
    if isinstance(value, str) and not quote:
        return _clip(one_line(value[: limit + 1]), limit)
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlong, r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = (
        max(limit, 10), max(limit, 10), 40, 3, 6, 6, 4, 6)
    r.repr_int = lambda x, level: _int_text(x)  # also inside containers
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still shown as something
        text = f"<{type(value).__name__}>"
    return _clip(one_line(text), limit)


def bound_problems(problems: list[str]) -> list[str]:
    """At most :data:`MAX_PROBLEMS` one-line problems of at most :data:`MAX_PROBLEM_CHARS` characters each."""
    lines = [_clip(one_line(p), MAX_PROBLEM_CHARS) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_PROBLEMS:,} more problems (the first {MAX_PROBLEMS} are shown)")
    return lines


class GFMError(Exception):
    """Base class of every error this package raises on purpose. The CLI turns these into exit code 2."""


class ParamsError(GFMError, ValueError):
    """A params file is missing, unreadable or invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str, *, source: str = "params"):
        self.problems = bound_problems([problems] if isinstance(problems, str) else list(problems))
        self.source = _clip(one_line(source), MAX_PROBLEM_CHARS)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


class StoreError(GFMError):
    """A trajectory store cannot be used."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store at the given path."""


class StoreIncompleteError(StoreError, ValueError):
    """The store exists but was never finished (no completion flag): a crashed or running writer."""


class StoreSchemaError(StoreError, ValueError):
    """The store was written with another schema version or does not have the expected layout."""


class StoreLockedError(StoreError, RuntimeError):
    """Another live process is writing the same store."""


class OutOfMemory(GFMError, MemoryError):
    """An allocation failed; the message names what was being done, the allocation and how to need less."""


def is_out_of_memory(exc: BaseException) -> bool:
    """``exc`` is a failed allocation: Python's MemoryError, torch's OutOfMemoryError (CUDA), or the
    RuntimeError torch's CPU allocator raises ("DefaultCPUAllocator: not enough memory")."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)[:2000] if isinstance(exc, RuntimeError) else ""
    return "not enough memory" in text or "out of memory" in text or "can't allocate memory" in text


def size_text(n: float) -> str:
    """Bytes as text: 37.2 GiB, 512.0 MiB, 12 KiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}" if n < 10**6 * scale else f"{n / scale:.2e} {unit}"
    return f"{int(n)} B"


def count_text(n: int) -> str:
    """A count as text: 97,000,000; 1.0e+30 when it would be longer than 15 digits."""
    return f"{n:,}" if n < 10**15 else f"{float(n):.1e}" if n < 10**300 else "more than 1e300"


def _allocation(exc: BaseException) -> str:
    """The size of the allocation that failed, as torch's message gives it ("" when it does not)."""
    text = str(exc)[:2000]
    found = re.search(r"allocate (\d+) bytes", text)
    if found:
        return size_text(int(found.group(1)))
    found = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]?i?B)", text)
    return found.group(1) if found else ""


def out_of_memory_text(exc: BaseException, doing: str, advice: str) -> str:
    """One line: out of memory while ``doing`` (with the failed allocation's size when known); ``advice``."""
    size = _allocation(exc)
    return one_line(f"out of memory while {doing}{f' (an allocation of {size} failed)' if size else ''}; {advice}")


@contextmanager
def on_out_of_memory(doing: str, advice: str) -> Iterator[None]:
    """Turn a failed allocation inside the block into :class:`OutOfMemory` (see :func:`out_of_memory_text`);
    every other exception passes unchanged."""
    try:
        yield
    except BaseException as exc:
        if not is_out_of_memory(exc):
            raise
        raise OutOfMemory(out_of_memory_text(exc, doing, advice)) from None
