"""The digital twin, kept apart from the physical chain (issue 19), also in simulation.

Until now the "physical system" and the twin's model were one object: policies and
what-if cloned the physical `ChainModel`, so they saw messages in flight, timers, the
exact workload and the link parameters, which no real twin sees. Here the two sides
are separate and only a `SensorFeed` crosses between them:

- the `BlockSensorRecord`s emitted since the last read (what the validators report,
  the same records live nodes emit), and
- the transactions seen being submitted since the last read (arrival times and sizes,
  as a client-side tap sees them), and the current time.

`PhysicalChain` produces feeds from a simulated chain with records on. `DigitalTwin`
is built from what a deployer knows up front (node count, the chain software's fixed
`ModelConfig`, the scenario generator's settings for drawing futures), never from the
scenario, and every decision period TS it `ingest`s a feed:

- node up/down: a node is down once `up_heights` heights were committed after the last
  evidence of it (its own record or its vote in anyone's);
- per-node link speeds and latencies (and per ordered pair latencies): `calibration.
  estimate` over the records of the latest `link_heights` heights; a parameter with no
  evidence there keeps its previous value;
- the workload: TPS and mean transaction size of the submissions of the last
  `workload_window` seconds;
- the height, the backlog (submitted, not yet committed per the records, with the
  observed arrival times) and the protocol in force (the last one it commanded, else
  the latest block's).

`observation()` gives the agent's state from that estimate; `model_now()` a fresh model
of the estimated present for what-if (`twin.whatif`); `predict()` a step latency.

`model_now` is a `ChainModel` built from the estimate alone: a scenario of the estimated
links, latencies (per pair once every pair has evidence) and workload; down nodes
crashed; stand-in blocks for the committed heights (recorded proposer, protocol, sizes
and proposal time, with certificates, so a node behind can sync); each node at the tip
the records give it (a node that voted in a committed height counts as having it: it
commits within milliseconds); the backlog as the stream's first transactions, with
their observed arrival times (so latencies compare with the physical chain's), then
future submissions at the estimated rate for `future_seconds`.

What it cannot have: the messages in flight, the timers and the uplinks' queues at
`now`, which no sensor reports. With `present="replay"` (default) it recovers most of
them by simulating from the first commit of the tip height (the last moment the records
fix the state: every up node entered the next height about then) to now, with the
estimated parameters and the observed submissions; `present="fresh"` starts every up
node at its tip at `now` (measured: 12.5% instead of 8.3% prediction error on WL1,
benchmarks/twin_calibration.py).

What the twin assumes of the chain software, as a deployer knows it: nodes named
n0..n{K-1}, round-robin proposers, the ModelConfig's timeouts, validation times, block
limits and whether sends contend. It does not know of cut links or partitions (the
records show them only as silence).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nodes.consensus import Schedule, rules_for
from nodes.consensus.messages import Certificate, CertVote
from nodes.consensus.quorum import quorum_size
from nodes.sensor import BlockSensorRecord
from twin.blocks import Block
from twin.calibration import Estimate, estimate
from twin.env import RewardKind
from twin.model import ChainModel, ModelConfig, TwinObservation
from twin.scenarios import GeneratorSettings, Interval, Outage, Scenario
from twin.whatif import WhatIfSettings, evaluate
from twin.workload import TxStream

_BLOCK_ID_BASE = 1_000_000_000
"""Ids of the twin's stand-ins for committed blocks: never those the model makes."""
_SPENT = Certificate(0, 0, None, ())
"""Stands in for certificates no node can ask for (heights every node has)."""


