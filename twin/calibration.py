"""Calibration: the model's network, node and workload parameters from sensor records.

From the records every node emits for a height (twin paper, section 3: who took part,
and "relative response times"):

- Node state: a validator heard from (it recorded or voted) in the latest heights is up;
  one silent in them is down.
- Latencies: a PREPARE is sent when its validator has received (and validated) the
  proposal, which that validator's own record timestamps; so its arrival at a recorder
  gives the ordered pair's one-way latency once the vote's validation and transfer are
  taken off (the least over the window: queueing only adds delay). A robust
  least-squares fit over the pairs gives the per-node (star) view, latency_i +
  latency_j, that the observation uses; pairs far above it are queueing and dropped;
  the rest are returned too (for a network that is no star).
- Speeds: with sender contention (`ModelConfig.contention`, the default) a proposal's
  copies leave the sender's uplink one after another in node order, each holding it
  for bytes / speed_p, and the copy to r arrives bytes / min(speed_p, speed_r) after it
  started (plus latency and validation). So the k-th receiver's delay is
  k * bytes / speed_p + bytes / min(speed_p, speed_r): the spacing gives the sender's
  own speed, the rest the pair's bottleneck. `_fit_speeds` fits every node's speed to
  the window's broadcasts at once (robust Gauss-Newton, newest heights weighted most,
  older broadcasts left out while the window holds two link states). Round-0 proposals
  leave an idle uplink at the recorded proposal time; a round-r proposal (the
  round-robin proposer re-proposing the block) leaves after the sender's ROUND-CHANGE,
  which may carry the block, so its start offset is fitted too. Copies to a crashed
  node still hold the uplink (the sender does not know), so they count in k. Without
  contention a copy takes bytes / min(speed_p, speed_r) alone; the fastest node's
  speed is then never the bottleneck, no timing reveals it, and it comes out as the
  second-fastest (which does not change the model's behaviour).
- Records a node stamped no later than it entered the height are left out: a node
  behind buffers messages for heights it has not entered and stamps them on entering.

The vote correction needs speeds and the speed fit needs latencies, so `estimate`
alternates the two (`passes`), starting from the previous estimate when given one.
This mirrors the model's network (`twin.model.ChainModel.delay`): a change there is a
change here (tests/unit/twin/test_calibration.py recovers known parameters from the
model's own records, with and without contention).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from nodes.consensus.ports import NullAuth
from nodes.consensus.quorum import quorum_size
from nodes.consensus.values import Committee
from nodes.sensor import BlockSensorRecord
from twin.model import ChainModel, ModelConfig
from twin.scenarios import Interval

BITS = 8e-6
"""Mbit per byte: bytes * BITS / Mbit/s = seconds."""

Pair = tuple[str, str]
OFFSET_PRIOR = 0.01
"""Weight pulling a busy broadcast's start offset toward 0 (per second squared)."""
STAR_TOLERANCE = 0.005
"""Seconds a pair latency may miss the per-node (star) fit before it is distrusted."""


@dataclass(frozen=True)
class Estimate:
    up: dict[str, bool]
    link_mbps: dict[str, float]
    """Per node; 0.0 where the records hold no evidence (see `speed_evidence`)."""
    latency_ms: dict[str, float]
    """Per node (star fit); 0.0 where the records hold no evidence."""
    tps: float
    tx_size: float
    pair_latency_ms: dict[Pair, float] = field(default_factory=dict)
    """One-way latency of ordered pairs (src, dst) with evidence."""
    speed_evidence: dict[str, int] = field(default_factory=dict)
    """Per node: 1 if the broadcasts tell its speed (0: keep what was known before)."""
    latency_evidence: dict[str, int] = field(default_factory=dict)
    """Per node: ordered pairs with a latency (0: keep what was known before)."""


@dataclass(frozen=True)
class _Broadcast:
    """One proposal broadcast as the records show it."""

    sender: int
    height: int
    size: int
    """Bytes on the wire."""
    sent_at: float
    """When the sender handled its own proposal (it broadcasts then)."""
    received: dict[int, float]
    """Receiver index -> when it had the proposal validated."""
    busy: bool
    """The sender's uplink may still have been sending (a round-r proposer has just
    broadcast its ROUND-CHANGE, which carries the block): its copies start at an
    unknown offset >= 0, fitted with the speeds."""


@dataclass(frozen=True)
class _VoteObs:
    src: int
    dst: int
    delay: float
    """Vote arrival - its sender's proposal time - msg validation (latency + transfer)."""


