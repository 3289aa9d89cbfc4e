"""Model fidelity (issue 19): sender contention, a pairwise latency matrix, uncommitted
transactions. Every test checks a number worked out by hand."""

import json
import math

import pytest

from nodes.consensus.messages import Proposal, Vote
from twin.blocks import Block
from twin.model import ChainModel, ModelConfig
from twin.scenarios import Interval, Outage, Scenario, fit_star

LAT = (10.0, 20.0, 30.0, 40.0, 50.0)  # per-node one-way ms
BIG = 400_000  # bytes: 3.2 s at 1 Mbit/s
TX = BIG * 8e-6  # seconds per copy from the 1 Mbit/s node
VOTE_TX = 250 * 8e-6


def five(duration=30.0, outages=(), slow=1.0, fast=100.0, tps=50.0, tx_size=200):
    """5 nodes, node 0 on a `slow` Mbit/s link, the others on `fast` ones."""
    return Scenario("five", 3, 5, duration, LAT,
                    (Interval(0.0, duration, tps, tx_size, (slow,) + (fast,) * 4),),
                    tuple(outages))


def big_proposal():
    block = Block(10_000, 1, 0, 0, 0, 0, BIG, 0.0, "pbft")
    return Proposal(1, 0, 0, block)


def pair_s(i, j):
    return (LAT[i] + LAT[j]) / 1000.0


# ---- (a) sender contention --------------------------------------------------------------
def test_a_broadcast_from_a_slow_node_queues_on_its_uplink():
    cfg = ModelConfig()  # block_validation 0.5 s, msg_validation 0.1 s
    m = ChainModel(five(), cfg, "pbft")
    assert m.now == 0.0 and m.busy_until == [0.0] * 5  # nothing sent yet
    prop = big_proposal()
    arrive = [m.delay(0, j, prop) for j in (1, 2, 3, 4)]
    for k, (j, t) in enumerate(zip((1, 2, 3, 4), arrive, strict=True), start=1):
        assert t == pytest.approx(k * TX + pair_s(0, j) + cfg.block_validation, abs=1e-6)
    assert max(arrive) >= 12.8
    assert m.busy_until[0] == pytest.approx(4 * TX)
    # a vote sent right after the proposal waits behind all four copies
    vote = Vote("prepare", 1, 0, 0, prop.block.digest)
    assert m.delay(0, 1, vote) == pytest.approx(
        4 * TX + VOTE_TX + pair_s(0, 1) + cfg.msg_validation, abs=1e-6)
    # another node's uplink is its own
    assert m.delay(2, 3, vote) == pytest.approx(
        250 * 8e-6 / 100 + pair_s(2, 3) + cfg.msg_validation, abs=1e-9)


def test_a_copy_to_a_slow_receiver_delays_only_itself():
    """A fast sender's uplink is held at its own speed: the copy to the 1 Mbit/s node
    takes 3.2 s, the copies queued after it leave 0.032 s apart (100 Mbit/s)."""
    cfg = ModelConfig()
    m = ChainModel(five(), cfg, "pbft")  # node 0 at 1 Mbit/s, the others at 100
    prop = Proposal(1, 0, 1, Block(10_001, 1, 1, 0, 0, 0, BIG, 0.0, "pbft"))
    up = BIG * 8e-6 / 100
    to_slow = m.delay(1, 0, prop)
    assert to_slow == pytest.approx(TX + pair_s(1, 0) + cfg.block_validation, abs=1e-9)
    for k, j in enumerate((2, 3, 4), start=2):
        assert m.delay(1, j, prop) == pytest.approx(
            k * up + pair_s(1, j) + cfg.block_validation, abs=1e-9)
    assert m.busy_until[1] == pytest.approx(4 * up)


def test_without_contention_every_copy_leaves_at_once():
    cfg = ModelConfig(contention=False)
    m = ChainModel(five(), cfg, "pbft")
    prop = big_proposal()
    arrive = [m.delay(0, j, prop) for j in (1, 2, 3, 4)]
    for j, t in zip((1, 2, 3, 4), arrive, strict=True):
        assert t == pytest.approx(TX + pair_s(0, j) + cfg.block_validation, abs=1e-9)
    vote = Vote("prepare", 1, 0, 0, prop.block.digest)
    assert m.delay(0, 1, vote) == pytest.approx(VOTE_TX + pair_s(0, 1) + cfg.msg_validation)
    assert m.busy_until == [0.0] * 5


def test_a_real_broadcast_delivers_its_copies_in_node_order():
    # height 5 is node 0's (round robin from n1 at height 1); its uplink is idle by then
    m = ChainModel(five(duration=8.0, fast=20.0), ModelConfig(
        block_validation=0.0, msg_validation=0.0, records="all"), "pbft")
    m.run_until(8.0)
    recs = {r.recorder: r for r in m.records if r.height == 5}
    assert recs["n0"].proposer == "n0" and recs["n0"].round == 0
    size = recs["n0"].block_bytes
    for k in (1, 2, 3, 4):
        r = recs[f"n{k}"]
        got = r.proposal_received_at - r.proposed_at
        assert got == pytest.approx(k * size * 8e-6 + pair_s(0, k), abs=1e-6)
    assert not m.violations


