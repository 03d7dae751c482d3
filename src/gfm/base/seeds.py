"""Seeds named by what they are for, derived one way: the sha256 of a JSON list that names the purpose and
every key it depends on. Stable across machines, Python versions and processes (unlike ``hash()``), and two
purposes never share a seed unless their lists are equal.

Used for the seed of each fit (gfm.stages.train), the tuning trials (gfm.stages.tuning) and the jump-ahead batch orders
(gfm.stages.accelerate). A trajectory run's own streams come from ``numpy.random.SeedSequence`` instead (gfm.stages.runs):
they decide the stores' bytes (README: reproducibility), and keep that derivation.
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["hashed_seed"]


def hashed_seed(*parts: int | str, bits: int = 63) -> int:
    """A ``bits``-bit seed (at most 64) from the first 8 bytes (little-endian) of sha256(json.dumps(parts)).

    Args:
        parts: ints and strings, in order; the JSON text of their list is what is hashed, so ``1`` and
            ``"1"`` give different seeds.
        bits: 63 for a seed every RNG accepts as a signed 64-bit value (torch.Generator.manual_seed), 64 for
            the full value.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits: got {bits!r}; expected 1..64")
    digest = hashlib.sha256(json.dumps(list(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - bits)
