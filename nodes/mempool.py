"""Per-producer transaction pool, ordered by arrival.

A transaction is verified once, when it enters the pool; a proposal that carries the
same bytes later is checked against the pool instead of verifying again. A transaction
first seen (and verified) inside a proposal is remembered in a small bounded cache, so
the client's own copy arriving afterwards is not verified a second time.

Bounds (issue 18): the pool holds at most `capacity` transactions and `max_bytes` of
payload; transactions are named by `Transaction.uid` (client + id). The committed set
remembers each committed uid only while a block could still carry it: until the newest
committed block's time has moved `TX_PAST + TX_FUTURE` s past the transaction's own
timestamp (an older one is refused by its timestamp anyway), so it holds about
rate x 130 s of ids instead of every id ever (it grew ~5.5 MB/min before).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable

from nodes.reconfig import ReconfigCommand
from nodes.tx import TX_FUTURE, TX_PAST, Transaction, TxRejected


class CommittedSet:
    """Committed uids (and reconfig keys), forgotten once no valid block can repeat them."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._expiry: list[tuple[float, str]] = []
        """(timestamp, uid) of transactions, oldest first (a heap)."""

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, key: str, ts: float | None = None) -> None:
        """`ts`: the transaction's timestamp (None: kept for good, e.g. reconfigs)."""
        if key in self._ids:
            return
        self._ids.add(key)
        if ts is not None:
            heapq.heappush(self._expiry, (ts, key))

    def forget_before(self, block_time: float) -> None:
        """A block at `block_time` or later cannot carry a tx older than this cutoff."""
        cutoff = block_time - TX_PAST - TX_FUTURE
        exp = self._expiry
        while exp and exp[0][0] < cutoff:
            self._ids.discard(heapq.heappop(exp)[1])


class Mempool:
    def __init__(self, capacity: int = 100_000, verified_cache: int = 50_000,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._txs: OrderedDict[str, Transaction] = OrderedDict()
        self._verified: OrderedDict[str, Transaction] = OrderedDict()
        self._verified_cap = verified_cache
        self._reconfigs: OrderedDict[str, ReconfigCommand] = OrderedDict()
        self.committed_ids = CommittedSet()
        """Uids in the chain that a block could still repeat; a resubmission is a
        duplicate."""

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, uid: str) -> bool:
        return uid in self._txs

    def get(self, uid: str) -> Transaction | None:
        return self._txs.get(uid)

    def is_known(self, uid: str) -> bool:
        """Pooled or committed: a new copy is a duplicate, refused without verifying."""
        return uid in self._txs or uid in self.committed_ids

    def full(self, size: int = 0) -> str | None:
        """Why one more transaction of `size` payload bytes does not fit, or None."""
        if len(self._txs) >= self.capacity:
            return f"pool holds {self.capacity} transactions"
        if self.bytes + size > self.max_bytes:
            return f"pool holds {self.bytes} of {self.max_bytes} payload bytes"
        return None

    def was_verified(self, tx: Transaction) -> bool:
        """True if exactly this transaction (same bytes and signature) passed `check`
        here before, in the pool or in a proposal; False means: verify it now."""
        seen = self._txs.get(tx.uid)
        if seen is None:
            seen = self._verified.get(tx.uid)
        return seen is not None and seen == tx

    def remember_verified(self, tx: Transaction) -> None:
        """Record a transaction that passed `check` outside the pool (in a proposal)."""
        if tx.uid in self._txs:
            return
        self._verified[tx.uid] = tx
        if len(self._verified) > self._verified_cap:
            self._verified.popitem(last=False)

    def add(self, tx: Transaction) -> None:
        """Admit an already-verified transaction; raises TxRejected for duplicates/full."""
        if tx.uid in self._txs or tx.uid in self.committed_ids:
            raise TxRejected("duplicate", f"tx '{tx.id}' was already received")
        problem = self.full(tx.size)
        if problem is not None:
            raise TxRejected("mempool_full", problem)
        self._txs[tx.uid] = tx
        self.bytes += tx.size

    def add_reconfig(self, cmd: ReconfigCommand) -> None:
        if cmd.id in self._reconfigs or reconfig_key(cmd.id) in self.committed_ids:
            raise TxRejected("duplicate", f"reconfig '{cmd.id}' was already received")
        self._reconfigs[cmd.id] = cmd

    def take(self, max_txs: int, max_bytes: int, now: float | None = None) -> list[Transaction]:
        """Oldest transactions first, without removing them (the block may not commit).
        With `now`, a transaction too old for a block made now is dropped from the pool
        first (keeping it would make every proposal that carries it invalid)."""
        if now is not None:
            stale = [uid for uid, tx in self._txs.items() if tx.ts < now - TX_PAST + 5.0]
            for uid in stale:
                self.bytes -= self._txs.pop(uid).size
        out: list[Transaction] = []
        total = 0
        for tx in self._txs.values():
            if len(out) >= max_txs or total + tx.size > max_bytes:
                break
            out.append(tx)
            total += tx.size
        return out

    def take_reconfigs(self) -> list[ReconfigCommand]:
        return list(self._reconfigs.values())

    def remove_committed(self, txs: Iterable[Transaction], reconfig_ids: Iterable[str] = (),
                         block_time: float | None = None) -> None:
        for tx in txs:
            self.committed_ids.add(tx.uid, tx.ts)
            gone = self._txs.pop(tx.uid, None)
            if gone is not None:
                self.bytes -= gone.size
            self._verified.pop(tx.uid, None)
        for cmd_id in reconfig_ids:
            self.committed_ids.add(reconfig_key(cmd_id))
            self._reconfigs.pop(cmd_id, None)
        if block_time is not None:
            self.committed_ids.forget_before(block_time)


def reconfig_key(cmd_id: str) -> str:
    """Reconfig ids live in their own namespace inside `committed_ids`."""
    return "\x00reconfig:" + cmd_id
