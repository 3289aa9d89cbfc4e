"""The compiled per-packet flow accounting of the shim (abn._nfqloop.AbnTable): data
counted per direction, ACKs credited to the flow they acknowledge and rewritten with
its rate exactly as the Python reference writes it, period totals, idle expiry, a bound."""

from __future__ import annotations

import random

import pytest

from abn import _nfqloop
from abn.options import ACK, FIN, write_rate
from tests.unit.abn.packets import build

MS = 1_000_000
DATA = ("10.0.0.1", 40000, "10.0.0.2", 5201)  # the sender's direction


def data_pkt(n: int = 1000, flags: int = ACK, key=DATA) -> bytes:
    src, sport, dst, dport = key
    return build(payload=b"x" * n, flags=flags, src=src, sport=sport, dst=dst, dport=dport)


def ack_pkt(key=DATA) -> bytes:
    src, sport, dst, dport = key  # an ACK travels the other way
    return build(src=dst, sport=dport, dst=src, dport=sport)


def test_acks_get_their_data_flows_rate_as_the_reference_writes_it():
    t = _nfqloop.AbnTable()
    assert t.feed(data_pkt(), 0)[1] == "not_pure_ack"
    ack = ack_pkt()
    out, outcome = t.feed(ack, 1)
    assert outcome == "no_rate" and out is ack  # no allocation yet: unchanged
    assert t.set_rates({DATA: 25_000}) == 0
    out, outcome = t.feed(ack, 2)
    ref = write_rate(ack, 25_000)
    assert outcome == ref.outcome == "written" and out == ref.packet
    assert t.set_rates({}) == 0  # the allocator speaks for every flow: others cleared
    assert t.feed(ack, 3)[1] == "no_rate"


def test_take_reports_the_period_and_resets_it():
    t = _nfqloop.AbnTable()
    for i in range(3):
        t.feed(data_pkt(1000), i * MS)
    t.feed(ack_pkt(), 4 * MS)
    t.feed(build(proto=17, opts=b""), 5 * MS)  # not TCP (a UDP-typed IPv4 packet)
    snap = t.take(6 * MS, 10**12)
    (flow,) = snap["flows"]
    assert tuple(flow["key"]) == DATA
    assert (flow["payload"], flow["packets"], flow["acks"]) == (3000, 3, 1)
    assert flow["last_data_ns"] == 2 * MS and flow["rate_kbps"] is None
    assert snap["control_bytes"] == len(ack_pkt()) and snap["non_tcp_bytes"] > 0
    again = t.take(7 * MS, 10**12)
    assert again["flows"][0]["payload"] == 0 and again["control_bytes"] == 0


def test_idle_flows_expire_and_fin_is_seen():
    t = _nfqloop.AbnTable()
    t.feed(data_pkt(), 0)
    other = ("10.0.0.3", 40001, "10.0.0.2", 5201)
    t.feed(data_pkt(flags=ACK | FIN, key=other), 50 * MS)
    snap = t.take(100 * MS, 60 * MS)  # the first is 100 ms idle, the second 50 ms
    assert {tuple(f["key"]): f["fin"] for f in snap["flows"]} == {DATA: False, other: True}
    left = [tuple(f["key"]) for f in t.take(101 * MS, 60 * MS)["flows"]]
    assert t.tracked == 1 and left == [other]


def test_the_table_is_bounded_and_counts_what_it_could_not_track():
    t = _nfqloop.AbnTable(max_flows=4)
    for i in range(6):
        t.feed(data_pkt(100, key=(f"10.0.1.{i}", 1000 + i, "10.0.0.2", 5201)), 0)
    snap = t.take(0, 10**12)
    assert len(snap["flows"]) == 4 and snap["untracked_packets"] == 2
    with pytest.raises(ValueError):
        _nfqloop.AbnTable(max_flows=0)
    with pytest.raises(ValueError):
        t.set_rates({("10.0.0.300", 1, "10.0.0.2", 2): 5})


def test_insertions_and_expiry_agree_with_a_dict_model():
    """Many flows coming and going (linear probing with backward-shift deletion)."""
    rnd = random.Random(4)
    t = _nfqloop.AbnTable(max_flows=256)
    model: dict[tuple, int] = {}  # key -> last data time
    now = 0
    for step in range(4000):
        now += rnd.randrange(0, 3 * MS)
        if rnd.random() < 0.9:
            key = (f"10.1.{rnd.randrange(4)}.{rnd.randrange(60)}", rnd.randrange(3),
                   "10.0.0.2", 5201)
            if key in model or len(model) < 256:
                model[key] = now
            t.feed(data_pkt(10, key=key), now)
        else:
            idle = rnd.randrange(0, 200 * MS)
            got = {tuple(f["key"]) for f in t.take(now, idle)["flows"]}
            assert got == set(model), f"step {step}"
            model = {k: v for k, v in model.items() if now - v <= idle}
            assert t.tracked == len(model)


def test_only_packets_leaving_on_the_governed_link_count_against_it():
    """An ACK returning to its sender crosses the link the other way: it is rewritten
    with its flow's rate but uses none of the capacity being shared (a full-duplex link);
    data and non-TCP going the other way do not enter the table either."""
    t = _nfqloop.AbnTable()
    t.feed(data_pkt(1000), 0)  # leaves on the link: counted
    t.feed(data_pkt(500, key=("10.0.0.2", 5201, "10.0.0.1", 40001)), 1, False)  # comes back
    t.feed(build(proto=17, opts=b""), 2, False)
    t.set_rates({DATA: 10_000})
    out, outcome = t.feed(ack_pkt(), 3, False)
    assert outcome == "written"
    snap = t.take(4 * MS, 10**12)
    assert [f["key"] for f in snap["flows"]] == [DATA]
    assert snap["control_bytes"] == 0 and snap["non_tcp_bytes"] == 0
    t.feed(ack_pkt(), 5 * MS, True)  # an ACK going out on the link does use it
    assert t.take(6 * MS, 10**12)["control_bytes"] > 0
