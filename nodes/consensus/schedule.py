"""Which protocol runs at which height: the switch rule, derived from the chain alone.

A switch ordered in the block committed at height H (the twin's signed command, carried
like a transaction) takes effect at max(requested height, H + reconfig_delay) on every
validator, because every validator derives it from the same committed chain: no fork,
no extra round. A `SwitchProtocol` event is a switch already agreed on for a height (the
twin's own model actuates that way); it must name a height no core has started.
At equal heights the later order wins (block height, then position in the block).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


class Schedule:
    def __init__(self, initial: str, reconfig_delay: int = 2) -> None:
        if reconfig_delay < 1:
            raise ValueError(f"reconfig_delay must be >= 1, got {reconfig_delay}")
        self.reconfig_delay = reconfig_delay
        self._entries: list[tuple[int, int, str]] = [(1, 0, initial)]
        self._seq = 0

    @classmethod
    def from_chain(cls, initial: str, reconfig_delay: int,
                   chain: Iterable[tuple[int, Sequence[tuple[str, int | None]]]]) -> Schedule:
        """Rebuild from committed blocks: (height, the switches that block orders)."""
        s = cls(initial, reconfig_delay)
        for height, switches in chain:
            s.on_commit(height, switches)
        return s

    def effective_height(self, committed: int, requested: int | None) -> int:
        return max(requested or 0, committed + self.reconfig_delay)

    def on_commit(self, height: int, switches: Sequence[tuple[str, int | None]]) -> None:
        for i, (protocol, requested) in enumerate(switches):
            self._entries.append((self.effective_height(height, requested),
                                  height * 1000 + i, protocol))
        if switches:
            self._entries.sort()

    def decide(self, protocol: str, height: int) -> None:
        """An agreed switch from `height` on (ordered after everything already known)."""
        self._seq += 1
        self._entries.append((height, 1 << 62 | self._seq, protocol))
        self._entries.sort()

    def at(self, height: int) -> str:
        name = self._entries[0][2]
        for start, _, protocol in self._entries:
            if start > height:
                break
            name = protocol
        return name

    def __deepcopy__(self, memo: dict[int, Any]) -> Schedule:
        other = Schedule.__new__(Schedule)
        other.reconfig_delay = self.reconfig_delay
        other._entries = list(self._entries)
        other._seq = self._seq
        return other