def _names(by_height: Mapping[int, list[BlockSensorRecord]]) -> list[str]:
    found = {n for rs in by_height.values() for r in rs for n in r.validators}
    found |= {r.recorder for rs in by_height.values() for r in rs}
    return sorted(found, key=lambda n: (len(n), n))


def _observations(by_height: Mapping[int, list[BlockSensorRecord]], idx: dict[str, int],
                  cfg: ModelConfig) -> tuple[list[_Broadcast], list[_VoteObs]]:
    """Proposal broadcasts of every committed round, votes of clean round-0 heights only
    (after a round change votes queue behind round changes that carry blocks)."""
    props: list[_Broadcast] = []
    votes: list[_VoteObs] = []
    entered = _entry_times(by_height)
    for h in sorted(by_height):
        by_round: dict[int, list[BlockSensorRecord]] = defaultdict(list)
        for r in by_height[h]:
            if not r.synced:
                by_round[r.round].append(r)
        prev = by_height.get(h - 1, ())
        pool = frozenset(prev[0].cert_voters) if prev and cfg.proposer_pool else frozenset()
        for rnd, rs in by_round.items():
            since = {idx[r.recorder]: entered.get((r.recorder, h), -math.inf) for r in rs}
            b = _broadcast(h, rnd, rs, idx, since, cfg, pool)
            if b is not None:
                props.append(b)
            if rnd == 0 and b is not None:
                votes += _votes(rs, b, idx, since, cfg)
    return props, votes


def _broadcast(h: int, rnd: int, rs: list[BlockSensorRecord], idx: dict[str, int],
               since: dict[int, float], cfg: ModelConfig,
               pool: frozenset[str] = frozenset()) -> _Broadcast | None:
    """Round 0: the builder's proposal. Round r: the proposer of round r (in the order
    `pool`, the previous block's certificate voters, gives: `Committee.proposer_order`)
    re-proposing the block (a block built in round r is skipped: its justification
    carries blocks of unknown size)."""
    first = rs[0]
    if rnd == 0:
        sender, size, busy = idx[first.proposer], first.block_bytes, False
        sent = first.proposed_at
    else:
        validators = first.validators
        order = Committee(validators, NullAuth()).proposer_order(h, pool or None)
        name = order[rnd % len(validators)]
        mine = [r for r in rs if r.recorder == name]
        if not mine or name not in idx:
            return None
        sent = mine[0].proposal_received_at
        if first.proposer == name and first.proposed_at >= sent - 1e-9:
            return None
        # Its justification: a quorum of ROUND-CHANGEs that do not repeat the block.
        size = first.block_bytes + quorum_size(len(validators)) * cfg.vote_bytes
        sender, busy = idx[name], True
    received = {idx[r.recorder]: r.proposal_received_at for r in rs}
    return _Broadcast(sender, h, size, sent, {
        i: t for i, t in received.items() if i != sender and t > since[i]}, busy)


def _votes(rs: list[BlockSensorRecord], b: _Broadcast, idx: dict[str, int],
           since: dict[int, float], cfg: ModelConfig) -> list[_VoteObs]:
    out = []
    recv = {idx[r.recorder]: r.proposal_received_at for r in rs}
    for r in rs:
        if r.round_changes:
            continue
        dst = idx[r.recorder]
        for v in r.votes:
            src = idx.get(v.validator)
            # The proposer's PREPARE queues behind its own proposal: left out.
            if (v.phase != "prepare" or src is None or src == dst or src == b.sender
                    or src not in recv or v.received_at <= since[dst]):
                continue
            out.append(_VoteObs(src, dst, v.received_at - recv[src] - cfg.msg_validation))
    return out


def _entry_times(by_height: Mapping[int, list[BlockSensorRecord]]) -> dict[tuple[str, int], float]:
    """(recorder, height) -> when the recorder entered that height (its commit of the
    one before). A node behind buffers messages for heights it has not entered and
    handles them on entering, so it stamps them with its entry time, not their arrival:
    such stamps say nothing about the network and are left out."""
    return {(r.recorder, h + 1): r.committed_at for h, rs in by_height.items() for r in rs}


def _vote_transfer(speed: np.ndarray, src: int, dst: int, k: int, vote_bytes: int,
                   contention: bool) -> float:
    """Seconds from sending a vote at src to its arrival at dst, less latency: with
    contention, the copies before dst's in node order hold src's uplink first."""
    s_src, s_dst = speed[src], speed[dst]
    if s_src <= 0 or s_dst <= 0:
        return 0.0
    ahead = _position(src, dst) if contention else 0
    return vote_bytes * BITS * (ahead / s_src + 1.0 / min(s_src, s_dst))


