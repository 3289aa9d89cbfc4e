"""The validators' wire format: JSON frames <-> the consensus core's typed messages.

Frames are those of the engine this replaced, field for field:
    {"t": "prepare"|"commit", "from", "h", "r", "hash", "sig"}
    {"t": "proposal", "from", "h", "r", "block", "just": [rc frame, ...] | null, "sent_at", "sig"}
    {"t": "rc", "from", "h", "r", "prepared": {"round", "hash", "votes": [[v, sig]]} | null,
     "voted": {"round", "hash", "sig"} | null, "blocks": {hash: block}, "sig"}
    (an rc's "blocks" holds only what it carries in full: to the new round's proposer;
    inside a proposal's "just" it omits the proposal's own block; an rc signs its
    digests, not its blocks, which its hashes already bind)
    {"t": "sync_req", "from", "start", "sig"}
    {"t": "sync_resp", "from", "blocks": [[block, cert], ...], "tip", "sig"}
Certificates are {"height", "round", "hash", "votes": [[validator, phase, sig]]}.
Decoding checks shapes and hashes only; signatures and rules are the core's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

from nodes.block import Block, BlockInvalid, canonical_json
from nodes.consensus.messages import (
    BlockRef,
    Certificate,
    CertVote,
    PreparedCert,
    Proposal,
    RoundChange,
    SyncRequest,
    SyncResponse,
    Vote,
    VoteClaim,
)

CONSENSUS_KINDS = frozenset({"proposal", "prepare", "commit", "rc"})
SYNC_KINDS = frozenset({"sync_req", "sync_resp"})


class DecodeError(BlockInvalid):
    """A frame that is not a well-formed message; `kind` names what was refused."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def message_bytes(msg: Mapping[str, Any]) -> bytes:
    """What a non-vote peer message signs: its canonical JSON without the signature."""
    return canonical_json({k: v for k, v in msg.items() if k != "sig"})


def sync_resp_bytes(sender: Any, tip: Any, hashes: list[str] | tuple[str, ...]) -> bytes:
    """A state-transfer reply signs its block hashes only: the blocks themselves are
    self-authenticating (hash over header, tx_root over transactions, certificates), and
    canonicalising megabytes of JSON just to sign it would stall the event loop."""
    return f"sync_resp|{sender}|{tip}|{','.join(str(h) for h in hashes)}".encode()


# ---- certificates ---------------------------------------------------------------------
def cert_to_wire(cert: Certificate) -> dict[str, Any]:
    return {"height": cert.height, "round": cert.round, "hash": cert.digest,
            "votes": [[v.validator, v.phase, v.sig] for v in cert.votes]}


def cert_from_wire(data: object) -> Certificate:
    if not isinstance(data, Mapping):
        raise BlockInvalid("certificate must be an object")
    try:
        votes = tuple(CertVote(str(v[0]), str(v[1]), str(v[2])) for v in data["votes"])
        return Certificate(int(data["height"]), int(data["round"]), str(data["hash"]), votes)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BlockInvalid(f"malformed certificate: {exc!r}") from exc


def cert_voters(data: object) -> frozenset[str] | None:
    """Validators a block's `prev_cert` (wire form, checked with the block) names; None
    for no certificate or one that does not parse (then the proposer order is plain)."""
    if data is None:
        return None
    try:
        return frozenset(str(v.validator) for v in cert_from_wire(data).votes)
    except BlockInvalid:
        return None


# ---- encoding -------------------------------------------------------------------------
def encode(msg: Any, sent_at: float = 0.0) -> dict[str, Any]:
    t = type(msg)
    if t is Vote:
        return {"t": msg.phase, "from": msg.sender, "h": msg.height, "r": msg.round,
                "hash": msg.digest, "sig": msg.sig}
    if t is Proposal:
        just = None if msg.justification is None else [  # the proposal carries its own
            encode_rc(rc, omit=msg.block.hash) for rc in msg.justification]  # block once
        return {"t": "proposal", "from": msg.sender, "h": msg.height, "r": msg.round,
                "block": msg.block.to_wire(), "just": just, "sent_at": sent_at, "sig": msg.sig}
    if t is RoundChange:
        return encode_rc(msg)
    if t is SyncRequest:
        return {"t": "sync_req", "from": msg.sender, "start": msg.start, "at": msg.at,
                "sig": msg.sig}
    if t is SyncResponse:
        return {"t": "sync_resp", "from": msg.sender,
                "blocks": [[b.to_wire(), cert_to_wire(c)] for b, c in msg.blocks],
                "tip": msg.tip, "sig": msg.sig}
    raise TypeError(f"no wire form for {msg!r}")


def encode_rc(rc: RoundChange, with_sig: bool = True, omit: str | None = None,
              with_blocks: bool = True) -> dict[str, Any]:
    """A round change with the blocks it refers to (`blocks`: hash -> block), except the
    one whose hash is `omit` (inside a proposal's justification: the proposal carries
    it; q copies made a round-1 proposal q + 1 blocks long)."""
    prepared = voted = None
    if rc.prepared is not None:
        p = rc.prepared
        prepared = {"round": p.round, "hash": p.block.hash, "votes": [list(v) for v in p.votes]}
    if rc.voted is not None:
        v = rc.voted
        voted = {"round": v.round, "hash": v.block.hash, "sig": v.sig}
    msg: dict[str, Any] = {"t": "rc", "from": rc.sender, "h": rc.height, "r": rc.round,
                           "prepared": prepared, "voted": voted}
    if with_blocks:
        msg["blocks"] = {x.block.hash: x.block.to_wire() for x in (rc.prepared, rc.voted)
                         if x is not None and x.block.hash != omit
                         and type(x.block) is not BlockRef}
    if with_sig:
        msg["sig"] = rc.sig
    return msg


