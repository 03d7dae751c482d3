"""Where each tensor of a network sits in its flat parameter vector. Torch-free on purpose: the store reads
layouts, and `gfm split` / `gfm check` read stores without ever importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ParamSpec", "layout_from_shapes"]


@dataclass(frozen=True)
class ParamSpec:
    """One tensor of the network inside the flat parameter vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def fan_in(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else self.shape[0]


def layout_from_shapes(named_shapes: list[tuple[str, tuple[int, ...]]]) -> tuple[ParamSpec, ...]:
    out, offset = [], 0
    for name, shape in named_shapes:
        out.append(ParamSpec(name, tuple(shape), offset))
        offset += math.prod(shape)
    return tuple(out)
