"""The twin's discrete-event model of a permissioned chain (twin paper, section 2).

K nodes, the first M of which are block producers taking turns round-robin; a shared
transaction stream stands for the producers' pools (a proposer takes the oldest
transactions that have arrived); PBFT or BigFoot run message by message over a network
in which each node has an access link (speed in Mbit/s) and every ordered pair a one-way
propagation latency: latency_i + latency_j (a star), or the scenario's pairwise
`latency_matrix_ms[i][j]` when it gives one. The scenario drives node failures, link
speeds and the arrival rate.

Sender contention (`ModelConfig.contention`, on by default): a node's uplink is a FIFO.
Each copy of a message from i to j starts when i's uplink is free (never before now),
holds it for size / speed_i, and arrives when both that and the pair's bottleneck
transfer (size / min(speed_i, speed_j) from its start) are done, plus the pair's
latency and the receiver's validation time. So a broadcast from a slow node delivers
its copies one after another (in node order), a vote sent right after a proposal waits
behind it, and a copy to a slow receiver delays only itself (the sender's link is not
held at the receiver's rate: its other copies share it, as parallel TCP flows do).
Lost messages (cut or partitioned pairs) occupy nothing; a crash drops the node's
queued sends (copies already on their way still arrive). The uplinks' state is
`ChainModel.busy_until`, so clones copy it. With `contention=False` every copy is sent
at once: validation + size / min(speed_i, speed_j) + latency, as before the option.

Every node runs the validators' own consensus core (`nodes.consensus`) through the
twin's driver (`twin.simnode`), so quorum, timeouts, locks, round changes, commit rules
and state transfer are the live chain's. What the model adds is the world: the network
(`Network`, `delay`), validation and catch-up times, block pacing, failures (a failed
node loses its core and restarts from its own tip and votes, then catches up by state
transfer), and the protocol switch as an agreed height (the next one no node started).

Outputs: per-block outcomes (first commit time, transaction count, latency sum) and,
optionally, `BlockSensorRecord`s from every node: the same records live nodes emit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from nodes.consensus import Committee, Core, CoreConfig, NullAuth, Schedule, Timeouts, rules_for
from nodes.consensus.events import CommitInfo, SwitchProtocol
from nodes.consensus.messages import (
    Certificate,
    Proposal,
    RoundChange,
    SyncRequest,
    SyncResponse,
    Vote,
)
from nodes.sensor import BlockSensorRecord, VoteTiming
from nodes.sensor import RoundChange as RoundChangeRecord
from twin.blocks import Block, TwinBlocks
from twin.kernel import PRIO_WORLD, EventKernel
from twin.scenarios import Interval, Scenario
from twin.simnode import SimNode
from twin.workload import TxStream

PROTOCOL_NAMES: tuple[str, ...] = ("pbft", "bigfoot")
"""The protocols the twin chooses between, in action order."""


class ModelConfig(BaseModel):
    """Fixed parameters of the simulated chain (the scenario supplies what changes)."""

    model_config = ConfigDict(extra="forbid")

    n_producers: int | None = Field(default=None, ge=1)
    """M: block producers (validators), the first M nodes; default all K nodes."""
    block_interval: float = Field(default=1.0, ge=0)
    """Minimum seconds between consecutive proposals."""
    max_block_bytes: int = Field(default=400_000, gt=0)
    """Transaction bytes per block at most."""
    block_header_bytes: int = Field(default=1_000, ge=0)
    """Header plus the consensus extra-data field."""
    vote_bytes: int = Field(default=250, gt=0)
    """Size of a PREPARE / COMMIT / ROUND-CHANGE message."""
    round_timeout: float = Field(default=4.0, gt=0)
    """Round-0 timer after which a node asks for a round change (plus block_interval in
    round 0, the time a proposer may wait before proposing)."""
    round_backoff: float = Field(default=2.0, ge=1.0)
    """Round timers grow by this factor per round..."""
    max_round_timeout: float = Field(default=256.0, gt=0)
    """...up to this (4 s doubling for 6 rounds, as before the shared core)."""
    fast_path_timeout: float = Field(default=1.0, gt=0)
    """BigFoot: how long to wait for PREPAREs from all validators."""
    block_validation: float = Field(default=0.5, ge=0)
    """Seconds a node needs to validate a proposal before acting on it (SymBChainSim's
    block_val_delay)."""
    msg_validation: float = Field(default=0.1, ge=0)
    """Seconds a node needs to validate a vote or round change (SymBChainSim's
    msg_val_delay); it is what makes each extra message phase cost time."""
    sync_delay: float = Field(default=0.5, ge=0)
    """Seconds a state-transfer answer takes beyond the link latency (per batch of
    blocks: a node that is behind catches up in batches, as the validators do)."""
    records: Literal["none", "proposer", "all"] = "none"
    """Which nodes emit BlockSensorRecords (records cost time; the agent needs none)."""
    contention: bool = True
    """Serialise each node's sends on its uplink (see the module docstring); False sends
    every copy at once, as the model did before (old golden traces compare with it)."""
    proposer_pool: bool = False
    """Run the core's proposer pool (validators heard from in the last certificate
    propose first: `CoreConfig.proposer_pool`). Off: the twin paper's round robin, which
    its figures model; on, the farthest validators stop proposing under load, so their
    uplinks go unobserved by calibration (docs/decisions.md, session 9)."""
    carry_backoff: bool = False
    """Run the core's back-off carried across heights (`CoreConfig.carry_backoff`). Off:
    every height starts at the base timeout, as the twin paper's model does."""


