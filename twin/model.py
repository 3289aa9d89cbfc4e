"""The twin's discrete-event model of a permissioned chain (twin paper, section 2).

K nodes, the first M of which are block producers taking turns round-robin; a shared
transaction stream stands for the producers' pools (a proposer takes the oldest
transactions that have arrived); PBFT or BigFoot run message by message over a star
network in which each node has an access link (speed in Mbit/s, one-way latency): a
message from i to j takes size / min(speed_i, speed_j) + latency_i + latency_j. The
scenario drives node failures, link speeds and the arrival rate.

Outputs: per-block outcomes (first commit time, transaction count, latency sum) and,
optionally, `BlockSensorRecord`s from every node: the same records live nodes emit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nodes.sensor import BlockSensorRecord, VoteTiming
from twin.kernel import PRIO_WORLD, EventKernel
from twin.protocols import PROTOCOLS
from twin.protocols.base import Block, Node
from twin.scenarios import Interval, Scenario
from twin.workload import TxStream

PROTOCOL_NAMES: tuple[str, ...] = ("pbft", "bigfoot")


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
    """Round timer (doubling per round) after which a node asks for a round change."""
    fast_path_timeout: float = Field(default=1.0, gt=0)
    """BigFoot: how long to wait for PREPAREs from all validators."""
    block_validation: float = Field(default=0.5, ge=0)
    """Seconds a node needs to validate a proposal before acting on it (SymBChainSim's
    block_val_delay)."""
    msg_validation: float = Field(default=0.1, ge=0)
    """Seconds a node needs to validate a vote or round change (SymBChainSim's
    msg_val_delay); it is what makes each extra message phase cost time."""
    sync_delay: float = Field(default=0.5, ge=0)
    """Seconds a recovered node needs to fetch the blocks it missed."""
    records: Literal["none", "proposer", "all"] = "none"
    """Which nodes emit BlockSensorRecords (records cost time; the agent needs none)."""


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
    """Per-node access links; pairwise per-byte time and latency, recomputed on change."""

    def __init__(self, mbps: tuple[float, ...], latency_ms: tuple[float, ...]) -> None:
        self.latency_ms = tuple(latency_ms)
        self.set_speeds(mbps)

    def set_speeds(self, mbps: tuple[float, ...]) -> None:
        self.mbps = tuple(mbps)
        n = len(mbps)
        lat_s = [x / 1000.0 for x in self.latency_ms]
        self.inv_bw = [[8e-6 / min(mbps[i], mbps[j]) for j in range(n)] for i in range(n)]
        self.lat = [[lat_s[i] + lat_s[j] for j in range(n)] for i in range(n)]

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
        self.rules = PROTOCOLS
        self.protocol = self._check(protocol)
        self._height_protocol: dict[int, str] = {}
        k = scenario.n_nodes
        m = self.cfg.n_producers or k
        if m > k:
            raise ValueError(f"n_producers {m} > nodes {k}")
        self.n_validators = m
        self.f = (m - 1) // 3
        self.quorum = m - self.f
        self.keep_votes = self.cfg.records != "none"
        iv = scenario.interval_at(0.0)
        self.net = Network(iv.link_mbps, scenario.latency_ms)
        self.current = iv
        self.chain: list[Block] = []
        self.commit_times: list[float] = []
        self.commit_tx: list[int] = []
        self.commit_latency: list[float] = []
        self.fast_paths: list[bool] = []
        self.records: list[BlockSensorRecord] = []
        self.violations: list[str] = []
        self._block_ids = 0
        self._gen = 0
        self.nodes = [Node(self, i, i < m) for i in range(k)]
        self._schedule_world(scenario, after=-1.0)
        for i in sorted(scenario.offline_at(0.0)):
            self.nodes[i].fail()
        for n in self.nodes:
            if n.up:
                n.start_round(0)

    # ---- helpers used by nodes -------------------------------------------------------
    @staticmethod
    def _check(protocol: str) -> str:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; known {sorted(PROTOCOLS)}")
        return protocol

    def protocol_for(self, height: int) -> str:
        """The protocol of a height, fixed when the first node enters it (agreed height)."""
        p = self._height_protocol.get(height)
        if p is None:
            p = self._height_protocol[height] = self.protocol
        return p

    def proposer(self, height: int, rnd: int) -> int:
        return (height + rnd) % self.n_validators

    def next_block_id(self) -> int:
        self._block_ids += 1
        return self._block_ids

    def tip(self) -> Block | None:
        return self.chain[-1] if self.chain else None

    def on_decide(self, node: Node, block: Block, fast: bool) -> None:
        now = self.kernel.now
        h = block.height
        if h == len(self.chain) + 1:
            self.chain.append(block)
            self.commit_times.append(now)
            self.commit_tx.append(block.tx_count)
            self.commit_latency.append(self.stream.latency_sum(block.tx_start, block.tx_end, now))
            self.fast_paths.append(fast)
        elif h > len(self.chain) + 1:
            self.violations.append(f"{node.name} committed height {h} past tip {len(self.chain)}")
        elif self.chain[h - 1] is not block:
            self.violations.append(
                f"{node.name} committed block {block.id} at height {h}, "
                f"but block {self.chain[h - 1].id} was committed there")
        mode = self.cfg.records
        if mode == "all" or (mode == "proposer" and node.idx == block.proposer):
            self.records.append(self._record(node, block, fast))

    def _record(self, node: Node, block: Block, fast: bool) -> BlockSensorRecord:
        hs = node.hs
        now = self.kernel.now
        names = [f"n{i}" for i in range(self.n_validators)]
        votes = tuple(VoteTiming(f"n{v}", phase, t) for v, phase, t in hs.vote_log)  # type: ignore[arg-type]
        voted = {v for v, _, _ in hs.vote_log}
        received = hs.proposal_received_at if hs.proposal_received_at is not None else now
        return BlockSensorRecord(
            height=block.height, round=hs.round, protocol=block.protocol,
            proposer=f"n{block.proposer}", recorder=node.name,
            proposed_at=block.proposed_at, proposal_received_at=received, committed_at=now,
            tx_count=block.tx_count, tx_bytes=block.tx_bytes, block_bytes=block.size_bytes,
            tx_first_submit=self.stream.first_time(block.tx_start, block.tx_end),
            tx_latency_sum=self.stream.latency_sum(block.tx_start, block.tx_end, now),
            fast_path=fast, votes=votes, round_changes=tuple(hs.rc_log),
            silent=tuple(n for i, n in enumerate(names) if i not in voted),
            validators=tuple(names))

    # ---- world (scenario) events -----------------------------------------------------
    def _schedule_world(self, scenario: Scenario, after: float) -> None:
        k = self.kernel
        gen = self._gen
        for iv in scenario.intervals:
            if iv.start > after and iv.start > 0:
                k.schedule(iv.start, PRIO_WORLD, self._apply_interval, gen, iv)
        for o in scenario.outages:
            if o.start > after and o.start > 0:
                k.schedule(o.start, PRIO_WORLD, self._set_up, gen, o.node, False)
            if o.end > after and o.end > 0 and o.end < scenario.duration:
                k.schedule(o.end, PRIO_WORLD, self._set_up, gen, o.node, True)

    def _apply_interval(self, gen: int, iv: Interval) -> None:
        if gen == self._gen:
            self.current = iv
            self.net.set_speeds(iv.link_mbps)

    def _set_up(self, gen: int, node: int, up: bool) -> None:
        if gen != self._gen or self.nodes[node].up == up:
            return
        if up:
            self.nodes[node].recover()
        else:
            self.nodes[node].fail()

    # ---- the twin's interface --------------------------------------------------------
    def apply(self, cmd: ProtocolSwitch) -> None:
        """Actuate: switch the consensus protocol from the next height that starts."""
        self.protocol = self._check(cmd.protocol)

    def run_until(self, t: float) -> None:
        self.kernel.run_until(t)

    @property
    def now(self) -> float:
        return self.kernel.now

    def observe(self) -> TwinObservation:
        """The ground-truth state (in the live loop, calibration supplies this instead)."""
        tip = self.tip()
        done = tip.tx_end if tip else 0
        return TwinObservation(
            now=self.now, up=tuple(n.up for n in self.nodes), link_mbps=self.net.mbps,
            latency_ms=self.net.latency_ms, tps=self.current.tps,
            tx_size=float(self.current.tx_size), protocol=self.protocol,
            pending_txs=max(self.stream.arrived_by(self.now) - done, 0),
            height=len(self.chain))

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
        memo: dict[int, object] = {id(self.stream): self.stream, id(self.scenario): self.scenario,
                                   id(self.rules): self.rules}
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
        offline = scenario.offline_at(now)
        for n in self.nodes:
            if n.up and n.idx in offline:
                n.fail()
            elif not n.up and n.idx not in offline:
                n.recover()
        self._schedule_world(scenario, after=now)
