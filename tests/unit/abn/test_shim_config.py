"""The shim refuses bad settings before it touches a queue."""

import pytest

from abn.shim import ShimConfig, forward_rules, main


def test_bad_settings_get_a_clear_error():
    with pytest.raises(ValueError, match="capacity"):
        ShimConfig(queue=7, capacity_bps=0)
    with pytest.raises(ValueError, match="period"):
        ShimConfig(queue=7, capacity_bps=1e6, period_s=60)
    with pytest.raises(ValueError, match="average"):  # names the known allocators
        ShimConfig(queue=7, capacity_bps=1e6, allocator="fancy")
    assert main(["--queue", "7", "--capacity-bps", "-5"]) == 2


def test_the_forward_rules_fail_open_and_follow_the_governed_link():
    (both,) = forward_rules(7, "-A")
    assert both[-1] == "--queue-bypass" and "-p" in both
    out, back = forward_rules(7, "-A", "mb-eth1")
    assert out[-1] == back[-1] == "--queue-bypass"
    # everything leaving on the link (non-TCP too: it uses the capacity); only TCP back
    assert out[out.index("-o") + 1] == "mb-eth1" and "-p" not in out
    assert back[back.index("-i") + 1] == "mb-eth1" and back[back.index("-p") + 1] == "tcp"


def test_an_unknown_link_interface_is_refused(capsys):
    assert main(["--queue", "7", "--capacity-bps", "1e6", "--link-intf", "nosuch0"]) == 2
    assert "nosuch0" in capsys.readouterr().err


def test_the_floor_keeps_every_sending_flow_moving_within_c_r() -> None:
    from abn.allocators import AverageAllocator
    from abn.dqn_baselines import EdfAllocator
    from abn.flows import FlowKey, FlowView
    from abn.shim import with_floor

    fat = FlowView(FlowKey("10.0.0.1", 1, "10.0.0.2", 5201), None, None, 10**6)
    done = FlowView(FlowKey("10.0.0.1", 2, "10.0.0.2", 6100), 0, 2, 1000)  # all data seen
    tail = FlowView(FlowKey("10.0.0.1", 3, "10.0.0.2", 6100), 2000, 1, 1000)
    flows = [fat, done, tail]
    bare = EdfAllocator().allocate(flows, 90e6, 0.1)
    assert bare[done.key] == 0.0  # what stalled live senders
    floored = with_floor(EdfAllocator(), flows, 90e6, 0.1, 0.25)
    assert sum(floored.values()) <= 90e6 + 1e-6
    assert min(floored.values()) == pytest.approx(0.25 * 90e6 / 3)
    assert floored[tail.key] == pytest.approx(7.5e6 + 2000 * 8 / 0.1)
    calm = [fat, done]  # no flow in its last slot: Average is equal shares either way
    avg = with_floor(AverageAllocator(), calm, 90e6, 0.1, 0.25)
    assert avg == pytest.approx(AverageAllocator().allocate(calm, 90e6, 0.1), rel=1e-9)
    assert with_floor(EdfAllocator(), flows, 90e6, 0.1, 0.0) == bare
