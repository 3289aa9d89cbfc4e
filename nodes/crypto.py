"""Ed25519 identities: key files, signing, and verification that never raises.

Every node, client and the twin has one key pair. Verification returns a bool so a
forged message can be counted and dropped instead of crashing the receiving node.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class KeyPair:
    """A private key with its public half; the public key hex is the wire identity."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_hex = private.public_key().public_bytes(_RAW, _RAW_PUB).hex()

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed_hex(cls, seed_hex: str) -> KeyPair:
        try:
            seed = bytes.fromhex(seed_hex.strip())
        except ValueError as exc:
            raise ValueError(f"key seed is not hex: {exc}") from exc
        if len(seed) != 32:
            raise ValueError(f"key seed must be 32 bytes (64 hex chars), got {len(seed)} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed_hex(self) -> str:
        return self._private.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption()).hex()

    def sign(self, data: bytes) -> str:
        return self._private.sign(data).hex()

    def save(self, path: Path) -> None:
        """Write the 32-byte seed as hex, readable by the owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.seed_hex() + "\n")

    @classmethod
    def load(cls, path: Path) -> KeyPair:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read key file {path}: {exc}") from exc
        try:
            return cls.from_seed_hex(text)
        except ValueError as exc:
            raise ValueError(f"key file {path}: {exc}") from exc


class Verifier:
    """Caches parsed public keys; `verify` is False for any malformed input."""

    def __init__(self, cache_size: int = 20_000) -> None:
        """`cache_size`: verified votes remembered (about 0.5 KB each; a vote is re-checked
        within a height or two, inside the next block's certificate). 100,000 made the
        soak's RSS climb ~7 MB/min for 5 minutes before the first clear (issue 18)."""
        self._keys: dict[str, Ed25519PublicKey | None] = {}
        self._ok: set[tuple[str, str, bytes]] = set()
        self._cache_size = cache_size
        self.verified = 0
        """Real (uncached) verifications done: the CPU cost the benchmark reports."""

    def _key(self, public_hex: str) -> Ed25519PublicKey | None:
        if public_hex not in self._keys:
            try:
                raw = bytes.fromhex(public_hex)
                self._keys[public_hex] = Ed25519PublicKey.from_public_bytes(raw)
            except (ValueError, TypeError):
                self._keys[public_hex] = None
        return self._keys[public_hex]

    def verify(
        self, public_hex: str, signature_hex: object, data: bytes, remember: bool = True
    ) -> bool:
        """`remember=False` for one-off messages (client transactions, which the mempool
        already deduplicates): caching them would only evict the votes worth caching."""
        key = self._key(public_hex)
        if key is None or not isinstance(signature_hex, str):
            return False
        try:
            sig = bytes.fromhex(signature_hex)
        except ValueError:
            return False
        if len(sig) != 64:
            return False
        # Votes are re-checked inside certificates; remember small verified messages.
        cache_key = (public_hex, signature_hex, data) if remember and len(data) <= 200 else None
        if cache_key is not None and cache_key in self._ok:
            return True
        self.verified += 1
        try:
            key.verify(sig, data)
        except InvalidSignature:
            return False
        if cache_key is not None:
            if len(self._ok) >= self._cache_size:
                self._ok.clear()
            self._ok.add(cache_key)
        return True
