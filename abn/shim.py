"""The ABN middlebox shim: every period T, each flow's share of the link, written into the
pure ACKs that flow back to its sender.

The per-packet half runs compiled (an ABN lane of `abn._nfqloop`: every forwarded TCP
packet is counted per flow, every pure ACK gets its data flow's rate written in its ABN
option). This process is the other half, at period T: it reads what the lane counted,
keeps the paper's flow table (`abn.flows.FlowTable`: timers, data seen, expiry), computes
C_r (capacity minus non-TCP and control traffic, the paper's equation 1), asks the
allocator (Algorithm 1 by default) for each flow's rate and hands the rates back to the
lane. One JSON line per period goes to the records file as it happens.

Fail-open: the NFQUEUE rule carries --queue-bypass and the queue F_FAIL_OPEN, so traffic
passes unchanged when the shim is absent, behind or dead; a packet is never dropped by it.

    python -m abn.shim --queue 7 --capacity-bps 40e6 [--link-intf mb-eth1] [--period 0.1]
        [--allocator average] [--idle 1.0] [--records shim.jsonl] [--iptables]
`--link-intf` names the governed link's interface: only packets leaving on it count
against C (data, non-TCP, ACKs of flows going that way); the ACKs returning from it are
only rewritten. Without it every forwarded TCP packet counts, whichever way it goes.
`--queue-drain S` (with --link-intf) reads the link's qdisc backlog every period and takes
backlog / S off C_r, so the senders drain a standing queue in about S seconds.
`--iptables` installs (and on exit removes) the FORWARD rules in this namespace itself:
with --link-intf, everything leaving on it and TCP arriving from it; else all TCP.
End of stdin or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from abn.allocators import Allocator, get_allocator, residual_capacity
from abn.flows import FlowKey, FlowTable, FlowView
from abn.hints import DeclarationListener
from abn.options import kbps_from_bps
from abn.periodic import run_periodic


@dataclass(frozen=True)
class ShimConfig:
    queue: int
    capacity_bps: float
    """C: the capacity of the link the shim governs (bit/s on the wire)."""
    period_s: float = 0.1
    """T: how often shares are recomputed (the paper's slot)."""
    allocator: str = "average"
    idle_s: float = 1.0
    """A flow whose sender sent nothing for this long is done."""
    max_flows: int = 4096
    link_intf: str | None = None
    """The governed link's interface on this host (None: count both directions)."""
    queue_drain_s: float = 0.0
    """With link_intf: each period, C_r loses backlog / queue_drain_s, so a standing
    queue on the link drains in about that long (0: the queue is not read)."""
    hints_port: int | None = None
    """UDP port on which senders declare flows' sizes and deadlines (abn.hints); None:
    no declarations, every flow is only observed."""
    policy: str | None = None
    """The trained policy directory of allocator `dqn` (abn.dqn_policy)."""
    guaranteed: float = 0.0
    """Fraction of C_r every flow that sent data gets in equal shares before the
    allocator divides the rest (`with_floor`); 0: the allocator alone decides."""

    def __post_init__(self) -> None:
        if not self.capacity_bps > 0:
            raise ValueError(f"capacity must be positive, got {self.capacity_bps} bit/s")
        if not 0.001 <= self.period_s <= 10:
            raise ValueError(f"period must be 1 ms..10 s, got {self.period_s} s")
        if self.queue_drain_s < 0 or (self.queue_drain_s and self.link_intf is None):
            raise ValueError("queue drain needs the link's interface (--link-intf) and a "
                             f"time >= 0, got {self.queue_drain_s} s")
        if not 0 <= self.guaranteed < 1:
            raise ValueError(f"guaranteed share must be in [0, 1), got {self.guaranteed}")
        if self.hints_port is not None and not 1 <= self.hints_port <= 65535:
            raise ValueError(f"hints port must be 1..65535, got {self.hints_port}")
        if not self.idle_s >= self.period_s:
            raise ValueError(f"idle timeout {self.idle_s} s is shorter than a period")
        if self.allocator == "dqn":
            if self.policy is None:
                raise ValueError("allocator dqn needs a trained policy (--policy DIR)")
        else:
            get_allocator(self.allocator)  # an unknown name fails here, naming the known ones


class Shim:
    """The lane, the flow table and the allocator, stepped once per period."""

    def __init__(self, cfg: ShimConfig, records: IO[str] | None) -> None:
        from abn import _nfqloop

        self.cfg = cfg
        self.records = records
        self.table = FlowTable(cfg.max_flows)
        self.allocator = make_allocator(cfg)
        self.loop = _nfqloop.Loop()
        ifindex = None
        if cfg.link_intf is not None:
            try:
                ifindex = socket.if_nametoindex(cfg.link_intf)
            except OSError:
                raise ValueError(f"no interface {cfg.link_intf!r} in this namespace "
                                 "(--link-intf)") from None
        self.backlog = QueueBacklog(ifindex) if cfg.queue_drain_s and ifindex else None
        self.hints = DeclarationListener(cfg.hints_port) if cfg.hints_port else None
        self.lane = self.loop.add_lane(cfg.queue, {"delay_us": 0},
                                       abn_max_flows=cfg.max_flows, abn_out_ifindex=ifindex)

    def step(self) -> dict[str, Any]:
        """One period: read the lane's counts, update the table, allocate, hand back."""
        cfg = self.cfg
        snap = self.loop.abn_take(self.lane, cfg.idle_s)
        now = snap["now_ns"] / 1e9
        for f in snap["flows"]:
            if f["packets"]:
                self.table.observe(FlowKey(*f["key"]), now, f["payload"], False,
                                   wire_bytes=f["wire"])
        self.table.expire(now, cfg.idle_s)
        self.table.take_period()
        declared = self.hints.drain() if self.hints is not None else []
        for d in declared:
            self.table.register(d.key, now, d.size_bytes, d.deadline_slots(cfg.period_s))
        c_r = residual_capacity(cfg.capacity_bps, snap["non_tcp_bytes"] * 8 / cfg.period_s,
                                snap["control_bytes"] * 8 / cfg.period_s)
        backlog = self.backlog.bytes() if self.backlog is not None else None
        if backlog:  # drain what stands in the link's queue in about queue_drain_s
            c_r = max(0.0, c_r - backlog * 8 / cfg.queue_drain_s)
        # The flows that compete: those that sent data in this period. The paper: a flow
        # with no data in a period has been processed and leaves the count; its last
        # rate stays with its sender. (SYN-ACK directions and idle control connections
        # would otherwise take equal shares they never use.)
        active = [v for v in self.table.views() if v.last_period_bytes > 0]
        rates = with_floor(self.allocator, active, c_r, cfg.period_s, cfg.guaranteed)
        self.table.set_rates(rates)
        missing = self.loop.abn_set_rates(
            self.lane, {(k.src, k.sport, k.dst, k.dport): kbps_from_bps(r)
                        for k, r in rates.items()})
        rec = {"t": round(time.time(), 4), "C_bps": cfg.capacity_bps, "C_r_bps": round(c_r),
               "non_tcp_bytes": snap["non_tcp_bytes"], "control_bytes": snap["control_bytes"],
               "backlog_bytes": backlog,
               "untracked_packets": snap["untracked_packets"], "no_rate": snap["no_rate"],
               "missing": missing, "declared": len(declared),
               "action": getattr(self.allocator, "last_action", None),
               "flows": [{"key": list(k[:4]), "rate_bps": round(r)} for k, r in rates.items()]}
        if self.hints is not None and self.hints.refused:
            rec["declarations_refused"] = self.hints.refused
            rec["last_refusal"] = self.hints.last_error
        if self.records is not None:
            self.records.write(json.dumps(rec) + "\n")
            self.records.flush()
        return rec

    def run(self, control_fd: int | None) -> None:
        """Step every period until end of input on `control_fd` (or forever without)."""
        self.loop.start(20)
        try:
            run_periodic(self.cfg.period_s, self.step, control_fd,
                         None if control_fd is None else lambda: bool(os.read(control_fd, 4096)))
        finally:
            self.loop.stop()

    def stats(self) -> dict[str, Any]:
        return self.loop.stats(self.lane)

    def close(self) -> None:
        self.loop.close()
        if self.hints is not None:
            self.hints.close()
        if self.backlog is not None:
            self.backlog.close()


def with_floor(allocator: Allocator, flows: list[FlowView], c_r: float, period_s: float,
               guaranteed: float) -> dict[FlowKey, float]:
    """Each flow's equal part of `guaranteed` x C_r plus what the allocator gives it of
    the rest; the sum stays within C_r.

    Why: an allocator that gives a flow exactly what its remaining bytes need (EDF and
    the DQN's templates) works on what the middlebox has seen; it cannot count the
    sender's retransmissions, header bytes, or the period the notification takes to
    arrive, so a flow near its end is notified ever smaller rates (or 0, which stalls
    its sender until the rate goes stale) and finishes late. A floor keeps every
    sending flow moving; Average is unchanged by it."""
    if not flows or guaranteed <= 0:
        return allocator.allocate(flows, c_r, period_s)
    base = guaranteed * c_r / len(flows)
    rest = allocator.allocate(flows, c_r - base * len(flows), period_s)
    return {f.key: base + rest.get(f.key, 0.0) for f in flows}


def make_allocator(cfg: ShimConfig) -> Allocator:
    """The configured allocator; `dqn` loads its policy (numpy only, no TensorFlow)."""
    if cfg.allocator == "dqn":
        from abn.dqn_policy import DQNAllocator

        assert cfg.policy is not None
        return DQNAllocator(cfg.policy)
    return get_allocator(cfg.allocator)


class QueueBacklog:
    """Bytes waiting in the root qdisc of one interface (netlink, via pyroute2): the
    queue status the paper's middlebox reads."""

    def __init__(self, ifindex: int) -> None:
        from pyroute2 import IPRoute

        self.ifindex = ifindex
        self.ipr = IPRoute()

    def bytes(self) -> int:
        for q in self.ipr.get_qdiscs(self.ifindex):
            if q["parent"] == 0xFFFFFFFF:  # TC_H_ROOT: its backlog holds its classes'
                stats = q.get_attr("TCA_STATS2")
                queue = stats.get_attr("TCA_STATS_QUEUE") if stats is not None else None
                if queue is not None:
                    return int(queue["backlog"])
                old = q.get_attr("TCA_STATS")
                return int(old["backlog"]) if old else 0
        return 0

    def close(self) -> None:
        self.ipr.close()


def forward_rules(queue: int, action: str, link_intf: str | None = None) -> list[list[str]]:
    """The FORWARD rules feeding the shim's queue; fail-open when no one listens.

    With the governed link's interface: everything that leaves on it (what shares its
    capacity, non-TCP included) and the TCP arriving from it (the ACKs to rewrite);
    traffic that does not cross the link is not queued at all."""
    tail = ["-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
    base = ["iptables", "-w", "-t", "mangle", action, "FORWARD"]
    if link_intf is None:
        return [[*base, "-p", "tcp", *tail]]
    return [[*base, "-o", link_intf, *tail], [*base, "-i", link_intf, "-p", "tcp", *tail]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m abn.shim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queue", type=int, required=True)
    ap.add_argument("--capacity-bps", type=float, required=True)
    ap.add_argument("--period", type=float, default=0.1)
    ap.add_argument("--allocator", default="average")
    ap.add_argument("--idle", type=float, default=1.0)
    ap.add_argument("--max-flows", type=int, default=4096)
    ap.add_argument("--link-intf", help="the governed link's interface on this host")
    ap.add_argument("--queue-drain", type=float, default=0.0,
                    help="seconds to drain the link's standing queue in (0: ignore it)")
    ap.add_argument("--hints-port", type=int,
                    help="UDP port for flow declarations (size, deadline; abn.hints)")
    ap.add_argument("--policy", help="trained policy directory (allocator dqn)")
    ap.add_argument("--guaranteed", type=float, default=0.0,
                    help="fraction of C_r shared equally before the allocator (0..1)")
    ap.add_argument("--records", help="append one JSON line per period here")
    ap.add_argument("--iptables", action="store_true", help="install the FORWARD rule too")
    ap.add_argument("--no-control", action="store_true", help="ignore stdin")
    args = ap.parse_args(argv)
    try:
        cfg = ShimConfig(args.queue, args.capacity_bps, args.period, args.allocator, args.idle,
                         args.max_flows, args.link_intf, args.queue_drain, args.hints_port,
                         args.policy, args.guaranteed)
        shim = Shim(cfg, None)
    except ValueError as exc:
        print(f"abn.shim: {exc}", file=sys.stderr)
        return 2
    records = open(args.records, "a") if args.records else None
    shim.records = records

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    installed: list[list[str]] = []
    if args.iptables:
        for rule in forward_rules(cfg.queue, "-A", cfg.link_intf):
            p = subprocess.run(rule, capture_output=True, text=True)
            if p.returncode != 0:
                for done in reversed(installed):
                    subprocess.run([*done[:4], "-D", *done[5:]])
                shim.close()
                print(f"abn.shim: {' '.join(rule)}: {p.stderr.strip()}", file=sys.stderr)
                return 1
            installed.append(rule)
    print(f"abn.shim: queue {cfg.queue}, link {cfg.link_intf or '(both directions)'}, "
          f"C={cfg.capacity_bps:.0f} bit/s, "
          f"T={cfg.period_s} s, allocator {cfg.allocator}: ready", flush=True)
    try:
        shim.run(None if args.no_control else sys.stdin.fileno())
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for rule in reversed(installed):
            subprocess.run([*rule[:4], "-D", *rule[5:]])
        stats = shim.stats()
        t = os.times()
        stats["cpu_s"] = round(t.user + t.system, 3)
        stats["timing"] = shim.loop.timing()
        shim.close()
        if records is not None:
            records.close()
        print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
