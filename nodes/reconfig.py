"""The run-time protocol switch command, signed by the twin.

How a switch happens (what the twin needs to know):

1. The twin builds ``ReconfigCommand.create(twin_key, cmd_id, protocol, activate_at)``
   with its key (``twin.key`` written by ``python -m nodes genesis``; its public key is
   ``twin_pubkey`` in genesis) and sends ``{"t": "reconfig", "cmd": cmd.to_wire()}`` to
   any validator's host:port (the same port clients use). The node answers
   ``{"t": "reconfig_ack", "id": ..., "ok": bool, "reason": ...}`` and forwards it to
   the other validators' pools. (CLI: ``python -m nodes reconfig --key twin.key
   --target host:port --protocol bigfoot [--at HEIGHT]``.)
2. The command is ordered through consensus like a transaction: the next proposer puts
   it in its block's ``reconfigs`` list.
3. When the block at height H carrying it commits, the switch takes effect at height
   ``max(activate_at or 0, H + genesis.reconfig_delay)`` on every node, because every
   node derives it from the same committed chain. No fork, no extra round.
4. Every block header records the protocol it was made under (``protocol``), and the
   per-block sensor records carry it too.

Unknown protocols, bad signatures and duplicates are refused with a reason. So is a
stale or foreign command (issue 18): the signed bytes include the chain id, `issued_at`
must be within [-RECONFIG_PAST, +TX_FUTURE] s of the validator's clock at intake and of
the block's time in a block, and an `activate_at` the chain has already reached is
refused (before: a switch issued a year earlier, for a past height, was applied).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodes.crypto import KeyPair, Verifier
from nodes.tx import MAX_ID_LEN, TX_FUTURE, TxRejected

RECONFIG_PAST = 60.0
"""Oldest acceptable `issued_at`, seconds before the clock or the block's time."""
DEFAULT_CHAIN = "chaintwin"


@dataclass(frozen=True, slots=True)
class ReconfigCommand:
    id: str
    protocol: str
    """Target consensus protocol name, e.g. 'pbft' or 'bigfoot'."""
    activate_at: int | None
    """Requested height; None means as soon as allowed (commit height + reconfig_delay)."""
    issued_at: float
    sig: str
    chain_id: str = DEFAULT_CHAIN
    """The chain it is for (genesis `chain_id`); part of the signed bytes."""

    @staticmethod
    def signing_bytes(cmd_id: str, protocol: str, activate_at: int | None, issued_at: float,
                      chain_id: str = DEFAULT_CHAIN) -> bytes:
        return (f"reconfig|{chain_id}|{cmd_id}|{protocol}|{activate_at}|{issued_at!r}"
                .encode())

    @classmethod
    def create(
        cls,
        twin_key: KeyPair,
        cmd_id: str,
        protocol: str,
        activate_at: int | None,
        issued_at: float,
        chain_id: str = DEFAULT_CHAIN,
    ) -> ReconfigCommand:
        sig = twin_key.sign(cls.signing_bytes(cmd_id, protocol, activate_at, issued_at,
                                              chain_id))
        return cls(cmd_id, protocol, activate_at, issued_at, sig, chain_id)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "protocol": self.protocol,
            "activate_at": self.activate_at,
            "issued_at": self.issued_at,
            "chain_id": self.chain_id,
            "sig": self.sig,
        }

    @classmethod
    def from_wire(cls, data: object) -> ReconfigCommand:
        if not isinstance(data, Mapping):
            raise TxRejected("malformed", "reconfig command must be a JSON object")
        extra = set(data) - {"id", "protocol", "activate_at", "issued_at", "sig", "chain_id"}
        if extra:
            raise TxRejected("malformed", f"unknown fields {sorted(extra)}")
        for name in ("id", "protocol", "sig", "chain_id"):
            if not isinstance(data.get(name), str):
                raise TxRejected("malformed", f"field '{name}' must be a string")
        if not data["id"] or len(data["id"]) > MAX_ID_LEN:
            raise TxRejected("malformed", f"'id' must be 1..{MAX_ID_LEN} characters")
        act = data.get("activate_at")
        if act is not None and (isinstance(act, bool) or not isinstance(act, int) or act < 0):
            raise TxRejected("malformed", "'activate_at' must be a non-negative integer or null")
        issued = data.get("issued_at")
        if (isinstance(issued, bool) or not isinstance(issued, int | float)
                or not math.isfinite(issued)):
            raise TxRejected("malformed", "'issued_at' must be a finite number")
        return cls(data["id"], data["protocol"], act, float(issued), data["sig"],
                   data["chain_id"])

    def check_fresh(self, chain_id: str, ref_time: float, what: str, height: int) -> None:
        """Refuse a command for another chain, issued outside the window around
        `ref_time`, or asking for a height the chain (at `height`) has reached."""
        if self.chain_id != chain_id:
            raise TxRejected("wrong_chain", f"reconfig '{self.id}' is for chain "
                             f"'{self.chain_id}', this is '{chain_id}'")
        if not ref_time - RECONFIG_PAST <= self.issued_at <= ref_time + TX_FUTURE:
            raise TxRejected("stale", f"reconfig '{self.id}' issued at {self.issued_at:.3f}, "
                             f"not within [-{RECONFIG_PAST:g}, +{TX_FUTURE:g}] s of {what} "
                             f"{ref_time:.3f}")
        if self.activate_at is not None and self.activate_at <= height:
            raise TxRejected("stale", f"reconfig '{self.id}' asks for height "
                             f"{self.activate_at}, the chain is at {height} already")

    def check(self, twin_pubkey: str | None, verifier: Verifier, protocols: set[str]) -> None:
        if self.protocol not in protocols:
            raise TxRejected(
                "unknown_protocol", f"'{self.protocol}' is not one of {sorted(protocols)}"
            )
        if twin_pubkey is None:
            raise TxRejected("no_twin_key", "genesis lists no twin key; switches are disabled")
        data = self.signing_bytes(self.id, self.protocol, self.activate_at, self.issued_at,
                                  self.chain_id)
        if not verifier.verify(twin_pubkey, self.sig, data):
            raise TxRejected("bad_signature", f"reconfig '{self.id}' is not signed by the twin")

    def effective_height(self, committed_height: int, min_delay: int) -> int:
        """The height from which blocks use the new protocol; same on every node."""
        return max(self.activate_at or 0, committed_height + min_delay)
