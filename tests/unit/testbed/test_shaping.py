"""The tc / iptables commands each backend would run, checked without root."""

import sys

from testbed import addressing, shaping
from testbed.topology_schema import Shaping, Topology


def topo(**neck) -> Topology:
    return Topology.model_validate({
        "name": "t", "hosts": {"a": {}, "mb": {"role": "middlebox"}, "b": {}},
        "switches": {"sw": {}},
        "links": [{"ends": ["a", "mb"]}, {"name": "neck", "ends": ["mb", "sw"], **neck},
                  {"ends": ["sw", "b"]}]})


def dirs(t: Topology) -> dict[str, shaping.Direction]:
    return {d.key: d for d in shaping.directions(t, addressing.plan(t))}


def shells(cmds) -> list[str]:
    return [f"{c.node}: {c.shell()}" for c in cmds]


def test_htb_above_one_gigabit_and_default_queue():
    d = dirs(topo(bw="2gbit"))["neck:mb>sw"]
    assert shells(shaping.setup_cmds(d, "userspace")) == [
        "mb: tc qdisc replace dev mb-eth1 root handle 1: htb default 1",
        "mb: tc class add dev mb-eth1 parent 1: classid 1:1 htb rate 2000000kbit ceil "
        "2000000kbit burst 250000 cburst 250000 quantum 200000",
        "mb: tc qdisc replace dev mb-eth1 parent 1:1 handle 10: bfifo limit 25000000",
    ]
    # The reverse direction leaves from the switch port, in the root namespace.
    back = dirs(topo(bw="2gbit"))["neck:sw>mb"]
    assert shaping.setup_cmds(back, "userspace")[0].node == "sw"


def test_netem_backend_puts_netem_under_htb():
    d = dirs(topo(bw="100mbit", delay="20ms", jitter="5ms", loss="1%", queue=100))["neck:mb>sw"]
    cmds = shells(shaping.setup_cmds(d, "netem"))
    assert cmds[-1].startswith("mb: tc qdisc replace dev mb-eth1 parent 1:1 handle 10: netem "
                               "delay 20000us 5000us loss 1%")
    assert "rate" not in cmds[-1]  # reordering jitter by default, as netem does
    d2 = dirs(topo(delay="20ms", jitter="5ms", jitter_reorder=False))["neck:mb>sw"]
    (only,) = shells(shaping.setup_cmds(d2, "netem"))
    assert "root handle 10: netem delay 20000us 5000us rate 100000000kbit" in only


def test_userspace_backend_queues_at_a_host_end():
    ds = dirs(topo(delay="20ms", loss="1%"))
    fwd, back = ds["neck:mb>sw"], ds["neck:sw>mb"]
    assert shells([shaping.delay_line_rule(fwd)]) == [
        "mb: iptables -w -t mangle -A POSTROUTING -o mb-eth1 -j NFQUEUE --queue-num 1"]
    assert shells([shaping.delay_line_rule(back)]) == [
        "mb: iptables -w -t mangle -A PREROUTING -i mb-eth1 -j NFQUEUE --queue-num 2"]
    # No netem in the userspace backend; no rate means no HTB either.
    assert shaping.setup_cmds(fwd, "userspace") == []
    lane = shaping.lane_spec(fwd, 7, "/proc/1/ns/net")
    assert (lane["name"], lane["queue"], lane["netns"]) == ("neck:mb>sw", 1, "/proc/1/ns/net")
    assert lane["settings"]["delay_us"] == 20000
    assert lane["settings"]["gso"] is False  # loss is set: per-packet granularity by default
    argv = shaping.delay_lines_argv("/r/lanes.json", "/r/stats.json", "/r/periods.jsonl")
    assert argv[:3] == (sys.executable, "-m", "testbed.linkemu")


def test_granularity_auto():
    assert shaping.emulator_config(Shaping(delay="50ms"))["gso"] is True
    assert shaping.emulator_config(Shaping(delay="50ms", jitter="1ms"))["gso"] is False
    assert shaping.emulator_config(Shaping(delay="50ms", loss=1, granularity="segment"))["gso"]


def test_direction_forward_shapes_one_way_only():
    ds = dirs(topo(bw="10mbit", delay="1ms", direction="forward"))
    assert "neck:mb>sw" in ds and "neck:sw>mb" not in ds


def test_run_time_change_commands():
    d = dirs(topo(bw="100mbit", delay="20ms"))["neck:mb>sw"]
    new = d.shaping.merged(Shaping(bw="50mbit"))
    cmd, leaf = shaping.change_cmds(d, new, "userspace")
    assert leaf.shell() == "tc qdisc change dev mb-eth1 parent 1:1 handle 10: bfifo limit 625000"
    assert cmd.shell().startswith("tc class change dev mb-eth1 parent 1: classid 1:1 htb "
                                  "rate 50000kbit")
    netem = shaping.change_cmds(d, d.shaping.merged(Shaping(delay="80ms")), "netem")
    assert any("qdisc change" in c.shell() and "delay 80000us" in c.shell() for c in netem)


def test_timeline_delay_links_get_a_delay_line_from_the_start():
    t = topo(bw="10mbit")
    plain = shaping.directions(t, addressing.plan(t))
    assert all(d.queue_num == 0 for d in plain)
    extra = shaping.directions(t, addressing.plan(t), {"neck"})
    assert {d.key for d in extra if d.queue_num} == {"neck:mb>sw", "neck:sw>mb"}
