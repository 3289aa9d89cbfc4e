"""Per-producer transaction pool, ordered by arrival.

A transaction is verified once, when it enters the pool; a proposal that carries the
same bytes later is checked against the pool instead of verifying again. A transaction
first seen (and verified) inside a proposal is remembered in a small bounded cache, so
the client's own copy arriving afterwards is not verified a second time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from nodes.reconfig import ReconfigCommand
from nodes.tx import Transaction, TxRejected


class Mempool:
    def __init__(self, capacity: int = 100_000, verified_cache: int = 50_000) -> None:
        self.capacity = capacity
        self._txs: OrderedDict[str, Transaction] = OrderedDict()
        self._verified: OrderedDict[str, Transaction] = OrderedDict()
        self._verified_cap = verified_cache
        self._reconfigs: OrderedDict[str, ReconfigCommand] = OrderedDict()
        self.committed_ids: set[str] = set()
        """Ids already in the chain; a resubmission is a duplicate."""

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_id: str) -> bool:
        return tx_id in self._txs

    def get(self, tx_id: str) -> Transaction | None:
        return self._txs.get(tx_id)

    def is_known(self, tx_id: str) -> bool:
        """Pooled or committed: a new copy is a duplicate, refused without verifying."""
        return tx_id in self._txs or tx_id in self.committed_ids

    def was_verified(self, tx: Transaction) -> bool:
        """True if exactly this transaction (same bytes and signature) passed `check`
        here before, in the pool or in a proposal; False means: verify it now."""
        seen = self._txs.get(tx.id)
        if seen is None:
            seen = self._verified.get(tx.id)
        return seen is not None and seen == tx

    def remember_verified(self, tx: Transaction) -> None:
        """Record a transaction that passed `check` outside the pool (in a proposal)."""
        if tx.id in self._txs:
            return
        self._verified[tx.id] = tx
        if len(self._verified) > self._verified_cap:
            self._verified.popitem(last=False)

    def add(self, tx: Transaction) -> None:
        """Admit an already-verified transaction; raises TxRejected for duplicates/full."""
        if tx.id in self._txs or tx.id in self.committed_ids:
            raise TxRejected("duplicate", f"tx '{tx.id}' was already received")
        if len(self._txs) >= self.capacity:
            raise TxRejected("mempool_full", f"pool holds {self.capacity} transactions")
        self._txs[tx.id] = tx

    def add_reconfig(self, cmd: ReconfigCommand) -> None:
        if cmd.id in self._reconfigs or reconfig_key(cmd.id) in self.committed_ids:
            raise TxRejected("duplicate", f"reconfig '{cmd.id}' was already received")
        self._reconfigs[cmd.id] = cmd

    def take(self, max_txs: int, max_bytes: int) -> list[Transaction]:
        """Oldest transactions first, without removing them (the block may not commit)."""
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

    def remove_committed(self, tx_ids: Iterable[str], reconfig_ids: Iterable[str] = ()) -> None:
        for tx_id in tx_ids:
            self.committed_ids.add(tx_id)
            self._txs.pop(tx_id, None)
            self._verified.pop(tx_id, None)
        for cmd_id in reconfig_ids:
            self.committed_ids.add(reconfig_key(cmd_id))
            self._reconfigs.pop(cmd_id, None)


def reconfig_key(cmd_id: str) -> str:
    """Reconfig ids live in their own namespace inside `committed_ids`."""
    return "\x00reconfig:" + cmd_id
