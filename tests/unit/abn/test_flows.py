"""The flow table: registration, ACK lookup, expiry, period accounting, the size bound."""

from __future__ import annotations

import pytest

from abn.flows import FlowKey, FlowTable, FlowView, key_of
from tests.unit.abn.packets import ACK, SYN, build

DATA = FlowKey("10.0.0.1", 40000, "10.0.0.2", 5201)
ACKS = DATA.reversed()


def test_reverse_key_and_key_from_a_packet() -> None:
    assert ACKS == FlowKey("10.0.0.2", 5201, "10.0.0.1", 40000, 6)
    assert ACKS.reversed() == DATA
    assert key_of(build(src="10.0.0.2", dst="10.0.0.1", sport=5201, dport=40000)) == ACKS
    assert key_of(build(proto=17)) is None
    assert FlowKey.from_dict(DATA.to_dict()) == DATA


def test_data_registers_a_flow_and_acks_find_it_by_the_reverse_key() -> None:
    table = FlowTable()
    syn = table.observe(DATA, 0.0, 0, False, wire_bytes=60)
    assert syn is not None and len(table) == 1
    flow = table.observe(DATA, 0.5, 1448, False, wire_bytes=1500)
    assert flow is syn
    assert (flow.packets, flow.data_bytes, flow.first_seen, flow.last_active) == (2, 1448, 0.0, 0.5)
    assert table.observe(ACKS, 0.6, 0, True, wire_bytes=52) is flow
    assert table.for_ack(ACKS) is flow and table.get(DATA) is flow
    assert (flow.acks, flow.last_seen, flow.last_active) == (1, 0.6, 0.5)
    assert ACKS not in table and len(table) == 1  # ACKs never register a flow


def test_an_ack_for_an_unknown_flow_still_counts_as_control() -> None:
    table = FlowTable()
    assert table.observe(ACKS, 0.0, 0, True, wire_bytes=52) is None
    assert len(table) == 0
    assert table.take_period().control_bytes == 52


def test_both_directions_carrying_data_are_two_flows() -> None:
    table = FlowTable()
    a = table.observe(DATA, 0.0, 100, False, wire_bytes=152)
    b = table.observe(ACKS, 0.0, 100, False, wire_bytes=152)
    assert a is not b and len(table) == 2
    assert table.observe(ACKS, 0.1, 0, True, wire_bytes=52) is a


def test_declared_size_and_deadline() -> None:
    table = FlowTable()
    flow = table.register(DATA, 0.0, size_bytes=10_000, deadline_slots=3)
    assert flow is not None
    assert (flow.remaining_bytes, flow.slots_left, flow.timer) == (10_000, 3, 0)
    table.observe(DATA, 0.1, 4_000, False, wire_bytes=4_052)
    table.take_period()
    assert (flow.remaining_bytes, flow.slots_left, flow.timer) == (6_000, 2, 1)
    table.observe(DATA, 1.1, 9_000, False, wire_bytes=9_052)
    assert flow.remaining_bytes == 0  # never negative, even with retransmissions
    other = table.observe(ACKS, 0.0, 10, False, wire_bytes=62)
    assert other is not None and (other.remaining_bytes, other.slots_left) == (None, None)
    for bad in ({"size_bytes": -1}, {"deadline_slots": 0}):
        with pytest.raises(ValueError):
            table.register(DATA, 0.0, **bad)


def test_registering_an_observed_flow_keeps_what_was_seen() -> None:
    table = FlowTable()
    table.observe(DATA, 0.0, 500, False, wire_bytes=552)
    table.take_period()
    flow = table.register(DATA, 1.0, size_bytes=2_000, deadline_slots=2)
    assert flow is not None and (flow.remaining_bytes, flow.slots_left) == (1_500, 2)


def test_period_accounting_is_returned_and_reset() -> None:
    table = FlowTable()
    table.observe_non_tcp(100)
    table.observe_non_tcp(28)
    table.observe(DATA, 0.0, 1448, False, wire_bytes=1500)
    table.observe(ACKS, 0.0, 0, True, wire_bytes=52)
    table.observe(ACKS, 0.0, 0, True, wire_bytes=52)
    stats = table.take_period()
    assert (stats.non_tcp_bytes, stats.control_bytes, stats.data_bytes) == (128, 104, 1500)
    assert stats.control_bps(0.5) == 104 * 8 / 0.5 and stats.non_tcp_bps(1.0) == 1024
    again = table.take_period()
    assert (again.non_tcp_bytes, again.control_bytes, again.data_bytes) == (0, 0, 0)
    with pytest.raises(ValueError):
        table.observe_non_tcp(-1)
    with pytest.raises(ValueError):
        table.observe(DATA, 0.0, -1, False, wire_bytes=0)