def _position(src: int, dst: int) -> int:
    """Copies src sends before dst's in a broadcast (node order, itself skipped)."""
    return dst - 1 if dst > src else dst


def _pair_latencies(votes: list[_VoteObs], speed: np.ndarray, k: int,
                    cfg: ModelConfig) -> dict[tuple[int, int], float]:
    by_pair: dict[tuple[int, int], list[float]] = defaultdict(list)
    for o in votes:
        d = o.delay - _vote_transfer(speed, o.src, o.dst, k, cfg.vote_bytes, cfg.contention)
        by_pair[(o.src, o.dst)].append(d)
    # Queueing only adds delay (a vote behind a busy uplink, a round change carrying a
    # block): the least delay seen is the latency, as a minimum RTT is.
    return {p: min(ds) for p, ds in by_pair.items()}


def _star(pairs: dict[tuple[int, int], float], k: int,
          tolerance: float = STAR_TOLERANCE) -> np.ndarray:
    """Per-node latencies with lat_a + lat_b closest to the pairs (0 without evidence).

    Robust: while a pair misses the fit by more than `tolerance` seconds, the worst is
    left out (a node just back from a crash can show a pair whose every vote queued)."""
    items = list(pairs.items())
    lat = np.zeros(k)
    while items:
        rows = np.zeros((len(items), k))
        rhs = np.array([d for _, d in items])
        for n, ((a, b), _) in enumerate(items):
            rows[n, a] = rows[n, b] = 1.0
        lat = np.asarray(np.linalg.lstsq(rows, rhs, rcond=None)[0])
        miss = np.abs(rows @ lat - rhs)
        if miss.max() <= tolerance or len(items) <= 1:
            break
        del items[int(np.argmax(miss))]
    return lat


def _consistent(pairs: dict[tuple[int, int], float], star: np.ndarray,
                tolerance: float = STAR_TOLERANCE) -> dict[tuple[int, int], float]:
    """Directed pair latencies not far above the star's: more is queueing, not a path
    (a network that is no star keeps its pairs within that tolerance above)."""
    return {(a, b): d for (a, b), d in pairs.items() if d <= star[a] + star[b] + tolerance}


@dataclass(frozen=True)
class _Copies:
    """The observed copies of the window's broadcasts, as arrays (one entry per copy)."""

    P: np.ndarray
    """Sender index."""
    R: np.ndarray
    """Receiver index."""
    A: np.ndarray
    """Copies the sender sent before this one (0 without contention)."""
    B: np.ndarray
    """Mbit of the message."""
    Y: np.ndarray
    """Arrival - send - validation - latency: seconds of uplink and transfer."""
    H: np.ndarray
    """Height."""
    G: np.ndarray
    """Index of its broadcast among the busy ones (-1: the uplink was idle)."""


def _copies(props: list[_Broadcast], lat_of: dict[tuple[int, int], float],
            cfg: ModelConfig) -> tuple[_Copies, int]:
    rows: list[tuple[int, int, int, float, float, int, int]] = []
    busy = 0
    for b in props:
        g = -1
        if b.busy:
            g, busy = busy, busy + 1
        for r, t in b.received.items():
            y = t - b.sent_at - cfg.block_validation - lat_of[(b.sender, r)]
            if y > 0:
                ahead = _position(b.sender, r) if cfg.contention else 0
                rows.append((b.sender, r, ahead, b.size * BITS, y, b.height, g))
    cols = list(zip(*rows, strict=True)) if rows else [()] * 7
    P, R, A, B, Y, H, G = (np.array(c) for c in cols)
    return _Copies(P.astype(int), R.astype(int), A.astype(float), B.astype(float),
                   Y.astype(float), H.astype(int), G.astype(int)), busy


def _start(c: _Copies, k: int, default: np.ndarray) -> np.ndarray:
    """Where the fit starts: each node at its lower bound from the newest height it is
    in (B / y for both ends of a copy, (A + 1) B / y for its sender). Starting low
    matters: a speed above the other end's is not the bottleneck and gets no gradient,
    so a fit started high (at an older link state) would stay there."""
    newest = np.full(k, -1)
    np.maximum.at(newest, c.P, c.H)
    np.maximum.at(newest, c.R, c.H)
    low = np.zeros(k)
    for ends, bound in ((c.P, (c.A + 1) * c.B / c.Y), (c.R, c.B / c.Y)):
        m = c.H == newest[ends]
        np.maximum.at(low, ends[m], bound[m])
    return np.where(low > 0, low, default)


