"""The simulated consensus node, shared by every protocol.

A node runs heights one after another. Per height it follows the round-robin
proposer, accepts one proposal per round, and changes round when its round timer
expires (IBFT-style: it moves to round r+1 and broadcasts ROUND-CHANGE carrying its
lock; the new proposer re-proposes the highest locked block it hears of). What a node
does with a proposal and with votes is the protocol's `VotingRule`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodes.sensor import RoundChange
from twin.kernel import PRIO_MSG, PRIO_TIMER

if TYPE_CHECKING:
    from twin.model import ChainModel

PROPOSAL, PREPARE, COMMIT, ROUND_CHANGE = 0, 1, 2, 3


@dataclass(eq=False)
class Block:
    id: int
    height: int
    proposer: int
    tx_start: int
    tx_end: int
    tx_bytes: int
    size_bytes: int
    proposed_at: float
    protocol: str

    @property
    def tx_count(self) -> int:
        return self.tx_end - self.tx_start


@dataclass(eq=False)
class HeightState:
    height: int
    protocol: str
    round: int = 0
    block: Block | None = None
    """The proposal accepted in the current round."""
    proposal_received_at: float | None = None
    proposed_round: int = -1
    prepares: dict[int, set[int]] = field(default_factory=dict)
    commits: dict[int, set[int]] = field(default_factory=dict)
    prepared: set[tuple[int, int]] = field(default_factory=set)
    committed_sent: set[int] = field(default_factory=set)
    locked: Block | None = None
    locked_round: int = -1
    rc: dict[int, dict[int, tuple[Block | None, int]]] = field(default_factory=dict)
    rc_log: list[RoundChange] = field(default_factory=list)
    vote_log: list[tuple[int, str, float]] = field(default_factory=list)
    fast_expired: bool = False
    decided: bool = False

    def prepare_count(self, block: Block) -> int:
        s = self.prepares.get(block.id)
        return len(s) if s else 0


class VotingRule:
    """What a protocol does with a proposal and with votes; the node does the rest."""

    name = "abstract"

    def on_proposal(self, node: Node, block: Block) -> None:
        raise NotImplementedError

    def on_prepare(self, node: Node, block: Block, count: int) -> None:
        raise NotImplementedError

    def on_commit(self, node: Node, block: Block, count: int) -> None:
        raise NotImplementedError


class Node:
    """One validator (block producer) or observer of the simulated chain."""

    def __init__(self, model: ChainModel, idx: int, validator: bool) -> None:
        self.model = model
        self.idx = idx
        self.name = f"n{idx}"
        self.validator = validator
        self.up = True
        self.epoch = 0
        """Bumped on failure and recovery: timers from an older epoch are void."""
        self.height = 1
        self.round = 0
        self.tx_ptr = 0
        self.last_proposed_at = float("-inf")
        self.buffered: dict[int, list[tuple[Any, ...]]] = {}
        self.syncing = False
        self.hs = HeightState(1, model.protocol_for(1))

    # ---- messages -----------------------------------------------------------------
    def receive(self, kind: int, h: int, r: int, sender: int, payload: Any) -> None:
        if not self.up:
            return
        if h != self.height:
            if h > self.height:
                self.buffered.setdefault(h, []).append((kind, h, r, sender, payload))
                tip = self.model.tip()
                if not self.syncing and tip is not None and tip.height >= self.height:
                    # Peers are past a height this node never decided: fetch the blocks.
                    self.syncing = True
                    k = self.model.kernel
                    k.schedule(k.now + self.model.cfg.sync_delay, PRIO_MSG, self._sync,
                               self.epoch)
            return
        hs = self.hs
        if kind == PREPARE or kind == COMMIT:
            votes = hs.prepares if kind == PREPARE else hs.commits
            s = votes.get(payload.id)
            if s is None:
                s = votes[payload.id] = set()
            elif sender in s:
                return
            s.add(sender)
            if self.model.keep_votes:
                hs.vote_log.append((sender, "prepare" if kind == PREPARE else "commit",
                                    self.model.kernel.now))
            if hs.decided:
                return
            rule = self.model.rules[hs.protocol]
            if kind == PREPARE:
                rule.on_prepare(self, payload, len(s))
            else:
                rule.on_commit(self, payload, len(s))
        elif kind == PROPOSAL:
            self._on_proposal(r, payload)
        elif kind == ROUND_CHANGE:
            d = hs.rc.setdefault(r, {})
            d[sender] = payload
            if hs.decided:
                return
            if r > self.round and len(d) >= self.model.quorum:
                self.start_round(r)
            elif r > self.round:
                # f+1 nodes are in later rounds: at least one honest node timed out, join
                # the lowest of those rounds (IBFT's round-skip rule).
                later = {rr: dd for rr, dd in hs.rc.items() if rr > self.round and dd}
                if len({s for dd in later.values() for s in dd}) > self.model.f:
                    self._join_round(min(later))
            elif (r == self.round and r > 0 and len(d) >= self.model.quorum
                  and self.model.proposer(self.height, r) == self.idx):
                self.propose(r)

    def _on_proposal(self, r: int, block: Block) -> None:
        hs = self.hs
        if hs.decided or r < self.round:
            return
        if r > self.round:
            self.start_round(r)
        if hs.block is not None:
            return
        if hs.locked is not None and hs.locked is not block:
            return
        hs.block = block
        if hs.proposal_received_at is None:
            hs.proposal_received_at = self.model.kernel.now
        self.model.rules[hs.protocol].on_proposal(self, block)

    def broadcast(self, kind: int, r: int, payload: Any, size: int) -> None:
        model = self.model
        now = model.kernel.now
        sched = model.kernel.schedule
        h = self.height
        src = self.idx
        inv = model.net.inv_bw[src]
        lat = model.net.lat[src]
        cfg = model.cfg
        now += cfg.block_validation if kind == PROPOSAL else cfg.msg_validation
        for dst in model.nodes:
            j = dst.idx
            if j != src:
                sched(now + size * inv[j] + lat[j], PRIO_MSG, dst.receive, kind, h, r, src,
                      payload)

    # ---- votes (called by the protocols) -------------------------------------------
    def send_prepare(self, block: Block) -> None:
        hs = self.hs
        key = (hs.round, block.id)
        if not self.validator or key in hs.prepared:
            return
        hs.prepared.add(key)
        self.broadcast(PREPARE, hs.round, block, self.model.cfg.vote_bytes)
        self.receive(PREPARE, self.height, hs.round, self.idx, block)

    def send_commit(self, block: Block) -> None:
        hs = self.hs
        if not self.validator or block.id in hs.committed_sent:
            return
        hs.committed_sent.add(block.id)
        hs.locked, hs.locked_round = block, hs.round
        self.broadcast(COMMIT, hs.round, block, self.model.cfg.vote_bytes)
        self.receive(COMMIT, self.height, hs.round, self.idx, block)

    def decide(self, block: Block, fast: bool) -> None:
        hs = self.hs
        if hs.decided:
            return
        hs.decided = True
        self.model.on_decide(self, block, fast)
        self.height = block.height + 1
        self.tx_ptr = block.tx_end
        self.last_proposed_at = block.proposed_at
        self.hs = HeightState(self.height, self.model.protocol_for(self.height))
        self.start_round(0)
        pending = self.buffered.pop(self.height, None)
        for old in [h for h in self.buffered if h < self.height]:
            del self.buffered[old]
        if pending:
            k = self.model.kernel
            k.schedule(k.now, PRIO_MSG, self._drain, self.hs, pending)

    def _drain(self, hs: HeightState, msgs: list[tuple[Any, ...]]) -> None:
        for msg in msgs:
            if self.hs is hs:
                self.receive(*msg)
            elif self.up and msg[1] > self.height:
                self.buffered.setdefault(msg[1], []).append(msg)

    # ---- rounds and proposals ------------------------------------------------------
    def start_round(self, r: int) -> None:
        hs = self.hs
        self.round = hs.round = r
        hs.block = None
        hs.fast_expired = False
        model = self.model
        k = model.kernel
        cfg = model.cfg
        timeout = cfg.round_timeout * (2 ** min(r, 6)) + (cfg.block_interval if r == 0 else 0.0)
        k.schedule(k.now + timeout, PRIO_TIMER, self._round_timer, hs, r, self.epoch)
        if model.proposer(self.height, r) != self.idx:
            return
        if r == 0:
            at = max(k.now, self.last_proposed_at + cfg.block_interval)
            k.schedule(at, PRIO_TIMER, self._propose_timer, hs, self.epoch)
        elif len(hs.rc.get(r, ())) >= model.quorum:
            self.propose(r)

    def _propose_timer(self, hs: HeightState, epoch: int) -> None:
        if self.up and epoch == self.epoch and self.hs is hs and hs.round == 0 \
                and not hs.decided:
            self.propose(0)

    def _round_timer(self, hs: HeightState, r: int, epoch: int) -> None:
        if not self.up or epoch != self.epoch or self.hs is not hs or hs.round != r \
                or hs.decided:
            return
        hs.rc_log.append(RoundChange(r + 1, self.model.kernel.now, "timeout"))
        self._join_round(r + 1)

    def _join_round(self, r: int) -> None:
        hs = self.hs
        payload = (hs.locked, hs.locked_round)
        hs.rc.setdefault(r, {})[self.idx] = payload
        if self.validator:
            self.broadcast(ROUND_CHANGE, r, payload, self.model.cfg.vote_bytes)
        self.start_round(r)

    def propose(self, r: int) -> None:
        hs = self.hs
        if hs.proposed_round >= r or not self.up:
            return
        hs.proposed_round = r
        model = self.model
        now = model.kernel.now
        block = hs.locked
        best = hs.locked_round
        for locked, lround in hs.rc.get(r, {}).values():
            if locked is not None and lround > best:
                block, best = locked, lround
        if block is None:
            stream = model.stream
            end = stream.take(self.tx_ptr, now, model.cfg.max_block_bytes)
            txb = stream.bytes_between(self.tx_ptr, end)
            block = Block(model.next_block_id(), self.height, self.idx, self.tx_ptr, end, txb,
                          txb + model.cfg.block_header_bytes, now, hs.protocol)
        self.broadcast(PROPOSAL, r, block, block.size_bytes)
        self._on_proposal(r, block)

    # ---- failures -------------------------------------------------------------------
    def fail(self) -> None:
        self.up = False
        self.epoch += 1
        self.syncing = False
        self.buffered.clear()

    def recover(self) -> None:
        """Come back online and, after the sync delay, adopt the committed chain."""
        self.up = True
        self.epoch += 1
        self.syncing = True
        k = self.model.kernel
        k.schedule(k.now + self.model.cfg.sync_delay, PRIO_MSG, self._sync, self.epoch, True)

    def _sync(self, epoch: int, recovering: bool = False) -> None:
        if not self.up or epoch != self.epoch:
            return
        self.syncing = False
        tip = self.model.tip()
        behind = tip is not None and tip.height >= self.height
        if not behind and not recovering:
            return
        if behind:
            assert tip is not None
            self.height = tip.height + 1
            self.tx_ptr = tip.tx_end
            self.last_proposed_at = tip.proposed_at
            self.hs = HeightState(self.height, self.model.protocol_for(self.height))
            self.round = 0
        self.start_round(self.round)
        pending = self.buffered.pop(self.height, None)
        self.buffered = {h: m for h, m in self.buffered.items() if h > self.height}
        if pending:
            for msg in pending:
                self.receive(*msg)
