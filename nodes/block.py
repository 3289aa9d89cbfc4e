"""Hash-chained, producer-signed blocks.

The header is what gets hashed and voted on. Like Tendermint's LastCommit, block h+1
carries the commit certificate of block h (`prev_cert`) and the proposer's timestamped
consensus record of height h (`prev_record`, a BlockSensorRecord as a dict): that is the
extra-data field the twin reads. Each node also stores the certificate it collected for
its newest block next to it in the ledger, so every stored block has a certificate
(`nodes.consensus.messages.Certificate`; its wire form is in `nodes.wire`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodes.crypto import KeyPair, Verifier
from nodes.reconfig import ReconfigCommand
from nodes.tx import Transaction, TxRejected


class BlockInvalid(ValueError):
    """A block or certificate failed validation; the message says which check."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tx_root(txs: Sequence[Transaction]) -> str:
    h = hashlib.sha256()
    for tx in txs:
        h.update(
            hashlib.sha256(Transaction.signing_bytes(tx.id, tx.client, tx.ts, tx.payload)).digest()
        )
        h.update(tx.sig.encode())
    return h.hexdigest()


def seal_bytes(phase: str, height: int, round_: int, block_hash: str) -> bytes:
    """What a PREPARE or COMMIT vote signs; the same bytes make up certificates."""
    return f"{phase}|{height}|{round_}|{block_hash}".encode()


@dataclass(frozen=True, slots=True)
class Block:
    height: int
    prev_hash: str
    protocol: str
    proposer: str
    proposed_at: float
    txs: tuple[Transaction, ...]
    reconfigs: tuple[ReconfigCommand, ...]
    prev_cert: dict[str, Any] | None
    prev_record: dict[str, Any] | None
    tx_root: str
    hash: str
    sig: str

    def header(self) -> dict[str, Any]:
        return header_dict(
            self.height,
            self.prev_hash,
            self.protocol,
            self.proposer,
            self.proposed_at,
            self.tx_root,
            self.reconfigs,
            self.prev_cert,
            self.prev_record,
        )

    @classmethod
    def create(
        cls,
        key: KeyPair,
        height: int,
        prev_hash: str,
        protocol: str,
        proposer: str,
        proposed_at: float,
        txs: Sequence[Transaction],
        reconfigs: Sequence[ReconfigCommand] = (),
        prev_cert: dict[str, Any] | None = None,
        prev_record: dict[str, Any] | None = None,
    ) -> Block:
        root = tx_root(txs)
        hdr = header_dict(
            height,
            prev_hash,
            protocol,
            proposer,
            proposed_at,
            root,
            reconfigs,
            prev_cert,
            prev_record,
        )
        digest = hashlib.sha256(canonical_json(hdr)).hexdigest()
        sig = key.sign(b"block|" + digest.encode())
        return cls(
            height,
            prev_hash,
            protocol,
            proposer,
            proposed_at,
            tuple(txs),
            tuple(reconfigs),
            prev_cert,
            prev_record,
            root,
            digest,
            sig,
        )

    @property
    def digest(self) -> str:
        """What the consensus core votes on: the header hash."""
        return self.hash

    @property
    def tx_bytes(self) -> int:
        return sum(tx.size for tx in self.txs)

    def to_wire(self) -> dict[str, Any]:
        return {
            "header": self.header(),
            "txs": [tx.to_wire() for tx in self.txs],
            "hash": self.hash,
            "sig": self.sig,
        }

    @classmethod
    def from_wire(cls, data: object) -> Block:
        """Parse and recompute hashes; signatures are checked by `check`."""
        if not isinstance(data, Mapping):
            raise BlockInvalid("block must be an object")
        try:
            hdr = data["header"]
            txs = tuple(Transaction.from_wire(t) for t in data["txs"])
            reconfigs = tuple(ReconfigCommand.from_wire(r) for r in hdr["reconfigs"])
            block = cls(
                int(hdr["height"]),
                str(hdr["prev_hash"]),
                str(hdr["protocol"]),
                str(hdr["proposer"]),
                float(hdr["proposed_at"]),
                txs,
                reconfigs,
                hdr["prev_cert"],
                hdr["prev_record"],
                str(hdr["tx_root"]),
                str(data["hash"]),
                str(data["sig"]),
            )
        except TxRejected as exc:
            raise BlockInvalid(f"block carries a malformed transaction: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise BlockInvalid(f"malformed block: {exc!r}") from exc
        if tx_root(txs) != block.tx_root:
            raise BlockInvalid("tx_root does not match the transactions")
        if hashlib.sha256(canonical_json(block.header())).hexdigest() != block.hash:
            raise BlockInvalid("block hash does not match its header")
        return block

    def check_signature(self, validators: Mapping[str, str], verifier: Verifier) -> None:
        pub = validators.get(self.proposer)
        if pub is None:
            raise BlockInvalid(f"proposer '{self.proposer}' is not a validator")
        if not verifier.verify(pub, self.sig, b"block|" + self.hash.encode()):
            raise BlockInvalid(f"block {self.height} is not signed by its proposer {self.proposer}")


def header_dict(
    height: int,
    prev_hash: str,
    protocol: str,
    proposer: str,
    proposed_at: float,
    root: str,
    reconfigs: Sequence[ReconfigCommand],
    prev_cert: dict[str, Any] | None,
    prev_record: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "height": height,
        "prev_hash": prev_hash,
        "protocol": protocol,
        "proposer": proposer,
        "proposed_at": proposed_at,
        "tx_root": root,
        "reconfigs": [r.to_wire() for r in reconfigs],
        "prev_cert": prev_cert,
        "prev_record": prev_record,
    }
