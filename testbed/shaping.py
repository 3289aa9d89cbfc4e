"""Link shaping backends. Each returns the commands it would run, so tests check them.

A link has two directions; each shaped direction gets:
- rate and queue: HTB on the sending end's egress, with a pfifo/bfifo leaf (any rate,
  also above Mininet TCLink's 1000 Mbit/s cap);
- delay, jitter, loss: `netem` as the HTB leaf where the kernel has sch_netem, or the
  userspace delay line (testbed.linkemu) fed by an iptables NFQUEUE rule where it has not.

The userspace rule lives in a host namespace (never the root namespace): on the sending
host's POSTROUTING (egress) if that end is a host, else on the receiving host's
PREROUTING (ingress). The delay line therefore acts before the HTB queue in the
sending direction; for a fixed delay the two orders are equivalent (a delay line is a
FIFO offset), with jitter the reordering happens before the bottleneck queue.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, replace
from typing import Literal

from testbed.addressing import Plan
from testbed.topology_schema import Shaping, Topology
from testbed.units import format_rate_tc, format_time_tc

Backend = Literal["netem", "userspace"]
MTU_FRAME = 1514
DEFAULT_QUEUE_SECONDS = 0.1
"""Default queue: a bfifo holding 100 ms at the link rate (at least 64 KB)."""


@dataclass(frozen=True)
class Cmd:
    """A command run in `node`'s namespace (switches run in the root namespace)."""

    node: str
    argv: tuple[str, ...]

    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Direction:
    """One direction of a link: packets from `src` to `dst`."""

    link: str
    src: str
    dst: str
    src_intf: str
    dst_intf: str
    src_is_host: bool
    dst_is_host: bool
    shaping: Shaping
    queue_num: int
    """NFQUEUE number for the userspace backend (unique per namespace)."""

    @property
    def key(self) -> str:
        return f"{self.link}:{self.src}>{self.dst}"

    def delay_line_site(self) -> tuple[str, str, str]:
        """(node, chain, interface) of the NFQUEUE rule feeding the delay line."""
        if self.src_is_host:
            return self.src, "POSTROUTING", self.src_intf
        if self.dst_is_host:
            return self.dst, "PREROUTING", self.dst_intf
        raise ValueError(f"{self.key}: a delay line needs a host at one end")


def directions(
    topo: Topology, plan: Plan, extra_delay_links: set[str] | frozenset[str] = frozenset()
) -> list[Direction]:
    """Shaped directions of every link, in topology order.

    `extra_delay_links` names links that get a delay line even if they start without
    delay, because the timeline will give them one.
    """
    out: list[Direction] = []
    next_queue: dict[str, int] = {}
    for link in topo.links:
        a, b = link.ends
        ways = {"both": [(a, b), (b, a)], "forward": [(a, b)], "reverse": [(b, a)]}
        for src, dst in ways[link.direction]:
            d = Direction(
                link=link.link_name, src=src, dst=dst,
                src_intf=plan.intf(link.link_name, src).name,
                dst_intf=plan.intf(link.link_name, dst).name,
                src_is_host=src in topo.hosts, dst_is_host=dst in topo.hosts,
                shaping=link.shaping(), queue_num=0,
            )
            if d.shaping.needs_delay_line or link.link_name in extra_delay_links:
                site = d.delay_line_site()[0]
                num = next_queue.get(site, 0) + 1
                next_queue[site] = num
                d = replace(d, queue_num=num)
            out.append(d)
    return out


def _queue_leaf(s: Shaping) -> tuple[str, ...]:
    limit = s.queue_limit
    if limit is None:
        bps = s.bw_bps or 1e9
        return ("bfifo", "limit", str(max(65536, int(bps / 8 * DEFAULT_QUEUE_SECONDS))))
    kind, n = limit
    return ("pfifo", "limit", str(n)) if kind == "packets" else ("bfifo", "limit", str(n))


def htb_cmds(d: Direction, change: bool = False) -> list[Cmd]:
    """HTB root with one class at the link rate and a FIFO leaf of the configured size."""
    s = d.shaping
    bps = s.bw_bps
    if bps is None:
        return []
    rate = format_rate_tc(bps)
    burst = str(max(2 * MTU_FRAME, int(bps / 8 * 0.001)))
    quantum = str(min(200000, max(MTU_FRAME, int(bps / 8 / 1000))))
    dev = d.src_intf
    verb = "change" if change else "add"
    cls = ("tc", "class", verb, "dev", dev, "parent", "1:", "classid", "1:1", "htb",
           "rate", rate, "ceil", rate, "burst", burst, "cburst", burst, "quantum", quantum)
    if change:
        return [Cmd(d.src, cls)]
    return [
        Cmd(d.src, ("tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb",
                    "default", "1")),
        Cmd(d.src, cls),
    ]


