"""Properties of the rewriter over arbitrary input: it never raises, never corrupts,
and a packet it does not rewrite comes back as the very same bytes."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abn.options import (
    ABN_EXID,
    MAX_RATE_KBPS,
    find_rate,
    parse_tcp_options,
    write_rate,
)
from tests.unit.abn.packets import assert_well_formed

rates = st.integers(0, MAX_RATE_KBPS)

ours = rates.map(lambda r: struct.pack("!BBHI", 253, 8, ABN_EXID, r))

# options that parse, plus some that do not, so every branch is reached
valid_option = st.one_of(
    st.just(b"\x01"),
    st.just(b"\x00"),
    st.binary(min_size=2, max_size=2).map(lambda d: b"\x02\x04" + d),
    st.integers(0, 14).map(lambda s: bytes([3, 3, s])),
    st.just(b"\x04\x02"),
    st.binary(min_size=8, max_size=8).map(lambda d: b"\x08\x0a" + d),
    st.integers(1, 4).flatmap(lambda n: st.binary(min_size=8 * n, max_size=8 * n)).map(
        lambda d: bytes([5, 2 + len(d)]) + d),
    ours,
    st.integers(0, 0xFFFF).map(lambda x: struct.pack("!BBHI", 253, 8, x, 7)),
    st.binary(max_size=6).map(lambda d: struct.pack("!BBH", 253, 4 + len(d), ABN_EXID) + d),
    st.tuples(st.integers(2, 255), st.binary(max_size=10)).map(
        lambda t: bytes([t[0], 2 + len(t[1])]) + t[1]),
)
structured = st.lists(valid_option, max_size=8).map(b"".join)
option_area = st.one_of(
    st.binary(max_size=40),
    structured,
    st.tuples(structured, ours, structured).map(b"".join),  # ours somewhere
    st.tuples(st.sampled_from([b"\x01\x01", b""]), st.binary(min_size=8, max_size=8),
              st.sampled_from([3, 3, 2, 1])).map(  # near the 40-byte limit: 40, 36, 32, ...
        lambda t: t[0] + b"\x08\x0a" + t[1] + b"\x01\x01"[: len(t[0])]
        + bytes([5, 2 + 8 * t[2]]) + bytes(8 * t[2])),
    st.tuples(st.lists(valid_option, max_size=6).map(b"".join), st.binary(max_size=4)).map(
        lambda t: t[0] + t[1]),
).map(lambda area: area[:40])


# sampled_from leans towards its first element, so well-formed stays the common case
rarely = st.sampled_from([False] * 7 + [True])


@st.composite
def ip_tcp_packets(draw: st.DrawFn) -> bytes:
    """Mostly well-formed IPv4/TCP, arbitrary where it matters to the rewriter."""
    area = draw(option_area)
    area += b"" if draw(rarely) else b"\x00" * (-len(area) % 4)
    area = area[:40]
    ip_opts = draw(st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x94\x04\x00\x00"]))
    flags = draw(st.sampled_from([0x10, 0x18, -1]))
    flags = draw(st.integers(0, 0xFF)) if flags < 0 else flags
    payload = draw(st.binary(max_size=20)) if draw(rarely) else b""
    doff = (20 + len(area) + 3) // 4
    if draw(rarely):
        doff = draw(st.integers(0, 15))
    tcp = struct.pack("!HHIIBBHHH", draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)),
                      draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)),
                      doff << 4 | draw(st.integers(0, 15)), flags, draw(st.integers(0, 0xFFFF)),
                      draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)))
    segment = tcp + area + payload
    ihl = 5 + len(ip_opts) // 4
    total = ihl * 4 + len(segment)
    if draw(rarely):
        total = draw(st.integers(0, 0xFFFF))
    frag = draw(st.sampled_from([0x4000, 0, 0x4000, -1]))
    frag = draw(st.integers(0, 0xFFFF)) if frag < 0 else frag
    proto = draw(st.integers(0, 255)) if draw(rarely) else 6
    version_ihl = draw(st.integers(0, 255)) if draw(rarely) else 0x40 | ihl
    ip = struct.pack("!BBHHHBBH4s4s", version_ihl, draw(st.integers(0, 255)), total,
                     draw(st.integers(0, 0xFFFF)), frag, draw(st.integers(0, 255)), proto,
                     draw(st.integers(0, 0xFFFF)), draw(st.binary(min_size=4, max_size=4)),
                     draw(st.binary(min_size=4, max_size=4))) + ip_opts
    return ip + segment


def real_options(area: bytes) -> list[tuple[int, bytes]]:
    """The options that carry meaning (not padding, not ABN of ours)."""
    return [(o.kind, o.data) for o in parse_tcp_options(area)
            if o.kind > 1 and not (o.kind == 253 and o.data[:2] == b"\xab\x4e")]


def check(packet: bytes, rate: int) -> None:
    out = write_rate(packet, rate)
    if not out.changed:
        assert out.packet is packet
        return
    new = out.packet
    assert_well_formed(new)
    assert find_rate(new) == rate
    ihl = (packet[0] & 15) * 4
    old_doff, new_doff = (packet[ihl + 12] >> 4) * 4, (new[ihl + 12] >> 4) * 4
    assert len(new) - new_doff == len(packet) - old_doff  # only the options grew or shrank
    assert len(new[ihl + 20 : ihl + new_doff]) % 4 == 0
    # everything but lengths, data offset and checksums is carried over
    assert new[:2] + new[4:10] + new[12:ihl] == packet[:2] + packet[4:10] + packet[12:ihl]
    assert new[ihl : ihl + 12] == packet[ihl : ihl + 12]
    assert new[ihl + 12] & 0x0F == packet[ihl + 12] & 0x0F
    assert new[ihl + 13 : ihl + 16] + new[ihl + 18 : ihl + 20] == (
        packet[ihl + 13 : ihl + 16] + packet[ihl + 18 : ihl + 20])
    assert new[ihl + new_doff :] == packet[ihl + old_doff :]
    old_area, new_area = packet[ihl + 20 : ihl + old_doff], new[ihl + 20 : ihl + new_doff]
    assert real_options(new_area) == real_options(old_area)
    for o in parse_tcp_options(new_area):
        if o.kind == 253 and o.data[:2] == b"\xab\x4e":
            assert o.data[2:] == rate.to_bytes(4, "big")  # every copy carries the new rate
    if out.outcome == "replaced":
        assert len(new) == len(packet)
    else:
        assert find_rate(packet) is None
    again = write_rate(new, rate)  # idempotent
    assert again.outcome == "replaced" and again.packet == new


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120), rates)
def test_arbitrary_bytes(data: bytes, rate: int) -> None:
    check(data, rate)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(ip_tcp_packets(), rates)
def test_arbitrary_ip_tcp_packets(packet: bytes, rate: int) -> None:
    check(packet, rate)


def test_the_packet_strategy_reaches_the_interesting_outcomes() -> None:
    """Guards the property test against a strategy that only ever produces junk."""
    seen: set[str] = set()

    @settings(max_examples=200, database=None, derandomize=True)
    @given(ip_tcp_packets(), rates)
    def collect(packet: bytes, rate: int) -> None:
        seen.add(write_rate(packet, rate).outcome)

    collect()
    assert {"written", "replaced", "no_room", "not_pure_ack", "malformed_options",
            "malformed_ip", "malformed_tcp", "fragment", "not_ipv4_tcp"} <= seen