class TwinSettings(BaseModel):
    """How the twin calibrates and what it assumes for the future."""

    model_config = ConfigDict(extra="forbid")

    generator: GeneratorSettings = GeneratorSettings()
    """What the deployer knows of the world: futures are drawn from it, and its ranges'
    midpoints are the prior before any evidence."""
    link_heights: int = Field(default=5, ge=1)
    """Link speeds and latencies from the records of this many latest heights (with
    round-robin producers, one rotation covers every pair)."""
    up_heights: int = Field(default=2, ge=1)
    """A node is down once this many heights were committed without a word from it."""
    workload_window: float = Field(default=10.0, gt=0)
    """TPS and transaction size from the submissions of this many latest seconds."""
    present: Literal["replay", "fresh"] = "replay"
    """How `model_now` fills in the state no sensor reports (see the module docstring)."""
    replay_max: float = Field(default=10.0, ge=0)
    """At most this many seconds are replayed (a long stall starts fresh this far back)."""
    future_seconds: float = Field(default=60.0, gt=0)
    """`model_now` carries submissions at the estimated rate for this long after now."""
    pair_latencies: bool = True
    """`model_now` uses the per-pair latencies once every pair has evidence (the star
    fit otherwise): it also fits a network that is no star."""
    score: RewardKind = "committed_and_waiting"
    """Step latency measure of `predict` (the environment's reward measure)."""
    new_failures: bool = True
    """`predict`'s futures may start failures at the generator's rate, as what-if's do;
    False forecasts the likely future (no new failure; down nodes recover at drawn
    times)."""
    seed: int = 0
    """Seeds the future submissions `model_now` carries and `predict`'s default rng."""


@dataclass(frozen=True)
class SensorFeed:
    """Everything that crosses from the physical chain to the twin: plain data."""

    now: float
    records: tuple[BlockSensorRecord, ...]
    """Sensor records emitted since the last feed, in emission order."""
    tx_times: np.ndarray
    """Submission times of the transactions seen since the last feed (read-only)."""
    tx_sizes: np.ndarray
    """Their sizes in bytes (read-only)."""


def make_feed(now: float, records: Sequence[BlockSensorRecord], tx_times: np.ndarray,
              tx_sizes: np.ndarray) -> SensorFeed:
    """A feed with its own read-only copies: the twin cannot reach back through it."""
    times = np.array(tx_times, dtype=np.float64)
    sizes = np.array(tx_sizes, dtype=np.int64)
    if times.shape != sizes.shape or times.ndim != 1:
        raise ValueError(f"tx_times {times.shape} and tx_sizes {sizes.shape} must match")
    times.setflags(write=False)
    sizes.setflags(write=False)
    return SensorFeed(float(now), tuple(records), times, sizes)


class PhysicalChain:
    """The physical side's tap on a simulated chain: what its sensors and a client-side
    transaction tap would report, read incrementally. The twin never gets the model."""

    def __init__(self, model: ChainModel) -> None:
        if model.cfg.records != "all":
            raise ValueError("the physical chain must emit records from every node "
                             "(ModelConfig(records='all'))")
        self._model = model
        self._records = 0
        self._txs = 0

    def feed(self) -> SensorFeed:
        m = self._model
        now = m.now
        recs = m.records[self._records:]
        self._records += len(recs)
        stream = m.stream
        end = stream.arrived_by(now)
        times = stream.times[self._txs:end]
        sizes = np.diff(stream.cumbytes[self._txs:end + 1])
        self._txs = max(self._txs, end)
        return make_feed(now, recs, times, sizes)


@dataclass(frozen=True)
class _BlockInfo:
    """A committed block as the records describe it."""

    proposer: int
    protocol: str
    proposed_at: float
    tx_count: int
    tx_bytes: int
    block_bytes: int
    voters: frozenset[int] | None
    """Who the certificate the block carries names (the next height's proposer pool)."""


def _mid(r: tuple[float, float]) -> float:
    return 0.5 * (r[0] + r[1])


