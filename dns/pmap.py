"""A small persistent (immutable, structure-sharing) hash map for the zone snapshot.

The DNS zone is read on every query and written on every watch event. Readers must never lock
and must always see one consistent state, so every change publishes a new immutable snapshot.
Copying a 10,000-entry dict per event would make each event cost O(cluster); this map instead
splits the keys over a fixed number of shards (plain dicts, never mutated once published) and a
change copies only the touched shard plus the tuple of shard references. At 10,000 services that
is ~40 entries + 256 references per event, and every untouched shard is shared with the
previous version.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

SHARDS = 256  # a power of two; see the module docstring for the cost trade-off
_MASK = SHARDS - 1
_EMPTY: dict = {}


class PMap(Generic[K, V]):
    """Immutable mapping; `set`/`delete`/`update` return a new map sharing untouched shards."""

    __slots__ = ("_shards", "_len")

    def __init__(self) -> None:
        self._shards: tuple[dict[K, V], ...] = (_EMPTY,) * SHARDS
        self._len = 0

    @classmethod
    def _make(cls, shards: tuple[dict[K, V], ...], length: int) -> PMap[K, V]:
        new = cls.__new__(cls)
        new._shards = shards
        new._len = length
        return new

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._shards[hash(key) & _MASK].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & _MASK]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def items(self) -> Iterator[tuple[K, V]]:
        for shard in self._shards:
            yield from shard.items()

    def set(self, key: K, value: V) -> PMap[K, V]:
        return self.update({key: value}, ())

    def delete(self, key: K) -> PMap[K, V]:
        return self.update({}, (key,))

    def update(self, upserts: dict[K, V], deletes: tuple[K, ...] | list[K] = ()) -> PMap[K, V]:
        """Apply several changes at once, copying each touched shard only once."""
        if not upserts and not deletes:
            return self
        shards = list(self._shards)
        copied: set[int] = set()
        length = self._len

        def writable(index: int) -> dict[K, V]:
            if index not in copied:
                shards[index] = dict(shards[index])
                copied.add(index)
            return shards[index]

        for key in deletes:
            index = hash(key) & _MASK
            if key in shards[index]:
                del writable(index)[key]
                length -= 1
        for key, value in upserts.items():
            index = hash(key) & _MASK
            shard = writable(index)
            if key not in shard:
                length += 1
            shard[key] = value
        return self._make(tuple(shards), length)

    def shards_shared_with(self, other: PMap[K, V]) -> int:
        """How many shards are the very same object in both maps (structure-sharing check)."""
        return sum(a is b for a, b in zip(self._shards, other._shards))
