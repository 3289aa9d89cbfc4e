"""Shared BFT round engine (IBFT/QBFT style) that the protocols plug a commit rule into.

Per height: round r has proposer validators[(h + r) % n]. The proposer sends a
PRE-PREPARE carrying the block; validators check it and PREPARE; the protocol decides
when to COMMIT or commit outright. On a round timeout a validator sends ROUND-CHANGE
for r+1 carrying its highest prepared certificate and its last PREPARE vote; the next
proposer needs 2f+1 of them and must re-propose the value they force (`select_value`),
so nothing that may have committed - on the slow path or BigFoot's fast path - is
ever replaced. Round timeouts grow by `round_backoff` per round up to a fixed cap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodes.block import Block, BlockInvalid, Certificate, Vote, canonical_json, seal_bytes
from nodes.config import Timing
from nodes.consensus import PROTOCOLS, ConsensusProtocol
from nodes.sensor import BlockSensorRecord, RoundChange, VoteTiming

if TYPE_CHECKING:
    from nodes.node import Node

MAX_FUTURE = 20_000
MAX_ROUND_AHEAD = 1_000
"""Round changes further ahead than this are dropped (bounds memory under spam)."""
LAG_GRACE = 0.2
"""Seconds to wait for our own commit before asking a peer one height ahead for blocks."""


@dataclass
class RoundState:
    round: int
    proposal: Block | None = None
    proposal_at: float = 0.0
    prepares: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    commits: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    sent_commit: bool = False
    fast_expired: bool = False
    fast_handle: asyncio.TimerHandle | None = None
    proposed: bool = False


def message_bytes(msg: Mapping[str, Any]) -> bytes:
    """What a non-vote peer message signs: its canonical JSON without the signature."""
    return canonical_json({k: v for k, v in msg.items() if k != "sig"})


class Engine:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.validators: list[str] = [v.id for v in node.genesis.validators]
        self.keys = node.genesis.validator_keys()
        self.n = len(self.validators)
        self.f = (self.n - 1) // 3
        self.quorum = (self.n + self.f) // 2 + 1
        self.timing: Timing = node.genesis.timing
        self.protocol: ConsensusProtocol = PROTOCOLS[node.protocol_at(1)]()
        self.height = 0
        self.round = 0
        self.rounds: dict[int, RoundState] = {}
        self.rcs: dict[int, dict[str, dict[str, Any]]] = {}
        self.prepared: tuple[int, Block, list[list[str]]] | None = None
        self.last_vote: tuple[int, str, str, Block] | None = None
        self.rc_log: list[RoundChange] = []
        self.future: list[dict[str, Any]] = []
        self.height_started = 0.0
        self._round_timer: asyncio.TimerHandle | None = None
        self._propose_task: asyncio.Task[None] | None = None
        self._lag_check_height = 0
        self.stopped = False

    # ---- lifecycle -----------------------------------------------------------------
    def proposer(self, height: int, round_: int) -> str:
        return self.validators[(height + round_) % self.n]

    def start(self) -> None:
        self.enter_height(self.node.ledger.height + 1)

    def stop(self) -> None:
        self.stopped = True
        self._cancel_timers()
        if self._propose_task:
            self._propose_task.cancel()

    def _cancel_timers(self) -> None:
        if self._round_timer:
            self._round_timer.cancel()
        for rs in self.rounds.values():
            if rs.fast_handle:
                rs.fast_handle.cancel()

    def enter_height(self, height: int) -> None:
        self._cancel_timers()
        if self._propose_task:
            self._propose_task.cancel()
        self.height = height
        self.rounds = {}
        self.rcs = {}
        self.prepared = None
        self.last_vote = None
        self.sent_votes: dict[tuple[int, str], str] = {}
        self._restore_votes(height)
        self.rc_log = []
        self.height_started = time.time()
        name = self.node.protocol_at(height)
        if name != self.protocol.name:
            self.protocol = PROTOCOLS[name]()
            self.node.telemetry.event("switch", height=height, protocol=name)
        self._start_round(0)
        pending, self.future = self.future, []
        for msg in pending:
            if self.height != height:
                self.future.append(msg)
            else:
                self.on_message(msg)

    def _restore_votes(self, height: int) -> None:
        """After a restart: the votes this node already sent at this height bind it."""
        for r, phase, digest, sig, block_json in self.node.ledger.load_votes(height):
            self.sent_votes[(r, phase)] = digest
            if (
                phase == "prepare"
                and block_json
                and (self.last_vote is None or r > self.last_vote[0])
            ):
                self.last_vote = (r, digest, sig, Block.from_wire(json.loads(block_json)))

    def _start_round(self, round_: int) -> None:
        self.round = round_
        if self._round_timer:
            self._round_timer.cancel()
        loop = asyncio.get_running_loop()
        h = self.height
        self._round_timer = loop.call_later(
            self.timing.round_timeout_for(round_), self._on_round_timeout, h, round_
        )
        if self.proposer(h, round_) == self.node.id:
            if round_ == 0:
                self._propose_task = asyncio.create_task(self._propose_when_ready(h))
            else:
                self._maybe_propose_after_rc()

    def _sync_unless_committed(self, height: int, peer: str) -> None:
        """A peer votes one height ahead: our commit votes are usually in flight, so ask
        for blocks only if we are still at this height after a grace period."""
        if self._lag_check_height == height:
            return
        self._lag_check_height = height

        def check() -> None:
            if not self.stopped and self.height == height:
                self.node.request_sync(peer)

        asyncio.get_running_loop().call_later(LAG_GRACE, check)

    def _rs(self, round_: int) -> RoundState:
        rs = self.rounds.get(round_)
        if rs is None:
            rs = self.rounds[round_] = RoundState(round_)
        return rs

    # ---- proposing -----------------------------------------------------------------
    async def _propose_when_ready(self, height: int) -> None:
        await self.node.wait_for_block_content(self.height_started)
        if self.stopped or self.height != height or self.round != 0:
            return
        block = self.node.build_block(height)
        self.send_proposal(height, 0, block, None)

    def _maybe_propose_after_rc(self) -> None:
        h, r = self.height, self.round
        rs = self._rs(r)
        if r == 0 or rs.proposed or self.proposer(h, r) != self.node.id:
            return
        rcs = self.rcs.get(r, {})
        if len(rcs) < self.quorum:
            return
        just = list(rcs.values())[: self.quorum]
        forced = select_value(just, self.f)
        if forced is not None:
            self.node.counters["reproposals"] += 1
        block = forced if forced is not None else self.node.build_block(h)
        rs.proposed = True
        self.send_proposal(h, r, block, just)

    def send_proposal(
        self, height: int, round_: int, block: Block, just: list[dict[str, Any]] | None
    ) -> None:
        """Sign and broadcast a PRE-PREPARE, then handle it locally (overridable in tests)."""
        msg = self.proposal_message(height, round_, block, just)
        self.node.transport.broadcast(msg)
        self.on_message(msg)

    def proposal_message(
        self, height: int, round_: int, block: Block, just: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        self._rs(round_).proposed = True
        return {
            "t": "proposal",
            "from": self.node.id,
            "h": height,
            "r": round_,
            "block": block.to_wire(),
            "just": just,
            "sent_at": time.time(),
            "sig": self.node.key.sign(seal_bytes("proposal", height, round_, block.hash)),
        }

    # ---- message intake ------------------------------------------------------------
    def on_message(self, msg: dict[str, Any]) -> None:
        if self.stopped:
            return
        sender = msg.get("from")
        h, r = msg.get("h"), msg.get("r")
        if sender not in self.keys or not isinstance(h, int) or not isinstance(r, int) or r < 0:
            self.node.reject("consensus", f"bad header from {sender!r}")
            return
        if h < self.height:
            # A vote one height behind is the normal tail of the last height (its sender
            # commits as soon as the quorum's votes reach it); only a sender that is
            # further behind, or timing out there, needs our blocks.
            if h < self.height - 1 or msg["t"] == "rc":
                self.node.help_lagging(sender, h)
            return
        if h > self.height:
            if len(self.future) < MAX_FUTURE:
                self.future.append(msg)
            if h > self.height + 1 or msg["t"] == "rc":
                self.node.request_sync(sender)
            elif msg["t"] != "proposal":
                self._sync_unless_committed(self.height, sender)
            return
        t = msg["t"]
        if t == "proposal":
            self._on_proposal(msg, sender, r)
        elif t in ("prepare", "commit"):
            self._on_vote(msg, sender, r, t)
        elif t == "rc":
            self._on_rc(msg, sender, r)

    def _on_proposal(self, msg: dict[str, Any], sender: str, r: int) -> None:
        h = self.height
        if r < self.round and sender == self.proposer(h, r):
            self.node.counters["stale_proposals"] += 1  # a slow link, not an attack
            return
        if r < self.round or sender != self.proposer(h, r):
            self.node.reject("proposal", f"proposal h={h} r={r} from {sender} not expected")
            return
        try:
            block = Block.from_wire(msg.get("block"))
        except BlockInvalid as exc:
            self.node.reject("proposal", str(exc))
            return
        if not self.node.verifier.verify(
            self.keys[sender], msg.get("sig"), seal_bytes("proposal", h, r, block.hash)
        ):
            self.node.reject("proposal", f"bad proposal signature from {sender}")
            return
        rs = self._rs(r)
        if rs.proposal is not None:
            if rs.proposal.hash != block.hash:
                self.node.telemetry.event("equivocation", height=h, round=r, proposer=sender)
                self.node.counters["equivocations"] += 1
            return
        try:
            if r > 0:
                forced = self._check_justification(msg.get("just"), h, r)
                if forced is not None and forced.hash != block.hash:
                    raise BlockInvalid("proposal ignores the value its round-change quorum forces")
                if forced is None and block.proposer != sender:
                    raise BlockInvalid("a fresh block must be made by the round's proposer")
            elif block.proposer != sender:
                raise BlockInvalid("round-0 block must be made by its proposer")
            self.node.validate_block(block)
        except BlockInvalid as exc:
            self.node.reject("proposal", f"h={h} r={r} from {sender}: {exc}")
            return
        if self.sent_votes.get((r, "prepare"), block.hash) != block.hash:
            self.node.reject("proposal", f"h={h} r={r}: voted for another block before a restart")
            return
        if r > self.round:
            self.rc_log.append(RoundChange(r, time.time(), "justified-proposal"))
            self._start_round(r)
        rs.proposal = block
        rs.proposal_at = time.time()
        self._vote(rs, "prepare")
        self.protocol.on_proposal(self, rs)
        if self.height == h:  # COMMITs may have arrived before the proposal
            self._check_commit_quorum(rs)

    def _vote(self, rs: RoundState, phase: str) -> None:
        assert rs.proposal is not None
        h, digest = self.height, rs.proposal.hash
        if self.sent_votes.get((rs.round, phase), digest) != digest:
            return  # never two different votes in one round, even across restarts
        self.sent_votes[(rs.round, phase)] = digest
        sig = self.node.key.sign(seal_bytes(phase, h, rs.round, digest))
        block_json = self.node.encoded_block(rs.proposal) if phase == "prepare" else None
        self.node.ledger.save_vote(h, rs.round, phase, digest, sig, block_json)
        msg = {"t": phase, "from": self.node.id, "h": h, "r": rs.round, "hash": digest, "sig": sig}
        self.node.transport.broadcast(msg)
        votes = rs.prepares if phase == "prepare" else rs.commits
        votes[self.node.id] = (digest, sig, time.time())
        if phase == "prepare":
            self.last_vote = (rs.round, digest, sig, rs.proposal)
            self._update_prepared(rs)

    def _on_vote(self, msg: dict[str, Any], sender: str, r: int, phase: str) -> None:
        digest = msg.get("hash")
        if not isinstance(digest, str):
            self.node.reject(phase, "vote without hash")
            return
        rs = self._rs(r)
        votes = rs.prepares if phase == "prepare" else rs.commits
        if sender in votes:
            return
        if not self.node.verifier.verify(
            self.keys[sender], msg.get("sig"), seal_bytes(phase, self.height, r, digest)
        ):
            self.node.reject(phase, f"bad {phase} signature from {sender}")
            return
        votes[sender] = (digest, msg["sig"], time.time())
        self.node.telemetry.event(
            "vote", height=self.height, round=r, phase=phase, validator=sender
        )
        if phase == "prepare":
            if rs.proposal is not None and digest == rs.proposal.hash:
                self._update_prepared(rs)
                if r == self.round:
                    self.protocol.on_prepare(self, rs)
        else:
            self._check_commit_quorum(rs)

    # ---- the hooks protocols use ---------------------------------------------------
    def prepare_count(self, rs: RoundState) -> int:
        if rs.proposal is None:
            return 0
        digest = rs.proposal.hash
        return sum(1 for d, _, _ in rs.prepares.values() if d == digest)

    def send_commit(self, rs: RoundState) -> None:
        if rs.sent_commit or rs.proposal is None or rs.round != self.round:
            return
        rs.sent_commit = True
        self._vote(rs, "commit")
        self._check_commit_quorum(rs)

    def commit_fast(self, rs: RoundState) -> None:
        assert rs.proposal is not None
        digest = rs.proposal.hash
        votes = tuple(Vote(v, "prepare", s) for v, (d, s, _) in rs.prepares.items() if d == digest)
        self._finalize(rs, Certificate(self.height, rs.round, digest, votes), fast=True)

    def start_fast_timer(self, rs: RoundState, seconds: float) -> None:
        h = self.height

        def fire() -> None:
            if not self.stopped and self.height == h and self.rounds.get(rs.round) is rs:
                self.protocol.on_fast_timer(self, rs)

        rs.fast_handle = asyncio.get_running_loop().call_later(seconds, fire)

    # ---- commit --------------------------------------------------------------------
    def _update_prepared(self, rs: RoundState) -> None:
        if rs.proposal is None or self.prepare_count(rs) < self.quorum:
            return
        if self.prepared is None or self.prepared[0] < rs.round:
            digest = rs.proposal.hash
            votes = [[v, s] for v, (d, s, _) in rs.prepares.items() if d == digest]
            self.prepared = (rs.round, rs.proposal, votes)

    def _check_commit_quorum(self, rs: RoundState) -> None:
        if rs.proposal is None:
            tally = Counter(d for d, _, _ in rs.commits.values())
            if tally and tally.most_common(1)[0][1] >= self.quorum:
                self.node.request_sync(None)  # committed elsewhere; fetch the block
            return
        digest = rs.proposal.hash
        votes = tuple(Vote(v, "commit", s) for v, (d, s, _) in rs.commits.items() if d == digest)
        if len(votes) >= self.quorum:
            self._finalize(rs, Certificate(self.height, rs.round, digest, votes), fast=False)

    def _finalize(self, rs: RoundState, cert: Certificate, fast: bool) -> None:
        block = rs.proposal
        assert block is not None
        if block.height != self.height or block.height != self.node.ledger.height + 1:
            return  # already committed (e.g. by state transfer) - never append twice
        now = time.time()
        votes = [VoteTiming(v, "prepare", t) for v, (_, _, t) in rs.prepares.items()]
        votes += [VoteTiming(v, "commit", t) for v, (_, _, t) in rs.commits.items()]
        heard = set(rs.prepares) | set(rs.commits)
        first_submit = min((tx.ts for tx in block.txs), default=None)
        record = BlockSensorRecord(
            height=block.height,
            round=rs.round,
            protocol=block.protocol,
            proposer=block.proposer,
            recorder=self.node.id,
            proposed_at=block.proposed_at,
            proposal_received_at=rs.proposal_at,
            committed_at=now,
            tx_count=len(block.txs),
            tx_bytes=block.tx_bytes,
            block_bytes=0,
            tx_first_submit=first_submit,
            tx_latency_sum=sum(now - tx.ts for tx in block.txs),
            fast_path=fast,
            votes=tuple(sorted(votes, key=lambda v: v.received_at)),
            round_changes=tuple(self.rc_log),
            silent=tuple(v for v in self.validators if v not in heard),
            validators=tuple(self.validators),
        )
        self.node.deliver(block, cert, record)
        self.enter_height(block.height + 1)

    def on_synced(self) -> None:
        """The node appended blocks by state transfer; move to the next height."""
        if self.node.ledger.height + 1 > self.height:
            self.enter_height(self.node.ledger.height + 1)

    # ---- round change --------------------------------------------------------------
    def _on_round_timeout(self, height: int, round_: int) -> None:
        if self.stopped or height != self.height or round_ != self.round:
            return
        self.rc_log.append(RoundChange(round_ + 1, time.time(), "timeout"))
        self.node.telemetry.event("round_change", height=height, round=round_ + 1, reason="timeout")
        self.node.request_sync(None)
        self._move_to_round(round_ + 1)

    def _move_to_round(self, round_: int) -> None:
        self._start_round(round_)
        msg = self._rc_message(round_)
        self.node.transport.broadcast(msg)
        self.rcs.setdefault(round_, {})[self.node.id] = msg
        self._maybe_propose_after_rc()

    def _rc_message(self, round_: int) -> dict[str, Any]:
        blocks: dict[str, Any] = {}
        prepared = None
        if self.prepared is not None:
            pr, pblock, pvotes = self.prepared
            prepared = {"round": pr, "hash": pblock.hash, "votes": pvotes}
            blocks[pblock.hash] = pblock.to_wire()
        voted = None
        if self.last_vote is not None:
            vr, vhash, vsig, vblock = self.last_vote
            voted = {"round": vr, "hash": vhash, "sig": vsig}
            blocks[vhash] = vblock.to_wire()
        msg = {
            "t": "rc",
            "from": self.node.id,
            "h": self.height,
            "r": round_,
            "prepared": prepared,
            "voted": voted,
            "blocks": blocks,
        }
        msg["sig"] = self.node.key.sign(message_bytes(msg))
        return msg

    def _on_rc(self, msg: dict[str, Any], sender: str, r: int) -> None:
        if sender in self.rcs.get(r, {}):
            return
        if r > self.round + MAX_ROUND_AHEAD:
            self.node.reject("rc", f"round {r} from {sender} is implausibly far ahead")
            return
        try:
            check_rc(msg, self.height, self.keys, self.node.verifier, self.quorum)
        except BlockInvalid as exc:
            self.node.reject("rc", f"from {sender}: {exc}")
            return
        self.rcs.setdefault(r, {})[sender] = msg
        if r > self.round:
            # f+1 validators ahead of us: at least one honest one timed out, follow it.
            highest = sorted(
                (
                    max(rr for rr, s in self.rcs.items() if v in s and rr > self.round)
                    for v in {v for rr, s in self.rcs.items() if rr > self.round for v in s}
                ),
                reverse=True,
            )
            if len(highest) >= self.f + 1:
                target = highest[self.f]
                self.rc_log.append(RoundChange(target, time.time(), "f+1 round changes"))
                self._move_to_round(target)
        elif r == self.round:
            self._maybe_propose_after_rc()

    def _check_justification(self, just: object, h: int, r: int) -> Block | None:
        if not isinstance(just, list):
            raise BlockInvalid("round > 0 proposal without round-change justification")
        senders: set[str] = set()
        good: list[dict[str, Any]] = []
        for rc in just:
            if not isinstance(rc, dict) or rc.get("r") != r or rc.get("from") in senders:
                continue
            try:
                check_rc(rc, h, self.keys, self.node.verifier, self.quorum)
            except BlockInvalid:
                continue
            senders.add(rc["from"])
            good.append(rc)
        if len(good) < self.quorum:
            raise BlockInvalid(
                f"justification has {len(good)} valid round changes, need {self.quorum}"
            )
        return select_value(good, self.f)


def check_rc(
    msg: Mapping[str, Any], height: int, keys: Mapping[str, str], verifier: Any, quorum: int
) -> None:
    """Validate a ROUND-CHANGE message completely; raises BlockInvalid saying why."""
    sender, r = msg.get("from"), msg.get("r")
    if not isinstance(sender, str) or sender not in keys:
        raise BlockInvalid("round change from an unknown sender")
    if msg.get("h") != height or not isinstance(r, int):
        raise BlockInvalid("round change header does not match")
    if not verifier.verify(keys[sender], msg.get("sig"), message_bytes(msg)):
        raise BlockInvalid("bad round-change signature")
    blocks = msg.get("blocks")
    if not isinstance(blocks, dict):
        raise BlockInvalid("round change without blocks")
    prepared = msg.get("prepared")
    if prepared is not None and not isinstance(prepared, dict):
        raise BlockInvalid("malformed prepared certificate")
    if prepared is not None:
        pr, ph, pvotes = prepared.get("round"), prepared.get("hash"), prepared.get("votes")
        if not isinstance(pr, int) or not isinstance(ph, str) or not isinstance(pvotes, list):
            raise BlockInvalid("malformed prepared certificate")
        if pr >= r or ph not in blocks:
            raise BlockInvalid("malformed prepared certificate")
        ok = set()
        for item in pvotes:
            if isinstance(item, list) and len(item) == 2 and item[0] in keys and item[0] not in ok:
                if verifier.verify(keys[item[0]], item[1], seal_bytes("prepare", height, pr, ph)):
                    ok.add(item[0])
        if len(ok) < quorum:
            raise BlockInvalid(f"prepared certificate has {len(ok)} valid prepares")
    voted = msg.get("voted")
    if voted is not None and not isinstance(voted, dict):
        raise BlockInvalid("malformed last vote")
    if voted is not None:
        vr, vh = voted.get("round"), voted.get("hash")
        if not isinstance(vr, int) or not isinstance(vh, str) or vr >= r or vh not in blocks:
            raise BlockInvalid("malformed last vote")
        if not verifier.verify(
            keys[sender], voted.get("sig"), seal_bytes("prepare", height, vr, vh)
        ):
            raise BlockInvalid("bad last-vote signature")
    for digest, wire in blocks.items():
        block = Block.from_wire(wire)
        if block.hash != digest or block.height != height:
            raise BlockInvalid("round-change block does not match its hash or height")


def select_value(rcs: list[dict[str, Any]], f: int) -> Block | None:
    """The block a round-change quorum forces the new proposer to re-propose, if any.

    Candidates: each prepared certificate (2f+1 PREPAREs at round p), and any value with
    PREPARE votes from f+1 senders at one round (BigFoot may have fast-committed it: all
    n voted for it, so at least f+1 honest members of any 2f+1 quorum report that vote).
    The highest round wins; at equal rounds a prepared certificate wins.
    """
    best: tuple[int, int, str] | None = None
    blocks: dict[str, Any] = {}
    claims: Counter[tuple[int, str]] = Counter()
    for rc in rcs:
        blocks.update(rc["blocks"])
        if rc.get("prepared"):
            cand = (rc["prepared"]["round"], 1, rc["prepared"]["hash"])
            best = cand if best is None or cand[:2] > best[:2] else best
        if rc.get("voted"):
            claims[(rc["voted"]["round"], rc["voted"]["hash"])] += 1
    for (vr, vh), count in claims.items():
        if count >= f + 1:
            cand = (vr, 0, vh)
            best = cand if best is None or cand[:2] > best[:2] else best
    if best is None:
        return None
    return Block.from_wire(blocks[best[2]])
