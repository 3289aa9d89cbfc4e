"""The emulation tests' RTT verdict: a machine stall is named and left out, a shaping
error is not."""

import pytest

from tests.emulation.ping_rtt import check_rtt, ping_times

LOG = "\n".join(f"64 bytes from 10.0.0.2: icmp_seq={i} ttl=64 time={t} ms"
                for i, t in enumerate([45.3, 40.2, 40.4, 110.0, 40.3, 40.1], start=1))


def test_first_ping_is_left_out_and_one_stall_is_tolerated() -> None:
    times = ping_times(LOG)
    assert times == [40.2, 40.4, 110.0, 40.3, 40.1]
    check_rtt(times, 40, 1.0)


def test_a_systematic_offset_fails() -> None:
    with pytest.raises(AssertionError, match="mean RTT"):
        check_rtt([41.6, 41.8, 41.5, 41.7], 40, 1.0)


def test_early_pings_and_repeated_stalls_fail() -> None:
    with pytest.raises(AssertionError, match="earlier"):
        check_rtt([40.1, 38.5, 40.2], 40, 1.0)
    with pytest.raises(AssertionError, match="stalled"):
        check_rtt([40.1, 70.0, 80.0, 90.0, 40.2], 40, 1.0)