# ---- decoding -------------------------------------------------------------------------
def _int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _sig(msg: Mapping[str, Any]) -> Any:
    """The signature as sent (whatever it is: a non-string one simply never verifies)."""
    return msg.get("sig")


def decode(msg: Mapping[str, Any], known_height: int = 0) -> Any:
    """The typed message of a consensus or sync frame; raises DecodeError.

    `known_height`: blocks of a sync answer at or below it are not parsed (we have them)."""
    t = msg.get("t")
    if t in SYNC_KINDS:
        return _decode_sync(msg, known_height)
    sender, h, r = msg.get("from"), msg.get("h"), msg.get("r")
    if t not in CONSENSUS_KINDS or not isinstance(sender, str) or not _int(h) or not _int(r) \
            or r < 0:
        raise DecodeError("consensus", f"bad header from {sender!r}")
    if t == "prepare" or t == "commit":
        digest = msg.get("hash")
        if not isinstance(digest, str):
            raise DecodeError(t, "vote without hash")
        return Vote(t, h, r, sender, digest, _sig(msg))
    if t == "proposal":
        try:
            block = Block.from_wire(msg.get("block"))
        except BlockInvalid as exc:
            raise DecodeError("proposal", str(exc)) from exc
        just = msg.get("just")
        rcs: tuple[RoundChange, ...] | None = None
        if isinstance(just, list):
            good = []
            for item in just:  # a bad entry cannot count towards the justification
                try:
                    good.append(decode_rc(item, block))
                except DecodeError:
                    continue
            rcs = tuple(good)
        return Proposal(h, r, sender, block, rcs, _sig(msg))
    return decode_rc(msg)


def decode_rc(msg: object, carried: Block | None = None) -> RoundChange:
    """`carried`: the block of the proposal whose justification this is (its RCs omit it)."""
    if not isinstance(msg, Mapping):
        raise DecodeError("rc", "round change must be an object")
    sender, h, r = msg.get("from"), msg.get("h"), msg.get("r")
    if not isinstance(sender, str) or not _int(h) or not _int(r):
        raise DecodeError("rc", "round change header does not match")
    blocks = msg.get("blocks")
    if not isinstance(blocks, Mapping):
        raise DecodeError("rc", "round change without blocks")

    def block_of(digest: object, what: str) -> Block | BlockRef:
        if not isinstance(digest, str):
            raise DecodeError("rc", f"malformed {what}")
        if digest not in blocks:  # sent by digest, or the proposal's own block
            return carried if carried is not None and digest == carried.hash \
                else BlockRef(digest, h)
        try:
            block = Block.from_wire(blocks[digest])
        except BlockInvalid as exc:
            raise DecodeError("rc", f"round-change block: {exc}") from exc
        if block.hash != digest:
            raise DecodeError("rc", "round-change block does not match its hash or height")
        return block

    prepared = None
    p = msg.get("prepared")
    if p is not None:
        if not isinstance(p, Mapping):
            raise DecodeError("rc", "malformed prepared certificate")
        pr, pvotes = p.get("round"), p.get("votes")
        if not _int(pr) or not isinstance(pvotes, list):
            raise DecodeError("rc", "malformed prepared certificate")
        votes = tuple((item[0], item[1]) for item in pvotes
                      if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str))
        prepared = PreparedCert(pr, block_of(p.get("hash"), "prepared certificate"), votes)
    voted = None
    v = msg.get("voted")
    if v is not None:
        if not isinstance(v, Mapping) or not _int(v.get("round")):
            raise DecodeError("rc", "malformed last vote")
        voted = VoteClaim(v["round"], block_of(v.get("hash"), "last vote"), _sig(v))
    return RoundChange(h, r, sender, prepared, voted, _sig(msg))


def _decode_sync(msg: Mapping[str, Any], known_height: int) -> Any:
    sender = msg.get("from")
    if not isinstance(sender, str):
        raise DecodeError("sync", f"unsigned or unknown sync message from {sender!r}")
    if msg["t"] == "sync_req":
        start, at = msg.get("start"), msg.get("at")
        if not _int(start):
            raise DecodeError("sync", "sync_req without a start height")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise DecodeError("sync", "sync_req without a finite time")
        return SyncRequest(sender, start, float(at), _sig(msg))
    items, tip = msg.get("blocks"), msg.get("tip")
    if not isinstance(items, list):
        raise DecodeError("sync", "sync_resp without blocks")
    digests: list[str] = []
    blocks: list[tuple[Block, Certificate]] = []
    try:
        for item in items:
            digests.append(str(item[0]["hash"]))
            if int(item[0]["header"]["height"]) <= known_height:
                continue  # already ours: skip parsing and rehashing it
            blocks.append((Block.from_wire(item[0]), cert_from_wire(item[1])))
    except (BlockInvalid, TypeError, ValueError, IndexError, KeyError) as exc:
        raise DecodeError("sync", f"bad block in sync_resp: {exc}") from exc
    return SyncResponse(sender, tuple(blocks), tip if _int(tip) else 0, _sig(msg),
                        tuple(digests))
