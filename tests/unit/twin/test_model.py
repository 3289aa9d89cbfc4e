"""Model tests: message delays, BigFoot's timer, safety, golden traces, determinism."""

import json
import os
from pathlib import Path

import pytest

from nodes.sensor import BlockSensorRecord
from twin.model import ChainModel, ModelConfig, ProtocolSwitch
from twin.scenarios import Interval, Outage, Partition, Scenario, load_workload

GOLDEN = Path(__file__).parent / "golden"
D = 0.010  # one-way latency per node: a message takes 2 * D between two nodes


def flat(n=4, tps=50.0, duration=10.0, outages=(), mbps=1e6):
    """Every link the same, bandwidth so high that transfer time is negligible."""
    return Scenario("flat", 7, n, duration, (D * 1000,) * n,
                    (Interval(0.0, duration, tps, 200, (mbps,) * n),), tuple(outages))


def bare(**kw):
    base = dict(block_validation=0.0, msg_validation=0.0, records="all", block_interval=1.0,
                fast_path_timeout=0.5)
    base.update(kw)
    return ModelConfig(**base)


def first_commit(model, height=1):
    recs = [r for r in model.records if r.height == height]
    return min(r.committed_at for r in recs) - recs[0].proposed_at


@pytest.mark.parametrize("protocol,delays", [("pbft", 3), ("bigfoot", 2)])
def test_message_delays_all_up(protocol, delays):
    m = ChainModel(flat(), bare(), protocol)
    m.run_until(3.0)
    assert first_commit(m) == pytest.approx(delays * 2 * D, abs=1e-4)
    assert not m.violations


def test_bigfoot_fast_path_flag_all_up():
    m = ChainModel(flat(), bare(), "bigfoot")
    m.run_until(5.0)
    assert m.records and all(r.fast_path for r in m.records)


def test_bigfoot_waits_out_fast_timer_with_a_node_down():
    # node 3 is down from the start; heights 1 and 2 have live proposers (1, 2).
    m = ChainModel(flat(outages=[Outage(3, 0.0, 10.0)]), bare(), "bigfoot")
    m.run_until(3.0)
    t = first_commit(m)
    # proposal (1 delay) + fast-path timer + COMMIT (1 delay)
    assert t == pytest.approx(2 * D + 0.5 + 2 * D, abs=1e-4)
    assert not any(r.fast_path for r in m.records if r.height == 1)
    assert all("n3" in r.silent for r in m.records if r.height == 1)
    p = ChainModel(flat(outages=[Outage(3, 0.0, 10.0)]), bare(), "pbft")
    p.run_until(3.0)
    assert first_commit(p) == pytest.approx(3 * 2 * D, abs=1e-4)


def test_offline_proposer_causes_round_change_and_chain_continues():
    m = ChainModel(flat(outages=[Outage(2, 0.0, 10.0)]), bare(round_timeout=1.0), "pbft")
    m.run_until(10.0)
    h2 = [r for r in m.records if r.height == 2]
    assert h2 and all(r.round == 1 for r in h2)
    assert h2[0].proposer == "n3"
    assert any(rc.reason == "timeout" for r in h2 for rc in r.round_changes)
    assert len(m.chain) >= 5
    assert not m.violations


def test_transmission_time_counts_block_size():
    slow = flat(mbps=1.0)  # every copy sent at once (test_fidelity: one after another)
    m = ChainModel(slow, bare(contention=False), "pbft")
    m.run_until(5.0)
    r = next(r for r in m.records if r.height == 2 and r.recorder != r.proposer)
    expected = r.block_bytes * 8 / 1e6 + 2 * D
    assert r.proposal_received_at - r.proposed_at == pytest.approx(expected, rel=1e-6)


def test_latency_is_block_time_minus_tx_time():
    m = ChainModel(flat(), bare(), "pbft")
    m.run_until(5.0)
    stream = m.stream
    for b, t, lat in zip(m.chain, m.commit_times, m.commit_latency, strict=True):
        manual = sum(t - stream.times[i] for i in range(b.tx_start, b.tx_end))
        assert lat == pytest.approx(manual)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("workload", ["wl1", "wl2"])
