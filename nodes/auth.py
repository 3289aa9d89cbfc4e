"""The validators' authenticator for the consensus core: ed25519 over wire bytes.

What each message signs is what the engine before the core signed, byte for byte:
PREPARE/COMMIT votes and proposals their seal (`block.seal_bytes`), round changes and
sync requests the canonical JSON of their frame without the signature, sync answers
the hashes of the blocks they list (`wire.sync_resp_bytes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from nodes.block import seal_bytes
from nodes.consensus.messages import Proposal, RoundChange, SyncRequest, SyncResponse, Vote
from nodes.wire import encode_rc, message_bytes, sync_resp_bytes


class Signer(Protocol):
    def sign(self, data: bytes) -> str: ...


class SignatureChecker(Protocol):
    def verify(self, public_hex: str, signature_hex: object, data: bytes,
               remember: bool = True) -> bool: ...


def signed_bytes(msg: Any) -> bytes:
    t = type(msg)
    if t is Vote:
        return seal_bytes(msg.phase, msg.height, msg.round, msg.digest)
    if t is Proposal:
        return seal_bytes("proposal", msg.height, msg.round, msg.block.digest)
    if t is RoundChange:
        # Its digests, not its blocks: the hashes bind them, and canonicalising megabytes
        # of JSON for every signature and check would hold up the event loop.
        return message_bytes(encode_rc(msg, with_sig=False, with_blocks=False))
    if t is SyncRequest:
        return message_bytes({"t": "sync_req", "from": msg.sender, "start": msg.start,
                              "at": msg.at})
    if t is SyncResponse:
        return sync_resp_bytes(msg.sender, msg.tip, msg.digests)
    raise TypeError(f"nothing to sign in {msg!r}")


class WireAuth:
    """Signs with this validator's key; verifies under the genesis keys."""

    def __init__(self, key: Signer, keys: Mapping[str, str], verifier: SignatureChecker) -> None:
        self.key = key
        self.keys = dict(keys)
        self.verifier = verifier

    def sign(self, msg: Any) -> str:
        return self.key.sign(signed_bytes(msg))

    def verify(self, msg: Any) -> bool:
        pub = self.keys.get(msg.sender)
        if pub is None or not isinstance(msg.sig, str):
            return False
        try:
            data = signed_bytes(msg)
        except (TypeError, ValueError, KeyError, AttributeError):
            return False
        return self.verifier.verify(pub, msg.sig, data)
