"""The compiled ABN rewrite (abn._nfqloop.write_rate, what the shim's per-packet loop
runs) decides exactly as the Python reference (abn.options.write_rate), byte for byte."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abn import _nfqloop
from abn.options import write_rate
from tests.unit.abn.packets import assert_well_formed
from tests.unit.abn.test_properties import ip_tcp_packets, rates


def same(packet: bytes, rate: int) -> None:
    ref = write_rate(packet, rate)
    out, outcome = _nfqloop.write_rate(packet, rate)
    assert outcome == ref.outcome, (packet.hex(), outcome, ref.outcome)
    assert out == ref.packet, packet.hex()
    if not ref.changed:
        assert out is packet  # an untouched packet is the very same object
    else:
        assert_well_formed(out)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ip_tcp_packets(), rates)
def test_compiled_rewrite_matches_the_reference_on_tcp_packets(packet, rate):
    same(packet, rate)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), rates)
def test_compiled_rewrite_matches_the_reference_on_arbitrary_bytes(packet, rate):
    same(packet, rate)


def test_compiled_rewrite_refuses_a_rate_out_of_range():
    import pytest

    with pytest.raises(ValueError):
        _nfqloop.write_rate(b"", 1 << 32)
