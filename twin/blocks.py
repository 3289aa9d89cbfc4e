"""The twin's blocks: index ranges of its transaction stream, and their `BlockRules`.

A block stands for the oldest transactions that had arrived at the proposer when it
built it (the stream is the producers' shared pool); its size is the transactions'
bytes plus a header. The consensus core reads only `digest`, `height`, `proposer` and
`protocol`; the rest is what the model measures (latency, sizes on the wire).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twin.workload import TxStream


class _Config(Protocol):
    max_block_bytes: int
    block_header_bytes: int


class BlockSource(Protocol):
    """What block building needs of the model (`twin.model.ChainModel`)."""

    stream: TxStream

    @property
    def cfg(self) -> _Config: ...

    def next_block_id(self) -> int: ...


class Producer(Protocol):
    """The node that builds (`twin.simnode.SimNode`)."""

    idx: int
    tip: Any
    tip_voters: frozenset[int] | None


class Block:
    __slots__ = ("id", "digest", "parent", "height", "proposer", "tx_start", "tx_end",
                 "tx_bytes", "size_bytes", "proposed_at", "protocol", "voters")

    def __init__(self, id: int, height: int, proposer: int, tx_start: int, tx_end: int,
                 tx_bytes: int, size_bytes: int, proposed_at: float, protocol: str,
                 parent: int | None = None, voters: frozenset[int] | None = None) -> None:
        self.id = self.digest = id
        self.parent = parent
        self.height = height
        self.proposer = proposer
        self.tx_start = tx_start
        self.tx_end = tx_end
        self.tx_bytes = tx_bytes
        self.size_bytes = size_bytes
        self.proposed_at = proposed_at
        self.protocol = protocol
        self.voters = voters
        """Who voted in the builder's certificate of the parent (a validator's block
        carries that certificate): the next height's proposer pool."""

    @property
    def tx_count(self) -> int:
        return self.tx_end - self.tx_start

    def __deepcopy__(self, memo: dict[int, Any]) -> Block:
        return self  # never changes once built

    def __repr__(self) -> str:
        return f"Block(id={self.id}, height={self.height}, proposer={self.proposer})"


class TwinBlocks:
    """`BlockRules` of one simulated validator: build from the stream after its tip."""

    __slots__ = ("node", "model")

    def __init__(self, node: Producer, model: BlockSource) -> None:
        self.node = node
        self.model = model

    def build(self, height: int, parent: Any, protocol: str, now: float,
              prev_cert: Any = None) -> Block:
        model = self.model
        tip = self.node.tip
        start = tip.tx_end if tip is not None else 0
        stream = model.stream
        end = stream.take(start, now, model.cfg.max_block_bytes)
        txb = stream.bytes_between(start, end)
        return Block(model.next_block_id(), height, self.node.idx, start, end, txb,
                     txb + model.cfg.block_header_bytes, now, protocol, parent,
                     self.node.tip_voters if prev_cert is None
                     else frozenset(v.validator for v in prev_cert.votes))

    def check(self, block: Any, parent: Any) -> str | None:
        return None if block.parent == parent else "block does not extend our tip"

    def switches(self, block: Any) -> Sequence[tuple[str, int | None]]:
        return ()  # the twin actuates switches as agreed heights (SwitchProtocol)

    def size(self, block: Any) -> int:
        return int(block.size_bytes)

    def voters(self, block: Any) -> frozenset[int] | None:
        return block.voters  # type: ignore[no-any-return]
