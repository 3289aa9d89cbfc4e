import pytest

from testbed import units


@pytest.mark.parametrize("value,bps", [
    ("100mbit", 100e6), ("2gbit", 2e9), ("2Gbps", 2e9), ("500kbit", 500e3), (100, 100e6),
    ("1.5gbit/s", 1.5e9), (2500, 2.5e9),
])
def test_rates(value, bps):
    assert units.parse_rate_bps(value) == pytest.approx(bps)


@pytest.mark.parametrize("bad", ["fast", "100 mbyte", "-5mbit", 0, True])
def test_bad_rates_say_what_was_expected(bad):
    with pytest.raises(ValueError, match="rate"):
        units.parse_rate_bps(bad)


def test_durations_and_percentages():
    assert units.parse_seconds("20ms") == pytest.approx(0.02)
    assert units.parse_seconds(20) == pytest.approx(0.02)
    assert units.parse_seconds("1.5s") == pytest.approx(1.5)
    assert units.parse_seconds(3, bare_unit="s") == 3
    assert units.parse_percent("1%") == pytest.approx(0.01)
    assert units.parse_percent(0.5) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="0-100%"):
        units.parse_percent("120%")
    with pytest.raises(ValueError, match="unknown time unit"):
        units.parse_seconds("5 fortnights")


def test_queue_sizes():
    assert units.parse_queue(100) == ("packets", 100)
    assert units.parse_queue("1MB") == ("bytes", 1_000_000)
    assert units.parse_queue("64KiB") == ("bytes", 65536)
    with pytest.raises(ValueError):
        units.parse_queue("lots")


def test_tc_formatting_keeps_precision():
    assert units.format_rate_tc(2e9) == "2000000kbit"
    assert units.format_time_tc(0.0205) == "20500us"
