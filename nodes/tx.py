"""Client transactions: signed, sized, timestamped, with a client-chosen id.

The client's timestamp is its submit time, so per-transaction latency (commit time -
submit time, as in the twin paper) can be computed from committed blocks alone.

Issue 18: an id names a transaction only within its client (`uid` = client + id, so one
client cannot take another's ids first and censor it), and a timestamp must be finite
and within [-TX_PAST, +TX_FUTURE] seconds of the validator's clock at intake and of the
block's time in a block (deterministic, so a block synced years later still checks).
Duplicates therefore only need remembering for TX_PAST + TX_FUTURE seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodes.crypto import KeyPair, Verifier

MAX_ID_LEN = 128
TX_PAST = 120.0
"""Oldest acceptable timestamp, seconds before the clock (intake) or block time."""
TX_FUTURE = 10.0
"""Newest acceptable timestamp, seconds after it (clock skew between client and chain)."""


class TxRejected(ValueError):
    """A transaction was refused; `reason` is the short code returned to the client."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Transaction:
    id: str
    client: str
    ts: float
    payload: bytes
    sig: str

    @property
    def size(self) -> int:
        return len(self.payload)

    @property
    def uid(self) -> str:
        """The transaction's name on the chain: its id within its client."""
        return f"{self.client}\x1f{self.id}"

    def check_time(self, ref: float, what: str) -> None:
        """Raise TxRejected('bad_timestamp') unless ts is within the window around ref."""
        if not ref - TX_PAST <= self.ts <= ref + TX_FUTURE:
            raise TxRejected("bad_timestamp", f"ts {self.ts!r} is not within "
                             f"[-{TX_PAST:g}, +{TX_FUTURE:g}] s of {what} {ref:.3f}")

    @staticmethod
    def signing_bytes(tx_id: str, client: str, ts: float, payload: bytes) -> bytes:
        return f"tx|{client}|{tx_id}|{ts!r}|".encode() + payload

    @classmethod
    def create(
        cls, key: KeyPair, client: str, tx_id: str, ts: float, payload: bytes
    ) -> Transaction:
        sig = key.sign(cls.signing_bytes(tx_id, client, ts, payload))
        return cls(tx_id, client, ts, payload, sig)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client": self.client,
            "ts": self.ts,
            "payload": self.payload.hex(),
            "sig": self.sig,
        }

    @classmethod
    def from_wire(cls, data: object) -> Transaction:
        """Parse untrusted input; raises TxRejected('malformed', ...) with what was wrong."""
        if not isinstance(data, Mapping):
            raise TxRejected("malformed", "transaction must be a JSON object")
        for name, kind in (("id", str), ("client", str), ("payload", str), ("sig", str)):
            if not isinstance(data.get(name), kind):
                raise TxRejected("malformed", f"field '{name}' must be a string")
        ts = data.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise TxRejected("malformed", "field 'ts' must be a finite number")
        if len(data) != 5:  # the five fields above are present, so anything more is extra
            extra = set(data) - {"id", "client", "ts", "payload", "sig"}
            raise TxRejected("malformed", f"unknown fields {sorted(extra)}")
        if not data["id"] or len(data["id"]) > MAX_ID_LEN:
            raise TxRejected("malformed", f"'id' must be 1..{MAX_ID_LEN} characters")
        try:
            payload = bytes.fromhex(data["payload"])
        except ValueError as exc:
            raise TxRejected("malformed", "'payload' is not hex") from exc
        return cls(data["id"], data["client"], float(ts), payload, data["sig"])

    def check(self, clients: Mapping[str, str], verifier: Verifier, max_size: int) -> None:
        """Stateless admission check: known client, size limit, valid signature."""
        if self.size > max_size:
            raise TxRejected("oversized", f"payload {self.size} B > limit {max_size} B")
        pub = clients.get(self.client)
        if pub is None:
            raise TxRejected("unknown_client", f"client '{self.client}' is not in genesis")
        data = self.signing_bytes(self.id, self.client, self.ts, self.payload)
        if not verifier.verify(pub, self.sig, data, remember=False):
            raise TxRejected("bad_signature", f"signature of tx '{self.id}' does not verify")