def test_safety_and_liveness_on_generated_scenarios(seed, workload):
    sc = load_workload(workload).scenario(seed)
    for protocol in ("pbft", "bigfoot"):
        m = ChainModel(sc, ModelConfig(), protocol)
        for t in range(30, int(sc.duration) + 1, 30):  # switch protocols on the way
            m.apply(ProtocolSwitch(("pbft", "bigfoot")[(t // 30) % 2]))
            m.run_until(float(t))
        assert m.violations == []
        assert len(m.chain) > sc.duration / 5
        # liveness: blocks keep committing in every 30 s window (load may exceed capacity)
        for t0 in range(0, int(sc.duration), 30):
            assert any(t0 < t <= t0 + 30 for t in m.commit_times), (protocol, t0)


def test_safety_with_sixteen_nodes_and_observers():
    sc = flat(n=16, tps=200.0, duration=20.0, outages=[Outage(5, 3.0, 9.0)], mbps=50.0)
    for protocol in ("pbft", "bigfoot"):
        m = ChainModel(sc, ModelConfig(n_producers=10, records="proposer"), protocol)
        m.run_until(20.0)
        assert not m.violations and len(m.chain) > 5


def test_deterministic_for_a_seed():
    sc = load_workload("wl1").scenario(4)
    a = ChainModel(sc, ModelConfig(records="proposer"), "bigfoot")
    b = ChainModel(sc, ModelConfig(records="proposer"), "bigfoot")
    a.run_until(120.0)
    b.run_until(120.0)
    assert [r.to_dict() for r in a.records] == [r.to_dict() for r in b.records]


def trace(model):
    return [{"h": r.height, "round": r.round, "proposer": r.proposer, "recorder": r.recorder,
             "committed_at": round(r.committed_at, 6), "tx": r.tx_count,
             "fast": r.fast_path, "silent": list(r.silent)} for r in model.records]


def slow_node0(n=4, duration=4.0):
    """Node 0 on a 1 Mbit/s link, the rest on 20: copies queue on node 0's uplink and
    on every proposer's copy to node 0."""
    return Scenario("slow0", 7, n, duration, (D * 1000,) * n,
                    (Interval(0.0, duration, 50.0, 200, (1.0,) + (20.0,) * (n - 1)),))


GOLDEN_CASES = {
    "pbft_flat": (lambda: flat(n=4, duration=4.0), "pbft"),
    "bigfoot_flat": (lambda: flat(n=4, duration=4.0), "bigfoot"),
    "bigfoot_node_down": (lambda: flat(n=4, duration=4.0, outages=[Outage(0, 0.0, 4.0)]),
                          "bigfoot"),
    "pbft_slow_node": (slow_node0, "pbft"),
}
UNCONTENDED_SAME = {"pbft_flat", "bigfoot_flat", "bigfoot_node_down"}
"""Cases on links so fast that queueing moves no time by 1e-6: the traces from before
sender contention, which contention=False must still give."""


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_trace(case):
    make, protocol = GOLDEN_CASES[case]
    m = ChainModel(make(), bare(), protocol)
    m.run_until(4.0)
    got = trace(m)
    path = GOLDEN / f"{case}.json"
    if os.environ.get("CHAINTWIN_REGEN_GOLDEN"):
        path.write_text(json.dumps(got, indent=0))
    assert path.exists(), f"missing golden file {path} (CHAINTWIN_REGEN_GOLDEN=1 writes it)"
    assert got == json.loads(path.read_text())


@pytest.mark.parametrize("case", sorted(UNCONTENDED_SAME))
def test_golden_trace_without_contention_is_the_old_one(case):
    make, protocol = GOLDEN_CASES[case]
    m = ChainModel(make(), bare(contention=False), protocol)
    m.run_until(4.0)
    assert trace(m) == json.loads((GOLDEN / f"{case}.json").read_text())


def test_records_are_sensor_records_and_round_trip():
    m = ChainModel(flat(), bare(), "pbft")
    m.run_until(3.0)
    r = m.records[0]
    assert isinstance(r, BlockSensorRecord)
    assert BlockSensorRecord.from_dict(r.to_dict()) == r
    assert {v.phase for v in r.votes} == {"prepare", "commit"}


def test_clone_is_independent():
    sc = load_workload("wl1").scenario(2)
    m = ChainModel(sc, ModelConfig(), "pbft")
    m.run_until(50.0)
    c = m.clone()
    c.run_until(100.0)
    assert m.now == 50.0 and len(c.chain) > len(m.chain)
    m.run_until(100.0)
    assert [b.id for b in m.chain] == [b.id for b in c.chain]


# ---- faults the emulator has (issue 17): network cuts and partitions ------------------------
def _heights(m):
    return [n.tip_height for n in m.nodes]


def test_a_partition_stops_the_minority_and_heals():
    part = Partition(((0, 1), (2, 3, 4, 5, 6)), 2.0, 6.0)  # n = 7: q = 5, f = 2
    sc = flat(n=7, duration=12.0)
    m = ChainModel(Scenario(sc.name, sc.seed, 7, 12.0, sc.latency_ms, sc.intervals, (),
                            (part,)), bare(round_timeout=1.0), "pbft")
    m.run_until(2.5)
    before = _heights(m)
    m.run_until(5.9)
    during = _heights(m)
    assert during[0] <= before[0] + 1 and during[1] <= before[1] + 1  # no quorum: at most
    assert min(during[2:]) >= before[2] + 2  # the one in flight; the majority goes on
    m.run_until(12.0)
    after = _heights(m)
    assert max(after) - min(after) <= 1 and min(after) > max(during), (during, after)
    assert not m.violations


def test_a_cut_node_keeps_its_process_and_catches_up():
    sc = flat(n=4, duration=12.0, outages=[Outage(3, 2.0, 6.0, "cut")])
    m = ChainModel(sc, bare(round_timeout=1.0), "pbft")
    m.run_until(2.5)
    epoch, frozen = m.nodes[3].epoch, m.nodes[3].tip_height
    m.run_until(5.9)
    assert m.nodes[3].up and m.nodes[3].epoch == epoch  # not restarted: only unreachable
    assert m.nodes[3].tip_height <= frozen + 1 < m.nodes[0].tip_height
    m.run_until(12.0)
    assert max(_heights(m)) - m.nodes[3].tip_height <= 1
    assert not m.violations


def test_fault_scenarios_round_trip_and_bad_ones_are_named(tmp_path):
    sc = flat(n=5, outages=[Outage(1, 1.0, 2.0, "cut"), Outage(2, 3.0, 4.0)])
    sc = Scenario(sc.name, sc.seed, 5, sc.duration, sc.latency_ms, sc.intervals, sc.outages,
                  (Partition(((0,), (3, 4)), 5.0, 6.0),))
    sc.save(tmp_path / "s.json")
    assert Scenario.load(tmp_path / "s.json") == sc
    old = json.loads((tmp_path / "s.json").read_text())
    del old["partitions"]
    for o in old["outages"]:
        del o["kind"]
    assert all(o.kind == "crash" for o in Scenario.from_dict(old).outages)  # older files
    assert sc.blocked_at(5.5) == {(0, 3), (0, 4), (3, 0), (4, 0)}
    assert sc.offline_at(1.5) == set() and sc.offline_at(3.5) == {2}
    with pytest.raises(ValueError, match="bad partition"):
        Scenario(sc.name, sc.seed, 5, sc.duration, sc.latency_ms, sc.intervals, (),
                 (Partition(((0, 1), (1, 2)), 0.0, 1.0),))
    with pytest.raises(ValueError, match="bad outage"):
        Scenario(sc.name, sc.seed, 5, sc.duration, sc.latency_ms, sc.intervals,
                 (Outage(7, 0.0, 1.0),))
