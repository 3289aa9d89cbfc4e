"""Calibration: update the model's parameters from per-block sensor records.

From the records every node emits for a height (twin paper, section 3): a validator
that voted is up, one that stayed silent in the latest blocks is down; the time a
recorder took to receive a proposal is block_bytes / min(speed_p, speed_r) plus the two
latencies plus the (known) validation time; a PREPARE, sent when its validator received
the proposal, gives the pair's latency. Node speeds follow as the largest pairwise
minimum a node takes part in, which is exact for all but the fastest node (for which
it is the second-fastest speed: the fastest link's own speed is never the bottleneck
and does not change the model's behaviour).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from nodes.sensor import BlockSensorRecord
from twin.model import ChainModel, ModelConfig
from twin.scenarios import Interval


@dataclass(frozen=True)
class Estimate:
    up: dict[str, bool]
    link_mbps: dict[str, float]
    latency_ms: dict[str, float]
    tps: float
    tx_size: float


def estimate(records: Iterable[BlockSensorRecord], cfg: ModelConfig,
             recent_heights: int = 3) -> Estimate:
    """Estimate node states, link speeds and latencies, and the workload."""
    by_height: dict[int, list[BlockSensorRecord]] = defaultdict(list)
    for r in records:
        by_height[r.height].append(r)
    if not by_height:
        raise ValueError("calibration needs at least one record")
    heights = sorted(by_height)
    names = sorted({n for rs in by_height.values() for r in rs for n in r.validators}
                   | {r.recorder for rs in by_height.values() for r in rs},
                   key=lambda n: (len(n), n))
    idx = {n: i for i, n in enumerate(names)}
    k = len(names)

    # Node state: who was heard from in the most recent heights.
    heard: set[str] = set()
    for h in heights[-recent_heights:]:
        for r in by_height[h]:
            heard.add(r.recorder)
            heard.update(v.validator for v in r.votes)
    up = {n: n in heard for n in names}

    # Pair latencies from PREPAREs, pairwise bottleneck speeds from proposals.
    pair_lat: dict[tuple[int, int], list[float]] = defaultdict(list)
    prop_obs: list[tuple[int, int, int, float]] = []
    for h in heights:
        rs = [r for r in by_height[h] if r.round == 0 and not r.round_changes]
        recv = {r.recorder: r.proposal_received_at for r in rs}
        for r in rs:
            if r.recorder != r.proposer:
                prop_obs.append((idx[r.proposer], idx[r.recorder], r.block_bytes,
                                 r.proposal_received_at - r.proposed_at - cfg.block_validation))
            for v in r.votes:
                if v.phase == "prepare" and v.validator != r.recorder and v.validator in recv:
                    d = v.received_at - recv[v.validator] - cfg.msg_validation
                    a, b = sorted((idx[v.validator], idx[r.recorder]))
                    pair_lat[(a, b)].append(d)
    rows, rhs = [], []
    for (a, b), ds in pair_lat.items():
        row = np.zeros(k)
        row[a] = row[b] = 1.0
        rows.append(row)
        rhs.append(float(np.median(ds)))
    lat = np.zeros(k)
    if rows:
        lat = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    pair_bw: dict[tuple[int, int], list[float]] = defaultdict(list)
    for p, q, size, d in prop_obs:  # proposer, recorder indices (r is a record above)
        transfer = d - lat[p] - lat[q]
        if transfer > 0:
            pair_bw[(min(p, q), max(p, q))].append(size * 8e-6 / transfer)
    # The vote's own transfer time is part of the pair latency; it is small and ignored.
    speed = np.zeros(k)
    for (a, b), bws in pair_bw.items():
        m = float(np.median(bws))
        speed[a] = max(speed[a], m)
        speed[b] = max(speed[b], m)

    # Workload: committed transactions over time, from one recorder per height.
    first = [min(by_height[h], key=lambda r: r.committed_at) for h in heights]
    txs = sum(r.tx_count for r in first)
    nbytes = sum(r.tx_bytes for r in first)
    span = first[-1].committed_at - first[0].committed_at
    tps = (txs - first[0].tx_count) / span if span > 0 else 0.0
    return Estimate(up=up, link_mbps={n: float(speed[i]) for n, i in idx.items()},
                    latency_ms={n: float(lat[i]) * 1000.0 for n, i in idx.items()},
                    tps=tps, tx_size=nbytes / txs if txs else 0.0)


def calibrate(model: ChainModel, records: Iterable[BlockSensorRecord]) -> Estimate:
    """Update the model in place from sensor records and return the estimate."""
    est = estimate(records, model.cfg)
    names = [n.name for n in model.nodes]
    old = model.net.mbps
    speeds = tuple(est.link_mbps.get(n) or old[i] for i, n in enumerate(names))
    model.net.latency_ms = tuple(est.latency_ms.get(n, model.net.latency_ms[i])
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
