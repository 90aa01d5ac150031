"""Which process serves a store: rendezvous hashing of store names (docs/design.md, "Sharding").

Each shard i scores a store ``sha256(f"{store}\\x00{i}")`` (its first 8 bytes, big-endian);
the highest score owns the store, the lowest i on a tie. Going from M to M+1 shards moves
only the stores the new shard wins, about 1/(M+1) of them; modulo hashing would move almost
all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def score(store: str, shard: int) -> int:
    """The weight shard ``shard`` gives ``store``."""
    digest = hashlib.sha256(f"{store}\x00{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owner(store: str, total_shards: int) -> int:
    """The shard in ``0..total_shards-1`` that serves ``store``."""
    if total_shards < 1:
        raise ValueError("total_shards must be >= 1")
    best, best_score = 0, -1
    for shard in range(total_shards):
        value = score(store, shard)
        if value > best_score:  # strictly greater: the lowest shard wins a tie
            best, best_score = shard, value
    return best


@dataclass(frozen=True)
class Shard:
    """This process's place in the fleet: shard ``index`` of ``total``."""

    index: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.total:
            raise ValueError(f"shard {self.index} of {self.total}: want 0 <= shard < total shards")

    def owns(self, store: str) -> bool:
        """True when this process serves ``store``."""
        return self.total == 1 or owner(store, self.total) == self.index
