"""The shim refuses bad settings before it touches a queue."""

import pytest

from abn.shim import ShimConfig, forward_rule, main


def test_bad_settings_get_a_clear_error():
    with pytest.raises(ValueError, match="capacity"):
        ShimConfig(queue=7, capacity_bps=0)
    with pytest.raises(ValueError, match="period"):
        ShimConfig(queue=7, capacity_bps=1e6, period_s=60)
    with pytest.raises(ValueError, match="average"):  # names the known allocators
        ShimConfig(queue=7, capacity_bps=1e6, allocator="fancy")
    assert main(["--queue", "7", "--capacity-bps", "-5"]) == 2


def test_the_forward_rule_fails_open():
    assert forward_rule(7, "-A")[-1] == "--queue-bypass"