def test_a_lost_copy_occupies_nothing():
    m = ChainModel(five(outages=[Outage(1, 0.0, 30.0, "cut")]), ModelConfig(), "pbft")
    prop = big_proposal()
    assert m.delay(0, 1, prop) is None and m.busy_until[0] == 0.0
    assert m.delay(0, 2, prop) == pytest.approx(TX + pair_s(0, 2) + 0.5, abs=1e-9)


def test_a_crash_drops_the_queued_sends():
    m = ChainModel(five(outages=[Outage(0, 1.0, 2.0)]), ModelConfig(), "pbft")
    prop = big_proposal()
    for j in (1, 2, 3, 4):
        m.delay(0, j, prop)
    assert m.busy_until[0] == pytest.approx(4 * TX)
    m.run_until(1.5)
    assert not m.nodes[0].up and m.busy_until[0] == 0.0
    assert m.busy_until[1] < 1.5  # the others' queues are untouched (and short)


def test_clones_copy_the_uplinks_and_replace_future_keeps_them():
    m = ChainModel(five(), ModelConfig(), "pbft")
    prop = big_proposal()
    for j in (1, 2, 3, 4):
        m.delay(0, j, prop)
    c = m.clone()
    assert c.busy_until == m.busy_until and c.busy_until is not m.busy_until
    c.delay(0, 1, Vote("prepare", 1, 0, 0, 1))
    assert m.busy_until[0] == pytest.approx(4 * TX)
    assert c.busy_until[0] == pytest.approx(4 * TX + VOTE_TX)
    before = list(m.busy_until)
    m.replace_future(m.scenario, m.stream)
    assert m.busy_until == before


# ---- (b) the pairwise latency matrix ----------------------------------------------------
ASYM = ((0.0, 5.0, 30.0), (7.0, 0.0, 11.0), (40.0, 13.0, 0.0))


def three(matrix=ASYM, name="asym"):
    return Scenario(name, 1, 3, 10.0, (1.0, 1.0, 1.0),
                    (Interval(0.0, 10.0, 10.0, 200, (1e6,) * 3),), latency_matrix_ms=matrix)


def test_the_matrix_is_used_pair_by_pair():
    cfg = ModelConfig(contention=False)
    m = ChainModel(three(), cfg, "pbft")
    vote = Vote("prepare", 1, 0, 0, 1)
    for i in range(3):
        for j in range(3):
            if i != j:
                want = cfg.msg_validation + 250 * 8e-6 / 1e6 + ASYM[i][j] / 1000.0
                assert m.delay(i, j, vote) == pytest.approx(want, abs=1e-12), (i, j)
    # and the per-node latencies (1 ms each) are what the twin still observes
    assert m.observe().latency_ms == (1.0, 1.0, 1.0)


def test_a_star_matrix_gives_the_star_run():
    lat = (10.0, 20.0, 30.0, 40.0)
    star = tuple(tuple(0.0 if i == j else lat[i] + lat[j] for j in range(4)) for i in range(4))
    iv = (Interval(0.0, 6.0, 50.0, 200, (2.0, 5.0, 5.0, 5.0)),)
    cfg = ModelConfig(records="proposer")
    a = ChainModel(Scenario("star", 2, 4, 6.0, lat, iv), cfg, "pbft")
    b = ChainModel(Scenario("star", 2, 4, 6.0, (0.0,) * 4, iv, latency_matrix_ms=star), cfg,
                   "pbft")
    a.run_until(6.0)
    b.run_until(6.0)
    assert len(a.chain) >= 4
    assert b.commit_times == pytest.approx(a.commit_times, abs=1e-9)


def test_the_matrix_round_trips_and_old_files_load(tmp_path):
    sc = three()
    sc.save(tmp_path / "s.json")
    back = Scenario.load(tmp_path / "s.json")
    assert back == sc and back.latency_matrix_ms == ASYM
    old = json.loads((tmp_path / "s.json").read_text())
    del old["latency_matrix_ms"]
    assert Scenario.from_dict(old).latency_matrix_ms is None
    lists = three(matrix=[list(r) for r in ASYM])
    assert lists == sc and hash(lists) == hash(sc)  # stored as tuples


