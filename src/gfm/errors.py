"""Typed errors. Each also subclasses a builtin so callers can catch either (zarr-python's pattern)."""

from __future__ import annotations

__all__ = [
    "one_line",
    "GFMError",
    "ParamsError",
    "StoreError",
    "StoreNotFoundError",
    "StoreIncompleteError",
    "StoreSchemaError",
    "StoreLockedError",
]


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped, so that a problem naming a key like ``"a\\nb"``
    (user input) is still exactly one line of output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class GFMError(Exception):
    """Base class of every error this package raises on purpose. The CLI turns these into exit code 2."""


class ParamsError(GFMError, ValueError):
    """A params file is missing, unreadable or invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str, *, source: str = "params"):
        self.problems = [one_line(p) for p in ([problems] if isinstance(problems, str) else problems)]
        self.source = one_line(source)
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
