"""Scenarios and the scenario generator (twin paper, section 4).

A scenario is what the world does to the chain: transactions per second, transaction
size, node state (when and for how long nodes go offline) and network state (per-node
link speeds), changing every interval TI; optionally a fixed pairwise latency matrix
where a star (latency_i + latency_j) is too coarse (`fit_star` says by how much).
Workloads are named generator settings (twin/workloads/*.yaml) plus a seed, so WL1 and
WL2 can be regenerated or replayed from the saved JSON of the scenario itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from twin.workload import TxStream, poisson_arrivals

WORKLOAD_DIR = Path(__file__).resolve().parent / "workloads"


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    tps: float
    tx_size: int
    link_mbps: tuple[float, ...]
    """Per-node access-link speed in Mbit/s during the interval."""


@dataclass(frozen=True)
class Outage:
    """A node out of the chain for [start, end). `crash`: its process dies (in-flight
    state lost; it restarts from its ledger and persisted votes, as the emulator's
    `crash`/`restart`); `cut`: its network is cut and its process runs on (timers,
    round changes), as `host_down`/`host_up`."""

    node: int
    start: float
    end: float
    kind: Literal["crash", "cut"] = "crash"


@dataclass(frozen=True)
class Partition:
    """For [start, end) nodes in different groups stop hearing each other; nodes in no
    group still reach everyone (the emulator's `partition` ... `heal`)."""

    groups: tuple[tuple[int, ...], ...]
    start: float
    end: float


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    n_nodes: int
    duration: float
    latency_ms: tuple[float, ...]
    """Per-node one-way propagation latency; a link's delay is the sum of its two ends
    (unless `latency_matrix_ms` gives the pairs)."""
    intervals: tuple[Interval, ...]
    outages: tuple[Outage, ...] = ()
    partitions: tuple[Partition, ...] = ()
    latency_matrix_ms: tuple[tuple[float, ...], ...] | None = None
    """One-way propagation latency src -> dst in ms (zero diagonal), for the whole
    scenario; when given the model uses it instead of latency_ms[i] + latency_ms[j]."""

    def __post_init__(self) -> None:
        if self.latency_matrix_ms is not None:  # stored as tuples: hashable, comparable
            object.__setattr__(self, "latency_matrix_ms", _check_matrix(
                self.name, self.n_nodes, self.latency_matrix_ms))
        for o in self.outages:
            if not 0 <= o.node < self.n_nodes or o.end < o.start or o.kind not in ("crash", "cut"):
                raise ValueError(f"scenario {self.name!r}: bad outage {o} "
                                 f"(nodes 0..{self.n_nodes - 1}, start <= end, crash|cut)")
        for p in self.partitions:
            seen = [i for g in p.groups for i in g]
            if (len(p.groups) < 2 or not all(p.groups) or len(seen) != len(set(seen))
                    or not all(0 <= i < self.n_nodes for i in seen) or p.end < p.start):
                raise ValueError(f"scenario {self.name!r}: bad partition {p} (two or more "
                                 "non-empty disjoint groups of node indices, start <= end)")

    def interval_at(self, t: float) -> Interval:
        for iv in self.intervals:
            if iv.start <= t < iv.end:
                return iv
        return self.intervals[-1]

    def offline_at(self, t: float) -> set[int]:
        """Nodes whose process is down at t (crashed)."""
        return {o.node for o in self.outages if o.kind == "crash" and o.start <= t < o.end}

    def blocked_at(self, t: float) -> frozenset[tuple[int, int]]:
        """Ordered (src, dst) pairs whose messages are lost at t: cut nodes' links, and
        links across the groups of a partition."""
        out: set[tuple[int, int]] = set()
        everyone = range(self.n_nodes)
        for o in self.outages:
            if o.kind == "cut" and o.start <= t < o.end:
                out.update((o.node, j) for j in everyone if j != o.node)
                out.update((j, o.node) for j in everyone if j != o.node)
        for p in self.partitions:
            if p.start <= t < p.end:
                for k, a in enumerate(p.groups):
                    for b in p.groups[k + 1:]:
                        out.update((i, j) for i in a for j in b)
                        out.update((j, i) for i in a for j in b)
        return frozenset(out)

    def link_changes(self) -> list[float]:
        """Times at which `blocked_at` may change."""
        return sorted({x for o in self.outages if o.kind == "cut" for x in (o.start, o.end)}
                      | {x for p in self.partitions for x in (p.start, p.end)})

    def tx_stream(self) -> TxStream:
        """The scenario's transactions, drawn reproducibly from its seed."""
        rng = np.random.default_rng([self.seed, 0x7E])
        parts = [poisson_arrivals(rng, iv.start, iv.end, iv.tps, iv.tx_size)
                 for iv in self.intervals]
        times = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
        sizes = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        return TxStream(times, sizes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        return cls(
            name=d["name"], seed=int(d["seed"]), n_nodes=int(d["n_nodes"]),
            duration=float(d["duration"]), latency_ms=tuple(d["latency_ms"]),
            intervals=tuple(Interval(iv["start"], iv["end"], iv["tps"], iv["tx_size"],
                                     tuple(iv["link_mbps"])) for iv in d["intervals"]),
            outages=tuple(Outage(**o) for o in d.get("outages", ())),
            partitions=tuple(Partition(tuple(tuple(int(i) for i in g) for g in p["groups"]),
                                       float(p["start"]), float(p["end"]))
                             for p in d.get("partitions", ())),
            latency_matrix_ms=d.get("latency_matrix_ms"),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Scenario:
        return cls.from_dict(json.loads(path.read_text()))


def _check_matrix(name: str, n: int, matrix: Any) -> tuple[tuple[float, ...], ...]:
    """The matrix as tuples of floats, or a ValueError naming the scenario and the fault
    (a bad matrix would otherwise surface as an IndexError deep in a run)."""
    rows = tuple(tuple(float(x) for x in row) for row in matrix)
    if len(rows) != n or any(len(r) != n for r in rows):
        shape = f"{len(rows)} rows of lengths {sorted({len(r) for r in rows})}"
        raise ValueError(f"scenario {name!r}: latency_matrix_ms must be {n} x {n} "
                         f"(n_nodes), got {shape}")
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            if not (math.isfinite(x) and x >= 0) or (i == j and x != 0):
                raise ValueError(f"scenario {name!r}: latency_matrix_ms[{i}][{j}] = {x}: "
                                 "need finite ms >= 0 and a zero diagonal")
    return rows


def fit_star(matrix: Any) -> tuple[tuple[float, ...], float]:
    """Per-node latencies lat with lat_i + lat_j closest to matrix[i][j] (least squares
    over all ordered pairs i != j) and the rms error in ms over those pairs: what a star
    network misses of a measured matrix. Unconstrained: far from a star, a fitted
    latency can come out negative."""
    m = np.asarray(matrix, dtype=float)
    n = m.shape[0]
    if m.shape != (n, n) or n < 2:
        raise ValueError(f"fit_star needs a square matrix of 2+ nodes, got shape {m.shape}")
    src, dst = np.nonzero(~np.eye(n, dtype=bool))
    design = np.zeros((len(src), n))
    rows = np.arange(len(src))
    design[rows, src] = 1.0
    design[rows, dst] += 1.0
    target = m[src, dst]
    lat, *_ = np.linalg.lstsq(design, target, rcond=None)
    rms = float(np.sqrt(np.mean((design @ lat - target) ** 2)))
    return tuple(float(x) for x in lat), rms


Range = tuple[float, float]


class GeneratorSettings(BaseModel):
    """Distributions the scenario generator draws from."""

    model_config = ConfigDict(extra="forbid")

    n_nodes: int = Field(default=5, ge=2)
    """Nodes in the chain (all are block producers in the paper's setup)."""
    duration: float = Field(default=300.0, gt=0)
    """Seconds of simulated time the scenario covers (one episode)."""
    interval: float = Field(default=60.0, gt=0)
    """TI: the world changes state every this many seconds."""
    tps: Range = (50.0, 200.0)
    """Transactions per second, uniform per interval."""
    tx_size: Range = (200.0, 1500.0)
    """Transaction size in bytes, uniform per interval."""
    link_mbps: Range = (1.0, 20.0)
    """Network base speed in Mbit/s, uniform per interval."""
    heterogeneity: Range = (0.0, 0.9)
    """Per interval h is drawn from this range; each node's speed is base * (1 - h * U(0,1))."""
    latency_ms: Range = (5.0, 40.0)
    """Per-node one-way propagation latency, fixed for the scenario."""
    outage_prob: float = Field(default=0.5, ge=0, le=1)
    """Chance that an interval contains a node going offline."""
    outage_duration: Range = (10.0, 60.0)
    """Seconds a node stays offline."""
    max_offline: int = Field(default=1, ge=0)
    """At most this many nodes offline at once (keep <= f for liveness)."""
    slow_node_prob: float = Field(default=0.0, ge=0, le=1)
    """Network swings: chance that an interval has one node on a slow link (drawn from
    its own random stream, so a workload without swings draws what it always drew)."""
    slow_node_factor: float = Field(default=0.2, gt=0, le=1)
    """That node's speed as a share of the interval's fastest link."""
    slow_node_tps: Range | None = None
    """Transactions per second in such an interval (None: drawn from `tps` as usual)."""

    @model_validator(mode="after")
    def _ranges(self) -> GeneratorSettings:
        for name in ("tps", "tx_size", "link_mbps", "heterogeneity", "latency_ms",
                     "outage_duration", "slow_node_tps"):
            if getattr(self, name) is None:  # an optional range left out
                continue
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name}: need 0 <= low <= high, got ({lo}, {hi})")
        if self.link_mbps[0] <= 0:
            raise ValueError("link_mbps: speeds must be > 0")
        if self.heterogeneity[1] >= 1:
            raise ValueError("heterogeneity: must stay below 1")
        return self


def link_speeds(rng: np.random.Generator, s: GeneratorSettings) -> tuple[float, ...]:
    base = rng.uniform(*s.link_mbps)
    h = rng.uniform(*s.heterogeneity)
    return tuple(float(base * (1.0 - h * u)) for u in rng.uniform(0, 1, s.n_nodes))


_SWING_STREAM = 77
"""Seed stream of the network swings, apart from the main one (see `slow_node_prob`)."""


def _slow_one_node(interval: Interval, rng: np.random.Generator,
                   s: GeneratorSettings) -> Interval:
    """One random node's link drops to `slow_node_factor` of the fastest: BigFoot's fast
    path waits for that node's votes on every block, PBFT's quorum does not."""
    speeds = list(interval.link_mbps)
    speeds[int(rng.integers(len(speeds)))] = max(speeds) * s.slow_node_factor
    tps = float(rng.uniform(*s.slow_node_tps)) if s.slow_node_tps else interval.tps
    return replace(interval, link_mbps=tuple(speeds), tps=tps)


def generate(settings: GeneratorSettings, seed: int, name: str = "scenario") -> Scenario:
    """Draw a random scenario; the same (settings, seed) always gives the same one."""
    rng = np.random.default_rng([seed, 0x5CE])
    swing = np.random.default_rng([seed, _SWING_STREAM])
    s = settings
    latency = tuple(float(x) for x in rng.uniform(*s.latency_ms, s.n_nodes))
    intervals: list[Interval] = []
    outages: list[Outage] = []
    t = 0.0
    while t < s.duration - 1e-9:
        end = min(t + s.interval, s.duration)
        interval = Interval(t, end, float(rng.uniform(*s.tps)),
                            int(rng.uniform(*s.tx_size)), link_speeds(rng, s))
        if s.slow_node_prob > 0 and swing.uniform() < s.slow_node_prob:
            interval = _slow_one_node(interval, swing, s)
        intervals.append(interval)
        if s.max_offline > 0 and rng.uniform() < s.outage_prob:
            node = int(rng.integers(s.n_nodes))
            start = float(rng.uniform(t, end))
            stop = min(start + float(rng.uniform(*s.outage_duration)), s.duration)
            overlapping = [o for o in outages if o.start < stop and start < o.end]
            if len(overlapping) < s.max_offline and all(o.node != node for o in overlapping):
                outages.append(Outage(node, start, stop))
        t = end
    return Scenario(name, seed, s.n_nodes, s.duration, latency, tuple(intervals),
                    tuple(outages))


class WorkloadSpec(BaseModel):
    """A named workload: generator settings; with a seed it is one reproducible scenario."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """Workload name, e.g. 'wl1'."""
    description: str = ""
    """What this workload stands for."""
    generator: GeneratorSettings = GeneratorSettings()
    """The distributions its scenarios are drawn from."""

    def scenario(self, seed: int) -> Scenario:
        return generate(self.generator, seed, self.name)


def load_workload(name_or_path: str) -> WorkloadSpec:
    """Load twin/workloads/<name>.yaml (or a path to such a file)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = WORKLOAD_DIR / f"{name_or_path}.yaml"
    return WorkloadSpec.model_validate(yaml.safe_load(path.read_text()))