@dataclass(frozen=True)
class ProtocolSwitch:
    """The actuation command: run `protocol` from the next height that starts."""

    protocol: str


@dataclass(frozen=True)
class TwinObservation:
    """What the twin knows about the system at a decision point (input to state encoders)."""

    now: float
    up: tuple[bool, ...]
    link_mbps: tuple[float, ...]
    latency_ms: tuple[float, ...]
    tps: float
    tx_size: float
    protocol: str
    pending_txs: int
    height: int


class Network:
    """Per-node access links; pairwise per-byte time and latency, recomputed on change.

    The latency of i -> j is `matrix_ms[i][j]` when a matrix is given, else
    latency_ms[i] + latency_ms[j] (a star); the matrix wins over `latency_ms`, which
    stays the per-node view the twin observes and calibrates."""

    def __init__(self, mbps: tuple[float, ...], latency_ms: tuple[float, ...],
                 matrix_ms: tuple[tuple[float, ...], ...] | None = None) -> None:
        self.latency_ms = tuple(latency_ms)
        self.matrix_ms = matrix_ms
        self.set_speeds(mbps)

    def set_speeds(self, mbps: tuple[float, ...]) -> None:
        self.mbps = tuple(mbps)
        n = len(mbps)
        self.inv_bw = [[8e-6 / min(mbps[i], mbps[j]) for j in range(n)] for i in range(n)]
        self.inv_up = [8e-6 / x for x in mbps]
        self.lat = self._latencies(n)

    def _latencies(self, n: int) -> list[list[float]]:
        """One-way seconds src -> dst (computed once per change, not per message)."""
        if self.matrix_ms is not None:
            return [[x / 1000.0 for x in row] for row in self.matrix_ms]
        lat_s = [x / 1000.0 for x in self.latency_ms]
        return [[lat_s[i] + lat_s[j] for j in range(n)] for i in range(n)]

    def delay(self, src: int, dst: int, size: int) -> float:
        return size * self.inv_bw[src][dst] + self.lat[src][dst]


