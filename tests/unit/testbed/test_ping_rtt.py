"""The emulation tests' RTT verdict: a machine stall is named and left out, a shaping
error is not."""

import pytest

from tests.emulation.ping_rtt import check_rtt, ping_times, ping_total_ms

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


def _log(times: list[str], avg: float) -> str:
    lines = [f"64 bytes from 10.0.0.2: icmp_seq={i} ttl=64 time={t} ms"
             for i, t in enumerate(times, start=1)]
    return "\n".join(lines + [f"{len(times)} packets transmitted, {len(times)} received, "
                              "0% packet loss, time 3000ms",
                              f"rtt min/avg/max/mdev = 200.1/{avg}/213.0/0.3 ms"])


def test_the_mean_comes_from_the_summary_not_the_rounded_times() -> None:
    # at 200 ms ping prints whole ms: replies of 200.45 ms all read 200, and 200.6 reads 201
    under = _log(["203"] + ["201"] * 9, 200.6 + 2.4 / 10)
    times = ping_times(under)
    with pytest.raises(AssertionError):
        check_rtt(times, 200, 0.5)  # the rounded times say 201.0
    check_rtt(times, 200, 0.7, total_ms=ping_total_ms(under))  # the summary says 200.6
    over = _log(["203"] + ["200"] * 9, 201.2 + 2.0 / 10)  # 9 x 201.2 would print 201
    with pytest.raises(AssertionError, match="mean RTT 201.2"):
        check_rtt(ping_times(over), 200, 1.0, total_ms=ping_total_ms(over))


def test_a_stall_is_taken_out_of_the_exact_total() -> None:
    log = _log(["203", "200", "213", "200", "200"], (203 + 200.3 * 3 + 213) / 5)
    times = ping_times(log)
    check_rtt(times, 200, 0.5, total_ms=ping_total_ms(log))
    assert ping_total_ms(log) == pytest.approx(200.3 * 3 + 213)
    assert ping_total_ms(log + "\n64 bytes from 10.0.0.2: icmp_seq=9 ttl=64 time=1 ms") is None