def netem_args(s: Shaping) -> tuple[str, ...]:
    args: list[str] = []
    if s.delay_s or s.jitter_s:
        args += ["delay", format_time_tc(s.delay_s)]
        if s.jitter_s:
            args += [format_time_tc(s.jitter_s)]
    if s.loss_p:
        args += ["loss", f"{s.loss_p * 100:.6g}%"]
    if s.jitter_s and not s.reorders:
        # netem keeps packet order when it paces at a rate; a rate at or above the link's
        # never limits, it only keeps release times monotonic.
        args += ["rate", format_rate_tc(s.bw_bps or 100e9)]
    return tuple(args)


def leaf_cmds(d: Direction, backend: Backend, change: bool = False) -> list[Cmd]:
    """The queue under HTB (or at the root without a rate): FIFO, or netem for netem."""
    s = d.shaping
    has_htb = s.bw_bps is not None
    parent = ("parent", "1:1", "handle", "10:") if has_htb else ("root", "handle", "10:")
    if backend == "netem" and s.needs_delay_line:
        bdp_pkts = int((s.bw_bps or 1e9) / 8 * (s.delay_s + s.jitter_s) / MTU_FRAME)
        limit = _queue_leaf(s)
        pkts = limit[2] if limit[0] == "pfifo" else str(int(limit[2]) // MTU_FRAME)
        total = str(int(pkts) + bdp_pkts + 100)
        verb = "change" if change else "replace"
        return [Cmd(d.src, ("tc", "qdisc", verb, "dev", d.src_intf, *parent, "netem",
                            *netem_args(s), "limit", total))]
    if not has_htb and s.queue_limit is None:
        return []
    verb = "change" if change else "replace"
    return [Cmd(d.src, ("tc", "qdisc", verb, "dev", d.src_intf, *parent, *_queue_leaf(s)))]


def delay_line_rule(d: Direction, action: Literal["-A", "-D"] = "-A") -> Cmd:
    node, chain, intf = d.delay_line_site()
    flag = "-o" if chain == "POSTROUTING" else "-i"
    return Cmd(node, ("iptables", "-w", "-t", "mangle", action, chain, flag, intf,
                      "-j", "NFQUEUE", "--queue-num", str(d.queue_num)))


def emulator_config(s: Shaping) -> dict[str, object]:
    """The delay line's settings (also what a run-time change sends it)."""
    granularity = s.granularity or "auto"
    if granularity == "auto":
        granularity = "packet" if (s.jitter_s > 0 or s.loss_p > 0) else "segment"
    return {
        "delay_us": round(s.delay_s * 1e6),
        "jitter_us": round(s.jitter_s * 1e6),
        "loss": s.loss_p,
        "reorder": s.reorders,
        "gso": granularity == "segment",
    }


def lane_spec(d: Direction, seed: int, netns: str | None) -> dict[str, object]:
    """One lane of the delay-line process: the direction's queue in its site's namespace."""
    return {"name": d.key, "queue": d.queue_num, "netns": netns, "seed": seed,
            "settings": emulator_config(d.shaping)}


def delay_lines_argv(config: str, stats: str, periods: str) -> tuple[str, ...]:
    """The one delay-line process serving every lane of a run (it runs in the root
    namespace and binds each lane's queue inside that lane's namespace)."""
    return (sys.executable, "-m", "testbed.linkemu", "--config", config, "--stats", stats,
            "--periods", periods)


def setup_cmds(d: Direction, backend: Backend) -> list[Cmd]:
    """Commands shaping one direction at start (the delay line process is separate)."""
    return htb_cmds(d) + leaf_cmds(d, backend)


def change_cmds(d: Direction, new: Shaping, backend: Backend) -> list[Cmd]:
    """tc commands for a run-time change of `d` to shaping `new`.

    Delay, jitter and loss changes on the userspace backend go to the delay-line
    process instead (see testbed.linkemu's control protocol).
    """
    nd = replace(d, shaping=new)
    cmds: list[Cmd] = []
    if new.bw_bps is not None and d.shaping.bw_bps is not None:
        cmds += htb_cmds(nd, change=True)
    elif new.bw_bps is not None:
        cmds += htb_cmds(nd) + leaf_cmds(nd, backend)
        return cmds
    if backend == "netem" and new.needs_delay_line:
        cmds += leaf_cmds(nd, backend, change=d.shaping.needs_delay_line)
    elif new.queue_limit != d.shaping.queue_limit or new.bw_bps != d.shaping.bw_bps:
        cmds += leaf_cmds(nd, backend, change=True)
    return cmds