class DigitalTwin:
    """The twin's estimate of the chain, calibrated from sensor feeds only."""

    def __init__(self, n_nodes: int, cfg: ModelConfig, settings: TwinSettings | None = None,
                 initial_protocol: str = "pbft") -> None:
        rules_for(initial_protocol)
        self.settings = s = settings or TwinSettings()
        self.cfg = cfg.model_copy(update={"records": "none"})
        """The chain software's fixed parameters (the twin's own runs emit no records)."""
        self.names = tuple(f"n{i}" for i in range(n_nodes))
        self._idx = {n: i for i, n in enumerate(self.names)}
        self.n_validators = cfg.n_producers or n_nodes
        g = s.generator
        self.now = 0.0
        self.link_mbps = [_mid(g.link_mbps)] * n_nodes
        self.latency_ms = [_mid(g.latency_ms)] * n_nodes
        self.pair_latency_ms: dict[tuple[int, int], float] = {}
        self.tps = _mid(g.tps)
        self.tx_size = _mid(g.tx_size)
        self.last_estimate: Estimate | None = None
        self._initial = initial_protocol
        self._commanded: str | None = None
        self._blocks: dict[int, _BlockInfo] = {}
        self._commits: list[float] = []
        """First commit time per height (ascending: heights commit in order)."""
        self._recent: dict[int, list[BlockSensorRecord]] = {}
        self._heard = [-math.inf] * n_nodes
        self._tip = [0] * n_nodes
        """Per node: the highest height it recorded committing."""
        self._voted = [0] * n_nodes
        """Per node: the highest committed height it voted in."""
        self._tx_times = np.zeros(0)
        self._tx_sizes = np.zeros(0, dtype=np.int64)
        self._tx_base = 0
        """Observed submissions dropped from the front of the arrays (all committed)."""
        self._committed = 0
        self._chain: list[Block] = []
        self._certs: list[Certificate] = []
        self._present: ChainModel | None = None
        self._feeds = 0
        self.rng = np.random.default_rng([s.seed, 0xD7])

    # ---- sensing -----------------------------------------------------------------------
    def ingest(self, feed: SensorFeed) -> None:
        """Take in one period's feed and recalibrate (call every TS)."""
        if not isinstance(feed, SensorFeed):
            raise TypeError(f"the twin ingests SensorFeeds only, got {type(feed).__name__}")
        if feed.now < self.now:
            raise ValueError(f"feed from the past: {feed.now} < {self.now}")
        self.now = feed.now
        self._feeds += 1
        self._present = None
        self._add_txs(feed.tx_times, feed.tx_sizes)
        for r in feed.records:
            self._add_record(r)
        self._trim()
        self._calibrate_links()
        self._calibrate_workload()

    def note_command(self, protocol: str) -> None:
        """The twin commanded this protocol (it is the controller: it knows its orders)."""
        rules_for(protocol)
        self._commanded = protocol
        self._present = None

    def _add_txs(self, times: np.ndarray, sizes: np.ndarray) -> None:
        if len(times):
            self._tx_times = np.concatenate((self._tx_times, times))
            self._tx_sizes = np.concatenate((self._tx_sizes, sizes))

    def _add_record(self, r: BlockSensorRecord) -> None:
        i = self._idx.get(r.recorder)
        if i is None:
            raise ValueError(f"record from unknown node {r.recorder!r}; "
                             f"the twin knows {self.names}")
        h = r.height
        self._recent.setdefault(h, []).append(r)
        if h not in self._blocks:  # records come in commit order: this is the first
            self._new_height(h, r)
        if h >= self._tip[i]:
            self._tip[i] = h
        self._heard[i] = max(self._heard[i], r.committed_at)
        for v in r.votes:
            j = self._idx.get(v.validator)
            if j is not None:
                self._heard[j] = max(self._heard[j], v.received_at)
                self._voted[j] = max(self._voted[j], h)

    def _new_height(self, h: int, r: BlockSensorRecord) -> None:
        if h != len(self._commits) + 1:  # heights commit in order: a gap is a lost feed
            raise ValueError(f"record for height {h} after height {len(self._commits)}")
        voters = frozenset(self._idx[v] for v in r.cert_voters if v in self._idx)
        self._blocks[h] = _BlockInfo(self._idx[r.proposer], r.protocol, r.proposed_at,
                                     r.tx_count, r.tx_bytes, r.block_bytes, voters or None)
        self._committed += r.tx_count
        self._commits.append(r.committed_at)

    def _trim(self) -> None:
        """Keep only the records calibration still uses, and uncommitted or recent
        submissions."""
        keep = max(self.settings.link_heights, self.settings.up_heights)
        for h in [h for h in self._recent if h <= self.height - keep]:
            del self._recent[h]
        cut = min(self._committed - self._tx_base,
                  int(np.searchsorted(self._tx_times, self.now - self.settings.workload_window,
                                      side="right")))
        if cut > 10_000:
            self._tx_times = self._tx_times[cut:]
            self._tx_sizes = self._tx_sizes[cut:]
            self._tx_base += cut

    def _calibrate_links(self) -> None:
        window = [r for h in sorted(self._recent)[-self.settings.link_heights:]
                  for r in self._recent[h]]
        if not window:
            return
        # One pass: the previous estimate's speeds correct the votes' transfer times.
        est = estimate(window, self.cfg, self.settings.up_heights, prior=self._as_estimate(),
                       passes=1)
        self.last_estimate = est
        for n, i in self._idx.items():
            if est.speed_evidence.get(n, 0) > 0:
                self.link_mbps[i] = est.link_mbps[n]
            if est.latency_evidence.get(n, 0) > 0:
                self.latency_ms[i] = est.latency_ms[n]
        for (a, b), d in est.pair_latency_ms.items():
            self.pair_latency_ms[(self._idx[a], self._idx[b])] = max(d, 0.0)

    def _as_estimate(self) -> Estimate:
        return Estimate(up=dict(zip(self.names, self.up, strict=True)),
                        link_mbps=dict(zip(self.names, self.link_mbps, strict=True)),
                        latency_ms=dict(zip(self.names, self.latency_ms, strict=True)),
                        tps=self.tps, tx_size=self.tx_size)

    def _calibrate_workload(self) -> None:
        span = min(self.settings.workload_window, self.now)
        if span <= 0:
            return
        lo = int(np.searchsorted(self._tx_times, self.now - span, side="right"))
        n = len(self._tx_times) - lo
        self.tps = n / span
        if n:
            self.tx_size = float(self._tx_sizes[lo:].mean())

    # ---- the estimate ------------------------------------------------------------------
    @property
    def height(self) -> int:
        return len(self._commits)

    @property
    def up(self) -> tuple[bool, ...]:
        """Down: `up_heights` heights committed since the last word from the node."""
        need = self.settings.up_heights
        n = len(self._commits)
        return tuple(n - bisect.bisect_right(self._commits, t) < need for t in self._heard)

    @property
    def protocol(self) -> str:
        """In force from the next height: the last command, else the tip's protocol."""
        if self._commanded is not None:
            return self._commanded
        return self._blocks[self.height].protocol if self.height else self._initial

    def pending(self) -> tuple[np.ndarray, np.ndarray]:
        """Submission times and sizes of the transactions not committed per the records
        (blocks take the oldest first)."""
        k = min(max(self._committed - self._tx_base, 0), len(self._tx_times))
        return self._tx_times[k:], self._tx_sizes[k:]

    def observation(self) -> TwinObservation:
        """The estimated state, for the agent's state encoder."""
        return TwinObservation(
            now=self.now, up=self.up, link_mbps=tuple(self.link_mbps),
            latency_ms=tuple(self.latency_ms), tps=self.tps, tx_size=self.tx_size,
            protocol=self.protocol, pending_txs=len(self.pending()[0]), height=self.height)

    # ---- the twin's model --------------------------------------------------------------
    def model_now(self) -> ChainModel:
        """A fresh model of the estimated present (see the module docstring); what-if
        clones it. Each call returns an independent copy."""
        return self._present_model().clone()

    def predict(self, protocol: str, horizon: float, rng: np.random.Generator | None = None,
                scenarios: int = 1) -> float:
        """Predicted step latency over `horizon` under `protocol` (the `score` measure),
        the mean over `scenarios` futures drawn as what-if draws them."""
        ws = WhatIfSettings(scenarios=scenarios, horizon=horizon, score=self.settings.score,
                            new_failures=self.settings.new_failures)
        return float(evaluate(self._present_model(), horizon, self.settings.generator, ws,
                              rng if rng is not None else self.rng, (protocol,))[0])

    def _present_model(self) -> ChainModel:
        if self._present is None:
            self._present = self._build_present()
        return self._present

    def _start_time(self) -> float:
        """When the twin's model starts running: the first commit of the tip height
        (replay), at most `replay_max` back, or now (fresh)."""
        if self.settings.present == "fresh" or not self.height:
            return self.now
        return max(self._commits[-1], self.now - self.settings.replay_max)

    def _build_present(self) -> ChainModel:
        now = self.now
        start = self._start_time()
        end = now + self.settings.future_seconds
        speeds = tuple(self.link_mbps)
        size = max(int(round(self.tx_size)), 1)
        intervals = [Interval(now, end, self.tps, size, speeds)]
        if now > 0:  # no submissions drawn for the past: the observed ones stand there
            intervals.insert(0, Interval(0.0, now, 0.0, size, speeds))
        up = self.up
        outages = [Outage(i, 0.0, end) if not u else Outage(i, 0.0, start)
                   for i, u in enumerate(up) if not u or start > 0]
        sc = Scenario(name="twin", seed=self.settings.seed * 1_000_003 + self._feeds,
                      n_nodes=len(self.names), duration=end,
                      latency_ms=tuple(self.latency_ms), intervals=tuple(intervals),
                      outages=tuple(outages), latency_matrix_ms=self._matrix())
        model = ChainModel(sc, self.cfg, self.protocol)
        future = model.stream
        times, sizes = self.pending()
        keep = future.times > now
        model.stream = TxStream(np.concatenate((times, future.times[keep])),
                                np.concatenate((sizes, np.diff(future.cumbytes)[keep])))
        self._extend_chain()
        tips = [self._tip_of(i, u) for i, u in enumerate(up)]
        low = min(tips)  # no node syncs a height every node has: one shared stand-in
        model.chain = list(self._chain)
        model.certs = [_SPENT] * low + self._certs[low:]
        model.schedule = self._schedule()
        for node, tip in zip(model.nodes, tips, strict=True):
            node.tip = self._chain[tip - 1] if tip else None
            cert = model.certs[tip - 1] if tip else _SPENT
            node.tip_voters = (frozenset(cast(int, v.validator) for v in cert.votes)
                               if cert is not _SPENT else None)
            node.votes = []
        model.run_until(now)  # the up nodes start at `start` and run to now
        return model

    def _tip_of(self, i: int, up: bool) -> int:
        """The height node i has committed by now, as far as the records tell: its own
        record, or a committed height it voted in (a node that voted in a height its
        peers committed commits it too, usually within milliseconds; started a height
        lower, it would propose and vote that height all over again)."""
        return max(self._tip[i], self._voted[i]) if up else self._tip[i]

    def _matrix(self) -> tuple[tuple[float, ...], ...] | None:
        k = len(self.names)
        pairs = self.pair_latency_ms
        if not self.settings.pair_latencies or len(pairs) < k * (k - 1):
            return None
        return tuple(tuple(0.0 if i == j else pairs[(i, j)] for j in range(k))
                     for i in range(k))

    def _extend_chain(self) -> None:
        """Stand-ins for the committed blocks (what a recovering node syncs): the
        recorded proposer, protocol, sizes and proposal time; no transactions (those
        are behind the tip: the model's stream starts at the first uncommitted one)."""
        quorum = tuple(CertVote(v, "commit", "") for v in range(quorum_size(self.n_validators)))
        for h in range(len(self._chain) + 1, self.height + 1):
            b = self._blocks[h]
            parent = _BLOCK_ID_BASE + h - 1 if h > 1 else None
            block = Block(_BLOCK_ID_BASE + h, h, b.proposer, 0, 0, b.tx_bytes, b.block_bytes,
                          b.proposed_at, b.protocol, parent, b.voters)
            self._chain.append(block)
            self._certs.append(Certificate(h, 0, block.digest, quorum))
            if h > 1 and b.voters:  # block h carries a certificate of h - 1 naming them
                prev = self._certs[h - 2]
                self._certs[h - 2] = Certificate(h - 1, prev.round, prev.digest, tuple(
                    CertVote(v, "commit", "") for v in sorted(b.voters)))

    def _schedule(self) -> Schedule:
        """The protocols of the recorded heights, then the one in force."""
        first = self._blocks[1].protocol if self.height else self.protocol
        s = Schedule(first)
        for h in range(2, self.height + 1):
            p = self._blocks[h].protocol
            if p != self._blocks[h - 1].protocol:
                s.decide(p, h)
        if s.at(self.height + 1) != self.protocol:
            s.decide(self.protocol, self.height + 1)
        return s
