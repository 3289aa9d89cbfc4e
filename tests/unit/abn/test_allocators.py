"""Algorithm 1 (average allocation with priority to flows about to time out), the
allocator registry, and the whole period loop driven from a flow table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abn.allocators import (
    AverageAllocator,
    available_allocators,
    get_allocator,
    register_allocator,
    residual_capacity,
)
from abn.flows import FlowKey, FlowTable, FlowView
from abn.options import find_rate, kbps_from_bps, write_rate
from tests.unit.abn.packets import build

FIXTURE = Path(__file__).with_name("recorded_table.json")


def key(n: int) -> FlowKey:
    return FlowKey(f"10.0.1.{n}", 40000 + n, "10.0.2.1", 5201)


def view(n: int, remaining: int | None = None, slots: int | None = None) -> FlowView:
    return FlowView(key(n), remaining, slots, 0)


def test_residual_capacity_is_what_non_tcp_and_acks_leave() -> None:
    assert residual_capacity(1e9, 1e8, 5e7) == 8.5e8
    assert residual_capacity(1e6, 9e5, 2e5) == 0.0
    with pytest.raises(ValueError, match="non_tcp_bps"):
        residual_capacity(1e9, -1.0, 0.0)
    with pytest.raises(ValueError, match="capacity_bps"):
        residual_capacity(float("nan"), 0.0, 0.0)


def test_equal_shares_without_deadlines() -> None:
    flows = [view(n) for n in range(4)]
    assert AverageAllocator().allocate(flows, 1e9, 1.0) == {key(n): 2.5e8 for n in range(4)}
    assert AverageAllocator().allocate([], 1e9, 1.0) == {}


def test_a_flow_about_to_time_out_gets_what_finishes_it_first() -> None:
    flows = [view(0), view(1, remaining=1_000_000, slots=1), view(2, remaining=10**9, slots=2)]
    rates = AverageAllocator().allocate(flows, 100e6, 0.5)
    assert rates[key(1)] == 16e6  # 1 MB in one 0.5 s slot
    assert rates[key(0)] == rates[key(2)] == 42e6
    assert list(rates) == [key(0), key(1), key(2)]  # input order


@pytest.mark.parametrize(("remaining", "slots"), [
    (None, 1),  # deadline but unknown size
    (0, 1),  # nothing left to send
    (1000, 2),  # not yet urgent
    (1000, 0),  # missed: no priority, no starvation
    (1000, -3),
    (1000, None),
])
def test_only_one_slot_left_with_data_left_is_urgent(remaining: int | None,
                                                     slots: int | None) -> None:
    rates = AverageAllocator().allocate([view(0), view(1, remaining, slots)], 10e6, 1.0)
    assert rates == {key(0): 5e6, key(1): 5e6}


def test_capacity_exhaustion_serves_the_smallest_needs_first() -> None:
    flows = [view(0), view(1, remaining=1_000_000, slots=1), view(2, remaining=500_000, slots=1),
             view(3, remaining=500_000, slots=1)]
    rates = AverageAllocator().allocate(flows, 10e6, 1.0)
    # needs: 8 Mbit/s, 4, 4; ties broken by key: flow 2 then 3, and flow 1 gets the rest
    assert rates == {key(0): 0.0, key(1): 2e6, key(2): 4e6, key(3): 4e6}
    assert AverageAllocator().allocate(flows, 0.0, 1.0) == dict.fromkeys(rates, 0.0)


def test_an_urgent_flow_alone_gets_only_its_need() -> None:
    assert AverageAllocator().allocate([view(0, 1000, 1)], 1e9, 1.0) == {key(0): 8000.0}


def test_bad_arguments_are_refused() -> None:
    allocator = AverageAllocator()
    with pytest.raises(ValueError, match="twice"):
        allocator.allocate([view(0), view(0)], 1e6, 1.0)
    with pytest.raises(ValueError, match="period_s"):
        allocator.allocate([view(0)], 1e6, 0.0)
    with pytest.raises(ValueError, match="capacity_bps"):
        allocator.allocate([view(0)], -1.0, 1.0)


def test_registry() -> None:
    allocator = get_allocator("average")
    assert isinstance(allocator, AverageAllocator) and allocator.name == "average"
    assert "average" in available_allocators()
    assert available_allocators() == ["average", "dqn"]
    with pytest.raises(ValueError, match=r"unknown allocator 'nope'; known allocators: .*average"):
        get_allocator("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_allocator("average", AverageAllocator)


def test_driven_from_a_recorded_table() -> None:
    recorded = json.loads(FIXTURE.read_text())
    flows = [FlowView.from_dict(f) for f in recorded["flows"]]
    capacity = residual_capacity(recorded["capacity_bps"], recorded["non_tcp_bps"],
                                 recorded["control_bps"])
    rates = get_allocator("average").allocate(flows, capacity, recorded["period_s"])
    expected = {FlowKey.from_dict(f["key"]): f["expected_bps"] for f in recorded["flows"]}
    assert rates == pytest.approx(expected)
    assert sum(rates.values()) == pytest.approx(capacity)


def test_arrivals_and_departures_change_shares_at_the_next_allocation() -> None:
    """The shim's period loop on a table: observe, close the period, expire, allocate,
    record, and write the rate into the flow's returning ACKs."""
    table, allocator, period = FlowTable(), AverageAllocator(), 1.0
    capacity = 12e6

    def tick(now: float) -> dict[FlowKey, float]:
        stats = table.take_period()
        table.expire(now, idle_timeout=period)
        c_r = residual_capacity(capacity, stats.non_tcp_bps(period), stats.control_bps(period))
        rates = allocator.allocate(table.views(), c_r, period)
        table.set_rates(rates)
        return rates

    def send(n: int, now: float) -> None:
        table.observe(key(n), now, 1000, False, wire_bytes=1052)

    for n in (0, 1):
        send(n, 0.1)
    table.observe(key(0).reversed(), 0.2, 0, True, wire_bytes=125)  # 1000 bit/s of ACKs
    table.observe_non_tcp(125)  # and 1000 bit/s of other traffic
    assert tick(1.0) == {key(0): 5999000.0, key(1): 5999000.0}

    for n in (0, 1, 2):  # an arrival: three shares
        send(n, 1.5)
    assert tick(2.0) == {key(n): 4e6 for n in range(3)}

    send(0, 2.5)
    send(2, 2.5)  # flow 1 falls silent and leaves: two shares again
    assert tick(3.4) == {key(0): 6e6, key(2): 6e6}
    assert table.get(key(1)) is None

    ack = build(src="10.0.2.1", dst="10.0.1.0", sport=5201, dport=40000)
    flow = table.for_ack(key(0).reversed())
    assert flow is not None and flow.rate_bps is not None
    assert find_rate(write_rate(ack, kbps_from_bps(flow.rate_bps)).packet) == 6000


flow_views = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(0, 10**9)),
              st.one_of(st.none(), st.integers(-2, 4))),
    max_size=12,
).map(lambda specs: [view(n, r, s) for n, (r, s) in enumerate(specs)])


@settings(max_examples=300)
@given(flow_views, st.floats(0, 1e10), st.floats(0.01, 10))
def test_allocations_never_exceed_capacity(flows: list[FlowView], capacity: float,
                                           period: float) -> None:
    rates = AverageAllocator().allocate(flows, capacity, period)
    assert set(rates) == {f.key for f in flows}
    assert all(rate >= 0 for rate in rates.values())
    assert sum(rates.values()) <= capacity * (1 + 1e-9) + 1e-6
    urgent = [f for f in flows if f.slots_left == 1 and f.remaining_bytes]
    if sum(f.remaining_bytes * 8 / period for f in urgent if f.remaining_bytes) <= capacity:
        for f in urgent:
            assert f.remaining_bytes is not None
            assert rates[f.key] == pytest.approx(f.remaining_bytes * 8 / period)