@pytest.mark.parametrize("matrix,why", [
    (((0.0, 1.0), (1.0, 0.0)), "must be 3 x 3"),
    (((0.0, 1.0, 2.0), (1.0, 0.0), (2.0, 1.0, 0.0)), "must be 3 x 3"),
    (((0.0, -1.0, 2.0), (1.0, 0.0, 1.0), (2.0, 1.0, 0.0)), r"\[0\]\[1\] = -1.0"),
    (((0.0, 1.0, 2.0), (1.0, 3.0, 1.0), (2.0, 1.0, 0.0)), r"\[1\]\[1\] = 3.0"),
    (((0.0, 1.0, 2.0), (1.0, 0.0, math.nan), (2.0, 1.0, 0.0)), r"\[1\]\[2\] = nan"),
])
def test_bad_matrices_are_refused_naming_the_scenario(matrix, why):
    with pytest.raises(ValueError, match=r"scenario 'bad'.*latency_matrix_ms.*") as e:
        three(matrix=matrix, name="bad")
    assert e.match(why)


# ---- (c) fitting a star -----------------------------------------------------------------
def test_fit_star_recovers_a_star_exactly():
    lat = (5.0, 10.0, 15.0, 20.0)
    m = [[0.0 if i == j else lat[i] + lat[j] for j in range(4)] for i in range(4)]
    got, rms = fit_star(m)
    assert got == pytest.approx(lat) and rms == pytest.approx(0.0, abs=1e-9)


def test_fit_star_on_a_matrix_no_star_fits():
    # all pairs 10 ms but 0-1 and 2-3 at 20 ms. Over the pairs (01, 02, 03, 12, 13, 23)
    # the star's sums span the space orthogonal to a = (1,-1,0,0,-1,1) and
    # b = (1,0,-1,-1,0,1); the extra (10,0,0,0,0,10) projects onto them as
    # 10/3 (a + b) = 10/3 (2,-1,-1,-1,-1,2): squared norm 1200/9 over 6 pairs, so
    # rms = sqrt(200/9) = 10 sqrt(2) / 3; what is left, 10/3 on every pair, is
    # 5/3 per node on top of the constant 5.
    m = [[0.0 if i == j else 10.0 for j in range(4)] for i in range(4)]
    m[0][1] = m[1][0] = m[2][3] = m[3][2] = 20.0
    got, rms = fit_star(m)
    assert got == pytest.approx((20 / 3,) * 4)
    assert rms == pytest.approx(10 * math.sqrt(2) / 3)


def test_fit_star_on_an_asymmetric_pair():
    got, rms = fit_star([[0.0, 10.0], [20.0, 0.0]])  # both ways fit to 15: errors of 5
    assert sum(got) == pytest.approx(15.0) and rms == pytest.approx(5.0)
    with pytest.raises(ValueError, match="square"):
        fit_star([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0]])


# ---- (d) whole runs ---------------------------------------------------------------------
def mean_latency(m):
    return sum(m.commit_latency) / sum(m.commit_tx)


@pytest.mark.parametrize("protocol", ["pbft", "bigfoot"])
def test_a_slow_proposer_costs_more_with_contention(protocol):
    # 100 tx/s of 500 B: 50+ kB blocks, 0.4+ s per copy to or from node 0's 1 Mbit/s
    # link; node 0 is first in every other proposer's broadcast, so with contention
    # its copy delays theirs as well
    sc = five(duration=30.0, fast=20.0, tps=100.0, tx_size=500)
    runs = {}
    for contention in (True, False):
        m = ChainModel(sc, ModelConfig(contention=contention), protocol)
        m.run_until(30.0)
        assert m.violations == [] and len(m.chain) >= 10, (contention, len(m.chain))
        runs[contention] = m
    assert mean_latency(runs[True]) > mean_latency(runs[False])
    on, off = ([t - b.proposed_at for b, t in zip(m.chain, m.commit_times, strict=True)
                if b.proposer == 0] for m in (runs[True], runs[False]))
    # node 0's first block (height 5) commits no sooner than q - 1 = 3 peers have it and
    # validated it (0.5 s): with contention that is after three transfers, without after one
    for contention, copies in ((True, 3), (False, 1)):
        m = runs[contention]
        block, t = m.chain[4], m.commit_times[4]
        assert block.proposer == 0
        assert t - block.proposed_at >= copies * block.size_bytes * 8e-6 + pair_s(0, 3) + 0.5
    assert sum(on) / len(on) > sum(off) / len(off)


# ---- uncommitted transactions -----------------------------------------------------------
def test_uncommitted_counts_arrivals_past_the_tip():
    m = ChainModel(five(duration=10.0), ModelConfig(), "pbft")
    m.run_until(10.0)
    tip = m.chain[-1].tx_end
    assert m.uncommitted(10.0) == m.stream.arrived_by(10.0) - tip > 0
    assert m.uncommitted(10.0) == m.pending_age(10.0)[0] == m.observe().pending_txs
    stuck = ChainModel(five(duration=10.0, outages=[Outage(1, 0, 10), Outage(2, 0, 10)]),
                       ModelConfig(), "pbft")  # 3 of 5 up: no quorum (4), nothing commits
    stuck.run_until(10.0)
    assert not stuck.chain
    assert stuck.uncommitted(10.0) == stuck.stream.arrived_by(10.0) > 400
    assert stuck.uncommitted(0.0) == 0