class ChainModel:
    """A seeded, deterministic simulation of the chain under one scenario."""

    def __init__(self, scenario: Scenario, cfg: ModelConfig | None = None,
                 protocol: str = "pbft") -> None:
        self.cfg = cfg or ModelConfig()
        self.scenario = scenario
        self.stream: TxStream = scenario.tx_stream()
        self.kernel = EventKernel()
        self.protocol = self._check(protocol)
        self.schedule = Schedule(protocol)
        """The agreed protocol switches (every core gets the same)."""
        k = scenario.n_nodes
        m = self.cfg.n_producers or k
        if m > k:
            raise ValueError(f"n_producers {m} > nodes {k}")
        self.n_validators = m
        self.committee = Committee(list(range(m)), NullAuth())
        self.f = self.committee.f
        self.quorum = self.committee.quorum
        c = self.cfg
        self.core_config = CoreConfig(
            timeouts=Timeouts(c.round_timeout, c.round_backoff,
                              max(c.max_round_timeout, c.round_timeout), c.fast_path_timeout,
                              first_round_extra=c.block_interval),
            proposer_pool=c.proposer_pool, carry_backoff=c.carry_backoff)
        iv = scenario.interval_at(0.0)
        self.net = Network(iv.link_mbps, scenario.latency_ms, scenario.latency_matrix_ms)
        self.busy_until = [0.0] * k
        """Per node: when its uplink has sent everything queued so far (contention)."""
        self._contention = self.cfg.contention
        self.current = iv
        self.chain: list[Block] = []
        self.certs: list[Certificate] = []
        self.commit_times: list[float] = []
        self.commit_tx: list[int] = []
        self.commit_latency: list[float] = []
        self.fast_paths: list[bool] = []
        self.records: list[BlockSensorRecord] = []
        self.violations: list[str] = []
        self.logs: dict[str, int] = {}
        """Counts of the cores' logs by kind ('reject', 'round_change', ...)."""
        self._names = tuple(f"n{i}" for i in range(m))
        self._block_ids = 0
        self._gen = 0
        self._cost_of: Any = None
        self._cost = (0, 0.0)
        self._blocked = scenario.blocked_at(0.0)
        """(src, dst) pairs cut off now (cut nodes, partitions): their messages are lost."""
        self.nodes = [SimNode(self, i, i < m) for i in range(k)]
        self._schedule_world(scenario, after=-1.0)
        offline = scenario.offline_at(0.0)
        for n in self.nodes:
            if n.idx not in offline:
                n.start()

    # ---- the world of the simulated validators (twin.simnode.SimWorld) ------------------
    @staticmethod
    def _check(protocol: str) -> str:
        rules_for(protocol)  # raises ValueError naming the known ones
        return protocol

    def make_core(self, node: SimNode) -> Core:
        tip = node.tip
        return Core(node.idx, self.committee, self.core_config, TwinBlocks(node, self),
                    copy.deepcopy(self.schedule), tip.height if tip is not None else 0,
                    tip.digest if tip is not None else None, node.votes,
                    tip.voters if tip is not None else None)

    def delay(self, src: int, dst: int, msg: Any) -> float | None:
        if self._blocked and (src, dst) in self._blocked:
            return None
        if msg is not self._cost_of:  # a broadcast asks once per destination
            self._cost_of = msg
            self._cost = self._wire_cost(msg)
        size, extra = self._cost
        net = self.net
        if not self._contention:
            return extra + size * net.inv_bw[src][dst] + net.lat[src][dst]
        # The copy leaves once src's uplink has sent what it queued before, holds the
        # uplink for size / speed_src, and cannot arrive sooner than the pair's
        # bottleneck allows. With an idle uplink d is size / min(speeds): bit for bit
        # the uncontended delay.
        now = self.kernel.now
        busy = self.busy_until
        start = busy[src] if busy[src] > now else now
        sent = busy[src] = start + size * net.inv_up[src]
        through = start + size * net.inv_bw[src][dst]
        return extra + (sent if sent > through else through) - now + net.lat[src][dst]

    def _wire_cost(self, msg: Any) -> tuple[int, float]:
        """(bytes, seconds of validation or catch-up before the receiver acts on it)."""
        cfg = self.cfg
        t = type(msg)
        if t is Vote or t is SyncRequest:
            return cfg.vote_bytes, cfg.msg_validation
        if t is Proposal:  # its round changes do not repeat its block, as on the wire
            extra = sum(self._rc_bytes(rc, msg.block.digest) for rc in msg.justification or ())
            return msg.block.size_bytes + extra, cfg.block_validation
        if t is RoundChange:
            return self._rc_bytes(msg), cfg.msg_validation
        if t is SyncResponse:
            return 0, cfg.sync_delay
        raise TypeError(f"no wire cost for {msg!r}")

    def _rc_bytes(self, rc: RoundChange, omit: Any = None) -> int:
        """A round change carries the blocks it refers to (but `omit`), as on the
        validators."""
        blocks = {x.block.digest: x.block.size_bytes for x in (rc.prepared, rc.voted)
                  if x is not None and x.block.digest != omit}
        return self.cfg.vote_bytes + sum(blocks.values())

    def peer(self, node_id: Any) -> SimNode:
        return self.nodes[node_id]

    def batch_at(self, node: SimNode, height: int) -> float:
        tip = node.tip
        return (tip.proposed_at + self.cfg.block_interval) if tip is not None else 0.0

    def sync_blocks(self, node: SimNode, start: int,
                    limit: int) -> tuple[tuple[Any, Certificate], ...]:
        # A node's chain is a prefix of the model's (violations are recorded as such).
        end = min(start - 1 + limit, node.tip_height, len(self.chain))
        return tuple(zip(self.chain[start - 1:end], self.certs[start - 1:end], strict=True))

    def on_log(self, node: SimNode, kind: str, data: dict[str, Any]) -> None:
        self.logs[kind] = self.logs.get(kind, 0) + 1

    def next_block_id(self) -> int:
        self._block_ids += 1
        return self._block_ids

    def proposer(self, height: int, rnd: int) -> int:
        return cast(int, self.committee.proposer(height, rnd))

    def tip(self) -> Block | None:
        return self.chain[-1] if self.chain else None

    def on_commit(self, node: SimNode, block: Any, cert: Certificate, info: CommitInfo) -> None:
        now = self.kernel.now
        h = block.height
        if h == len(self.chain) + 1:
            self.chain.append(block)
            self.certs.append(cert)
            self.commit_times.append(now)
            self.commit_tx.append(block.tx_count)
            self.commit_latency.append(self.stream.latency_sum(block.tx_start, block.tx_end, now))
            self.fast_paths.append(info.fast_path)
        elif h > len(self.chain) + 1:
            self.violations.append(f"{node.name} committed height {h} past tip {len(self.chain)}")
        elif self.chain[h - 1] is not block:
            self.violations.append(
                f"{node.name} committed block {block.id} at height {h}, "
                f"but block {self.chain[h - 1].id} was committed there")
        mode = self.cfg.records
        if mode == "all" or (mode == "proposer" and node.idx == block.proposer):
            self.records.append(self._record(node, block, info))

    def _record(self, node: SimNode, block: Block, info: CommitInfo) -> BlockSensorRecord:
        names = self._names
        return BlockSensorRecord(
            height=block.height, round=info.round, protocol=block.protocol,
            proposer=f"n{block.proposer}", recorder=node.name,
            proposed_at=block.proposed_at, proposal_received_at=info.proposal_received_at,
            committed_at=info.committed_at, tx_count=block.tx_count, tx_bytes=block.tx_bytes,
            block_bytes=block.size_bytes,
            tx_first_submit=self.stream.first_time(block.tx_start, block.tx_end),
            tx_latency_sum=self.stream.latency_sum(block.tx_start, block.tx_end,
                                                   info.committed_at),
            fast_path=info.fast_path,
            votes=tuple(VoteTiming(f"n{v}", p, t) for v, p, t in info.votes),  # type: ignore[arg-type]
            round_changes=tuple(RoundChangeRecord(r, t, why) for r, t, why in info.round_changes),
            silent=tuple(f"n{v}" for v in info.silent), validators=names,
            cert_voters=tuple(f"n{v}" for v in sorted(block.voters or ())), synced=info.synced)

    # ---- world (scenario) events -----------------------------------------------------
    def _schedule_world(self, scenario: Scenario, after: float) -> None:
        k = self.kernel
        gen = self._gen
        for iv in scenario.intervals:
            if iv.start > after and iv.start > 0:
                k.schedule(iv.start, PRIO_WORLD, self._apply_interval, gen, iv)
        for t in scenario.link_changes():
            if t > after and t > 0:
                k.schedule(t, PRIO_WORLD, self._refresh_links, gen, t)
        for o in scenario.outages:
            if o.kind != "crash":
                continue
            if o.start > after and o.start > 0:
                k.schedule(o.start, PRIO_WORLD, self._set_up, gen, o.node, False)
            if o.end > after and o.end > 0 and o.end < scenario.duration:
                k.schedule(o.end, PRIO_WORLD, self._set_up, gen, o.node, True)

    def _apply_interval(self, gen: int, iv: Interval) -> None:
        if gen == self._gen:
            self.current = iv
            self.net.set_speeds(iv.link_mbps)

    def _refresh_links(self, gen: int, t: float) -> None:
        if gen == self._gen:
            self._blocked = self.scenario.blocked_at(t)

    def _set_up(self, gen: int, node: int, up: bool) -> None:
        if gen != self._gen or self.nodes[node].up == up:
            return
        if up:
            self.nodes[node].recover()
        else:
            self._fail(self.nodes[node])

    def _fail(self, node: SimNode) -> None:
        """A crash: the process and its queued sends are gone (copies already on the
        wire are kernel events and still arrive)."""
        node.fail()
        self.busy_until[node.idx] = 0.0

    # ---- the twin's interface --------------------------------------------------------
    def apply(self, cmd: ProtocolSwitch) -> None:
        """Actuate: switch the consensus protocol from the next height no node started.

        Every core (and every core started later) gets the same agreed height; the
        validators order the twin's command through a block instead, which takes
        effect `reconfig_delay` blocks after it commits (not modelled)."""
        self.protocol = self._check(cmd.protocol)
        height = max((n.core.height for n in self.nodes if n.core is not None), default=0) + 1
        if self.schedule.at(height) == cmd.protocol:
            return
        self.schedule.decide(cmd.protocol, height)
        ev = SwitchProtocol(cmd.protocol, height)
        for n in self.nodes:
            if n.core is not None:
                n.run(ev)

    def run_until(self, t: float) -> None:
        self.kernel.run_until(t)

    @property
    def now(self) -> float:
        return self.kernel.now

    def observe(self) -> TwinObservation:
        """The ground-truth state (in the live loop, calibration supplies this instead)."""
        return TwinObservation(
            now=self.now, up=tuple(n.up for n in self.nodes), link_mbps=self.net.mbps,
            latency_ms=self.net.latency_ms, tps=self.current.tps,
            tx_size=float(self.current.tx_size), protocol=self.protocol,
            pending_txs=self.uncommitted(self.now), height=len(self.chain))

    def latency_between(self, t0: float, t1: float, start_block: int = 0) -> tuple[int, float]:
        """(transactions, latency sum) of blocks first committed in (t0, t1]."""
        n = 0
        s: float = 0  # int 0 kept so the no-commit result is unchanged
        times = self.commit_times
        for i in range(len(times) - 1, start_block - 1, -1):
            t = times[i]
            if t <= t0:
                break
            if t <= t1:
                n += self.commit_tx[i]
                s += self.commit_latency[i]
        return n, s

    def uncommitted(self, at: float) -> int:
        """Transactions arrived by `at` that no committed block holds (blocks take the
        oldest first, so it is a count past the tip; `at` is meant to be >= the last
        commit, e.g. now, as in `pending_age`)."""
        tip = self.tip()
        return max(self.stream.arrived_by(at) - (tip.tx_end if tip else 0), 0)

    def pending_age(self, at: float) -> tuple[int, float]:
        """(count, summed age) of transactions that arrived but are not yet committed."""
        tip = self.tip()
        a = tip.tx_end if tip else 0
        b = self.stream.arrived_by(at)
        if b <= a:
            return 0, 0.0
        return b - a, self.stream.latency_sum(a, b, at)

    def clone(self) -> ChainModel:
        """An independent copy for what-if runs (the transaction stream is shared)."""
        saved = self.records
        self.records = []
        memo: dict[int, object] = {id(self.stream): self.stream, id(self.scenario): self.scenario}
        for b in self.chain:  # committed blocks never change: share them
            memo[id(b)] = b
        try:
            twin = copy.deepcopy(self, memo)
        finally:
            self.records = saved
        return twin

    def replace_future(self, scenario: Scenario, stream: TxStream) -> None:
        """Drive this (cloned) model from now on by another scenario and stream."""
        now = self.now
        self._gen += 1
        self.scenario = scenario
        self.stream = stream
        iv = scenario.interval_at(now)
        self.current = iv
        self.net.set_speeds(iv.link_mbps)
        self._blocked = scenario.blocked_at(now)
        offline = scenario.offline_at(now)
        for n in self.nodes:
            if n.up and n.idx in offline:
                self._fail(n)
            elif not n.up and n.idx not in offline:
                n.recover()
        self._schedule_world(scenario, after=now)
