"""A bounded cache of compiled searches, shared by every index of a kind.

Indexes that score alike share one jit'd search per shape (k, group,
mesh, ...), so an evaluation building many indexes compiles once. A server
that sees many distinct k would otherwise keep one compiled program per k
for ever: the cache keeps the `MAX_ENTRIES` most recently used and drops
the least recently used beyond that (a dropped one compiles again if asked
for).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

MAX_ENTRIES = 32


class CompiledCache:
    """Key -> compiled function, least recently used dropped past `max_entries`."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The function of `key`, made by `make()` on a miss."""
        if key in self._entries:
            self._entries.move_to_end(key)
        else:
            self._entries[key] = make()
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