def _fit_speeds(props: list[_Broadcast], lat_of: dict[tuple[int, int], float], k: int,
                cfg: ModelConfig, init: np.ndarray, confirm: bool = False,
                tolerance: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Per-node speeds fitted to the broadcasts' arrivals (see the module docstring),
    and which nodes they say anything about (False: `init` kept).

    The newest evidence wins: while some broadcast is not explained (median relative
    error above `tolerance`: the links changed within the window), the oldest is left
    out and the rest refitted. `confirm`: `init` is a previous estimate; if it explains
    every copy already, it stands (and nothing is fitted)."""
    props = sorted(props, key=lambda b: b.height)
    if confirm and np.all(init > 0):
        c, m = _copies(props, lat_of, cfg)
        if not len(c.Y):
            return init.copy(), np.zeros(k, dtype=bool)
        fits = _confirms(c, m, k, init)
        if fits is not None:
            return init.copy(), fits
        # The broadcasts before the first one `init` does not explain saw the old links.
        while len(props) > 1 and _confirms(*_copies(props[:1], lat_of, cfg), k, init) is not None:
            props = props[1:]
    while props and _determined(props):
        c, m = _copies(props, lat_of, cfg)
        if not len(c.Y):
            break
        x, res, diag, bound = _gauss_newton(c, m, k, init)
        err = np.abs(res)
        worst = max(statistics.median(err[c.H == h].tolist()) for h in set(c.H.tolist()))
        if worst <= tolerance or len(props) == 1:
            known = (diag > 1e-6) & _explained(c.P, c.R, c.H, err, k, tolerance)
            # Never the bottleneck of anything it took part in: the bound (the
            # second-fastest speed, without contention) stands in for it.
            speed = np.where(known, np.exp(x[:k]), np.where(bound > 0, bound, init))
            return speed, known | ((bound > 0) & (diag <= 1e-6))
        props = props[1:]
    return init.copy(), np.zeros(k, dtype=bool)


def _determined(props: list[_Broadcast]) -> bool:
    """Enough to fit: a broadcast from an idle uplink, or busy ones from two senders
    (one busy broadcast alone leaves its start offset and the speeds to trade off)."""
    return any(not b.busy for b in props) or len({b.sender for b in props}) > 1


def _confirms(c: _Copies, m: int, k: int, speed: np.ndarray, tolerance: float = 0.01,
              outliers: float = 0.1) -> np.ndarray | None:
    """The nodes these copies depend on, if `speed` already explains them (the steady
    state: nothing to fit; a busy broadcast's offset is then its copies' median excess):
    all but a share `outliers` within `tolerance` (a changed link shows in every copy
    it carries, a fifth of a 5-node window or more; a copy behind a busy uplink in one).
    None if they disagree."""
    sp, sr = speed[c.P], speed[c.R]
    p_min = sp <= sr
    transfer = c.B * (c.A / sp + 1.0 / np.where(p_min, sp, sr))
    offset = np.zeros(len(c.Y))
    for g in range(m):
        mine = c.G == g
        if mine.any():  # a broadcast whose copies were all left out has no offset
            offset[mine] = max(statistics.median((c.Y - transfer)[mine].tolist()), 0.0)
    if np.mean(np.abs((offset + transfer) / c.Y - 1.0) > tolerance) > outliers:
        return None
    depends = np.zeros(k, dtype=bool)
    depends[c.P[p_min | (c.A > 0)]] = True
    depends[c.R[~p_min]] = True
    return depends


def _gauss_newton(c: _Copies, m: int, k: int, init: np.ndarray, half_life: float = 1.0,
                  iterations: int = 30) -> tuple[np.ndarray, ...]:
    """Log speeds (then the m busy broadcasts' start offsets, kept >= 0) fitted by
    Levenberg-Marquardt with robust (soft-L1, 2%) reweighting; each height counts half
    as much as the next (`half_life` heights); a light pull toward `init` keeps a speed
    no observation depends on where it was. Returns (parameters, relative residuals,
    per-node information, the idle-uplink bound per sender)."""
    age = 0.5 ** ((c.H.max() - c.H) / half_life)
    idle = c.G < 0
    # No copy arrives sooner than (copies ahead + 1) transfers at the sender's speed: a
    # bound per sender (idle uplinks only), exact when some receiver is as fast.
    bound = np.zeros(k)
    np.maximum.at(bound, c.P[idle], ((c.A + 1) * c.B / c.Y)[idle])
    fallback = statistics.median((c.B / c.Y).tolist())
    x0 = np.log(np.where(init > 0, init, np.where(bound > 0, bound, fallback)))
    x = np.concatenate((np.log(_start(c, k, np.exp(x0))), np.zeros(m)))
    if m:  # offsets start where the starting speeds leave the arrivals
        first = np.full(m, np.inf)
        np.minimum.at(first, c.G[~idle], (c.Y - _transfer(c, np.exp(x[:k]))[0])[~idle])
        x[k:] = np.maximum(first, 0.0)
    # Pulls: speeds lightly toward init; offsets toward 0 (an idle uplink), which decides
    # only where the copies leave the offset free (a single broadcast).
    reg = np.concatenate((np.full(k, 1e-4), np.full(m, OFFSET_PRIOR)))
    target = np.concatenate((x0, np.zeros(m)))
    cost, res, J, w = _linearise(c, m, k, x, age, reg, target)
    lam = 1e-3
    for _ in range(iterations):
        jtwj = J.T @ (J * w[:, None])
        grad = J.T @ (w * res) + reg * (x - target)
        step = np.linalg.solve(jtwj + np.diag(reg + lam * (np.diag(jtwj) + 1e-9)), -grad)
        step[:k] = np.clip(step[:k], -1.0, 1.0)
        trial = x + step
        trial[k:] = np.maximum(trial[k:], 0.0)
        t_cost, t_res, t_J, t_w = _linearise(c, m, k, trial, age, reg, target)
        if t_cost <= cost:
            done = cost - t_cost < 1e-6 * cost or np.max(np.abs(step)) < 1e-3
            x, cost, res, J, w = trial, t_cost, t_res, t_J, t_w
            lam = max(lam / 10.0, 1e-7)
            if done:
                break
        else:
            lam *= 10.0
            if lam > 1e6:
                break
    jtwj = J.T @ (J * w[:, None])
    return x, res, np.diag(jtwj)[:k], bound


def _transfer(c: _Copies, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """Uplink wait and transfer of every copy at speeds s (and where the sender is the
    bottleneck, and the bottleneck speed)."""
    sp, sr = s[c.P], s[c.R]
    p_min = sp <= sr
    mn = np.where(p_min, sp, sr)
    return c.B * (c.A / sp + 1.0 / mn), sp, p_min, mn


def _linearise(c: _Copies, m: int, k: int, x: np.ndarray, age: np.ndarray, reg: np.ndarray,
               target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Robust cost, relative residuals, their Jacobian and IRLS weights at x."""
    transfer, sp, p_min, mn = _transfer(c, np.exp(x[:k]))
    busy = c.G >= 0
    offset = np.zeros(len(c.Y))
    if m:
        offset[busy] = x[k:][c.G[busy]]
    res = (offset + transfer) / c.Y - 1.0
    z = (res / 0.02) ** 2
    cost = float(np.sum(age * 2.0 * (np.sqrt(1.0 + z) - 1.0)) * 0.02 ** 2
                 + 0.5 * np.sum(reg * (x - target) ** 2))
    rows = np.arange(len(c.Y))
    J = np.zeros((len(c.Y), k + m))
    J[rows, c.P] -= c.B * c.A / (sp * c.Y) + np.where(p_min, c.B / (mn * c.Y), 0.0)
    J[rows, c.R] -= np.where(p_min, 0.0, c.B / (mn * c.Y))
    J[rows[busy], k + c.G[busy]] = 1.0 / c.Y[busy]
    return cost, res, J, age / np.sqrt(1.0 + z)


def _explained(P: np.ndarray, R: np.ndarray, H: np.ndarray, err: np.ndarray, k: int,
               tolerance: float = 0.03) -> np.ndarray:
    """Per node: does the fit explain its newest height's copies (median relative error
    within `tolerance`)? Not when the links changed during that broadcast (no single
    speed fits it): then the node keeps what was known before."""
    ok = np.ones(k, dtype=bool)
    for i in range(k):
        mine = (P == i) | (R == i)
        if mine.any():
            newest = mine & (H == H[mine].max())
            ok[i] = statistics.median(err[newest].tolist()) <= tolerance
    return ok


def _latency_lookup(pairs: dict[tuple[int, int], float], star: np.ndarray,
                    k: int) -> dict[tuple[int, int], float]:
    """Every ordered pair: its own evidence, else the star fit."""
    return {(a, b): pairs.get((a, b), float(star[a] + star[b]))
            for a in range(k) for b in range(k) if a != b}


def _workload(by_height: Mapping[int, list[BlockSensorRecord]]) -> tuple[float, float]:
    """Committed transactions per second and mean size, one recorder per height."""
    heights = sorted(by_height)
    first = [min(by_height[h], key=lambda r: r.committed_at) for h in heights]
    txs = sum(r.tx_count for r in first)
    nbytes = sum(r.tx_bytes for r in first)
    span = first[-1].committed_at - first[0].committed_at
    tps = (txs - first[0].tx_count) / span if span > 0 else 0.0
    return tps, (nbytes / txs if txs else 0.0)


def estimate(records: Iterable[BlockSensorRecord], cfg: ModelConfig, recent_heights: int = 3,
             prior: Estimate | None = None, passes: int = 2) -> Estimate:
    """Estimate node states, link speeds and latencies, and the workload.

    `recent_heights`: who was heard in this many latest heights is up. `prior` (the
    previous estimate) seeds the vote-transfer correction and, where it still explains
    the broadcasts, stands without a fit (the steady state costs no fitting).
    `passes`: latency and speed estimates alternated this often. Parameters without
    evidence come out 0 (see `Estimate.speed_evidence`)."""
    by_height: dict[int, list[BlockSensorRecord]] = defaultdict(list)
    for r in records:
        by_height[r.height].append(r)
    if not by_height:
        raise ValueError("calibration needs at least one record")
    names = _names(by_height)
    idx = {n: i for i, n in enumerate(names)}
    k = len(names)

    heard: set[str] = set()
    for h in sorted(by_height)[-recent_heights:]:
        for r in by_height[h]:
            heard.add(r.recorder)
            heard.update(v.validator for v in r.votes)

    props, votes = _observations(by_height, idx, cfg)
    speed = np.array([prior.link_mbps.get(n, 0.0) for n in names] if prior else np.zeros(k))
    pairs: dict[tuple[int, int], float] = {}
    star = np.zeros(k)
    known = np.zeros(k, dtype=bool)
    for done in range(max(passes, 1)):
        pairs = _pair_latencies(votes, speed, k, cfg)
        undirected: dict[tuple[int, int], list[float]] = defaultdict(list)
        for (a, b), d in pairs.items():
            undirected[(min(a, b), max(a, b))].append(d)
        star = _star({p: sum(ds) / len(ds) for p, ds in undirected.items()}, k)
        pairs = _consistent(pairs, star)
        speed, known = _fit_speeds(props, _latency_lookup(pairs, star, k), k, cfg, speed,
                                   confirm=prior is not None and done == 0)
    count = known.astype(int)
    lat_count = np.zeros(k, dtype=int)
    for a, b in pairs:
        lat_count[a] += 1
        lat_count[b] += 1
    tps, size = _workload(by_height)
    return Estimate(
        up={n: n in heard for n in names},
        link_mbps={n: float(speed[i]) if count[i] else 0.0 for n, i in idx.items()},
        latency_ms={n: float(star[i]) * 1000.0 if lat_count[i] else 0.0
                    for n, i in idx.items()},
        tps=tps, tx_size=size,
        pair_latency_ms={(names[a], names[b]): d * 1000.0 for (a, b), d in pairs.items()},
        speed_evidence={n: int(count[i]) for n, i in idx.items()},
        latency_evidence={n: int(lat_count[i]) for n, i in idx.items()})


def calibrate(model: ChainModel, records: Iterable[BlockSensorRecord]) -> Estimate:
    """Update the model in place from sensor records and return the estimate."""
    est = estimate(records, model.cfg)
    names = [n.name for n in model.nodes]
    old = model.net.mbps
    speeds = tuple(est.link_mbps.get(n) or old[i] for i, n in enumerate(names))
    model.net.latency_ms = tuple(est.latency_ms.get(n) or model.net.latency_ms[i]
                                 for i, n in enumerate(names))
    model.net.set_speeds(speeds)
    for node in model.nodes:
        want = est.up.get(node.name, node.up)
        if want and not node.up:
            node.recover()
        elif not want and node.up:
            node.fail()
    cur = model.current
    model.current = Interval(cur.start, cur.end, est.tps or cur.tps,
                             int(round(est.tx_size)) or cur.tx_size, speeds)
    return est