def test_each_period_advances_timers_and_rolls_period_bytes() -> None:
    table = FlowTable()
    flow = table.observe(DATA, 0.0, 1000, False, wire_bytes=1052)
    assert flow is not None
    table.take_period()
    assert (flow.timer, flow.last_period_bytes, flow.period_bytes) == (1, 1000, 0)
    table.observe(DATA, 1.0, 10, False, wire_bytes=62)
    table.take_period()
    assert (flow.timer, flow.last_period_bytes) == (2, 10)
    table.take_period()
    assert (flow.timer, flow.last_period_bytes) == (3, 0)
    assert table.views() == [FlowView(DATA, None, None, 0)]


def test_expire_drops_flows_whose_sender_went_quiet() -> None:
    table = FlowTable()
    table.observe(DATA, 0.0, 100, False, wire_bytes=152)
    quiet = FlowKey("10.0.0.3", 1, "10.0.0.2", 2)
    table.observe(quiet, 0.0, 100, False, wire_bytes=152)
    table.observe(DATA, 1.0, 100, False, wire_bytes=152)
    table.observe(quiet.reversed(), 1.5, 0, True, wire_bytes=52)  # ACKs keep nothing alive
    assert table.expire(2.0, idle_timeout=2.0) == []  # exactly the timeout: kept
    gone = table.expire(2.5, idle_timeout=2.0)
    assert [f.key for f in gone] == [quiet]
    assert [f.key for f in table] == [DATA]
    assert table.for_ack(quiet.reversed()) is None


def test_the_table_is_bounded_and_counts_what_it_could_not_take() -> None:
    table = FlowTable(max_flows=2)
    keys = [FlowKey("10.0.0.1", port, "10.0.0.2", 5201) for port in (1, 2, 3)]
    for key in keys:
        table.observe(key, 0.0, 100, False, wire_bytes=152)
    assert [f.key for f in table] == keys[:2]
    assert table.observe(keys[2], 0.1, 100, False, wire_bytes=152) is None
    assert table.register(keys[2], 0.1, size_bytes=1) is None
    assert table.observe(keys[0], 0.2, 100, False, wire_bytes=152) is not None  # known: fine
    stats = table.take_period()
    assert (stats.untracked_packets, stats.untracked_bytes, stats.data_bytes) == (2, 304, 456)
    assert table.untracked_packets_total == 2
    table.expire(5.0, idle_timeout=1.0)
    assert table.observe(keys[2], 5.0, 100, False, wire_bytes=152) is not None
    with pytest.raises(ValueError):
        FlowTable(max_flows=0)


def test_rates_are_recorded_for_known_flows_only() -> None:
    table = FlowTable()
    flow = table.observe(DATA, 0.0, 1, False, wire_bytes=53)
    assert flow is not None and flow.rate_bps is None
    table.set_rates({DATA: 5e6})
    assert flow.rate_bps == 5e6
    with pytest.raises(KeyError, match="not in the table"):
        table.set_rates({ACKS: 1.0})


def test_views_round_trip_through_json_dicts() -> None:
    view = FlowView(DATA, 1234, 1, 99)
    assert FlowView.from_dict(view.to_dict()) == view
    assert FlowView.from_dict({"key": DATA.to_dict()}) == FlowView(DATA, None, None, 0)


def test_observing_real_packets() -> None:
    """The shim's per-packet path, minus NFQUEUE: parse, key, observe."""
    from abn.options import tcp_info

    table = FlowTable()
    packets = [
        build(b"", flags=SYN, src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=5201),
        build(b"", flags=ACK, payload=b"x" * 100, src="10.0.0.1", dst="10.0.0.2",
              sport=40000, dport=5201),
        build(src="10.0.0.2", dst="10.0.0.1", sport=5201, dport=40000),  # pure ACK back
    ]
    for t, packet in enumerate(packets):
        info, key = tcp_info(packet), key_of(packet)
        assert info is not None and key is not None
        table.observe(key, float(t), info.payload_len, info.pure_ack, wire_bytes=len(packet))
    flow = table.get(DATA)
    assert flow is not None and (flow.packets, flow.data_bytes, flow.acks) == (2, 100, 1)
