"""Messages for later heights, kept (bounded) until this validator gets there.

A proposal or vote for height h + 1 often arrives before our own commit of h: it is
kept, already verified, and replayed on entering h + 1. Each validator gets an equal
share of the count and byte bounds, so a faulty one cannot crowd out the others; a
message that does not fit is dropped and counted (the sync path recovers what matters).
"""

from __future__ import annotations

from typing import Any

from nodes.consensus.messages import NodeId
from nodes.consensus.ports import Window


class FutureBuffer:
    def __init__(self, window: Window, n_validators: int) -> None:
        self.max_count = max(1, window.max_messages // max(n_validators, 1))
        self.max_bytes = max(1, window.max_bytes // max(n_validators, 1))
        self._by_height: dict[int, list[tuple[tuple[Any, ...], NodeId, int, Any]]] = {}
        self._keys: set[tuple[Any, ...]] = set()
        self._count: dict[NodeId, int] = {}
        self._bytes: dict[NodeId, int] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: tuple[Any, ...], height: int, sender: NodeId, msg: Any,
            size: int) -> bool:
        """Keep `msg` (unique by `key`) for `height`; False if it was dropped."""
        if key in self._keys:
            return True
        if (self._count.get(sender, 0) >= self.max_count
                or self._bytes.get(sender, 0) + size > self.max_bytes):
            self.dropped += 1
            return False
        self._keys.add(key)
        self._count[sender] = self._count.get(sender, 0) + 1
        self._bytes[sender] = self._bytes.get(sender, 0) + size
        self._by_height.setdefault(height, []).append((key, sender, size, msg))
        return True

    def take(self, height: int) -> list[Any]:
        """The messages kept for `height` in arrival order; forget those below it."""
        out: list[Any] = []
        for h in [h for h in self._by_height if h <= height]:
            for key, sender, size, msg in self._by_height.pop(h):
                self._keys.discard(key)
                self._count[sender] -= 1
                self._bytes[sender] -= size
                if h == height:
                    out.append(msg)
        return out
