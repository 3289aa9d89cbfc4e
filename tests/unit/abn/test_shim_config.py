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
