"""Userspace link emulator: delay lines with jitter and loss behind NFQUEUE, one process.

For kernels without sch_netem. An iptables rule hands each shaped direction's packets
to an NFQUEUE in the namespace where the rule sits; ONE process serves all of a run's
queues (a "lane" each, with its own settings and counters), so the cost grows with
packets, not with links. The per-packet loop (receive, decide, schedule, verdict) is
compiled: `abn._nfqloop` (see its C source). This module keeps the policy around it:
settings and their checks, the control channel, counters streamed to disk every period,
and `Scheduler`, the executable reference of the scheduling rules that the compiled
scheduler is tested against (same random stream, same results).

Granularity: with `gso` the kernel queues whole GSO segments (NFQUEUE's F_GSO flag),
~30x fewer packets at high rates, but one drop or reorder hits a whole segment; without
it the kernel splits them and each MTU packet gets its own fate (netem's semantics).

Reordering: with `reorder` each packet draws its own delay and may overtake others, as
netem's jitter does; without it a packet never leaves before the one queued ahead of it.

Run as `python -m testbed.linkemu --config lanes.json`; the config lists the lanes
(name, netns path, queue number, settings, seed) and optionally `cpus`, the CPUs to pin
one loop thread each to. Control: one JSON object per line on
stdin changes one lane's settings at run time, e.g. {"link": "path:mb>h2", "delay_us":
50000, "jitter_us": 0, "loss": 0.01, "reorder": true, "gso": false}; a bad line is
refused whole and counted. End of stdin or SIGTERM releases every held packet and exits,
writing the counters to the stats file. Every `period_s` one record per lane and one for
the process go to the periods file (JSON lines, flushed as written):
  {"kind": "link", "unix", "period_s", "link", "received", "released", "dropped",
   "late_over_1ms", "late_max_us", "held", "overflow"}      (counts for that period)
  {"kind": "process", "unix", "period_s", "cpu", "pid"}      (cores used in the period)
`overflow` counts packets the kernel had to pass unshaped (queue or socket full: their
ids never reached us) or that found no room here.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from abn.periodic import run_periodic

PERIOD_S = 1.0
LATE_NS = 1_000_000


@dataclass
class Settings:
    delay_us: int = 0
    jitter_us: int = 0
    loss: float = 0.0
    reorder: bool = True
    gso: bool = True

    def update(self, data: dict[str, object]) -> None:
        """Apply a change; a bad change raises and leaves the settings as they were."""
        new = Settings(**asdict(self))
        for key, value in data.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown setting {key!r}")
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError(f"setting {key!r}: expected a number or bool, got {value!r}")
            setattr(new, key, type(getattr(self, key))(value))  # type: ignore[operator]
        if new.delay_us < 0 or new.jitter_us < 0 or not 0 <= new.loss <= 1:
            raise ValueError(f"invalid settings {asdict(new)}")
        for key in data:
            setattr(self, key, getattr(new, key))


class SplitMix64:
    """The random stream both schedulers draw from (so they can be compared exactly)."""

    MASK = (1 << 64) - 1

    def __init__(self, seed: int) -> None:
        self.state = seed & self.MASK

    def uniform(self) -> float:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        z ^= z >> 31
        return (z >> 11) * 2.0**-53


class Scheduler:
    """Each packet's fate and release time, and the order of releases; no I/O.

    Times are integer nanoseconds. Ordered traffic (fixed delay, or `reorder` off) sits
    in a FIFO whose release times never decrease, so one batch verdict can release a
    run of packets. With reordering jitter, packets sit in a heap keyed by (release
    time, arrival). `last_release` is the latest release time handed out in either
    mode, so switching to ordered mode at run time never lets a new packet overtake one
    still held (new packets join the heap until it has drained). A packet's lateness is
    the time `due` is called minus its release time.
    """

    def __init__(self, seed: int = 1, **settings: Any) -> None:
        self.settings = Settings()
        self.settings.update(settings)
        self.rng = SplitMix64(seed)
        self.fifo: deque[tuple[int, int, int]] = deque()
        self.heap: list[tuple[int, int, int]] = []
        self.last_release = 0
        self.seq = 0
        self.c = {"received": 0, "dropped": 0, "released": 0, "late_over_1ms": 0,
                  "late_max_us": 0, "max_held": 0}

    def configure(self, **settings: Any) -> None:
        self.settings.update(settings)

    @property
    def ordered(self) -> bool:
        s = self.settings
        return s.jitter_us == 0 or not s.reorder

    def admit(self, pid: int, now: int) -> bool:
        """Decide packet `pid`'s fate on arrival at `now` (ns): False means drop it now."""
        c, s = self.c, self.settings
        c["received"] += 1
        if s.loss > 0 and self.rng.uniform() < s.loss:
            c["dropped"] += 1
            return False
        delay = s.delay_us * 1000
        if s.jitter_us:
            u = self.rng.uniform()
            delay = max(0, delay + math.floor((2.0 * u - 1.0) * (s.jitter_us * 1000) + 0.5))
        item = (now + delay, self.seq, pid)
        self.seq += 1
        if self.ordered:
            item = (max(item[0], self.last_release), item[1], pid)
            if self.heap:
                heapq.heappush(self.heap, item)
            else:
                self.fifo.append(item)
        else:
            heapq.heappush(self.heap, item)
        self.last_release = max(self.last_release, item[0])
        c["max_held"] = max(c["max_held"], len(self.fifo) + len(self.heap))
        return True

    def due(self, now: int) -> tuple[int | None, list[int]]:
        """Packets to release at `now`: (highest id of a FIFO run released with one batch
        verdict, or None; ids to release one by one, in release order)."""
        batch = None
        while self.fifo and self.fifo[0][0] <= now:
            t, _, batch = self.fifo.popleft()
            self._released(now - t)
        singles = []
        while self.heap and self.heap[0][0] <= now:
            t, _, pid = heapq.heappop(self.heap)
            self._released(now - t)
            singles.append(pid)
        return batch, singles

    def _released(self, late: int) -> None:
        c = self.c
        c["released"] += 1
        c["late_max_us"] = max(c["late_max_us"], late // 1000)
        if late > LATE_NS:
            c["late_over_1ms"] += 1

    def next_release(self) -> int | None:
        times = [q[0][0] for q in (self.fifo, self.heap) if q]
        return min(times) if times else None

    def counters(self) -> dict[str, int]:
        return dict(self.c)


def compiled() -> Any:
    """The compiled loop module; raises with how to build it."""
    try:
        from abn import _nfqloop
    except ImportError as exc:
        raise RuntimeError(
            f"the compiled NFQUEUE loop abn._nfqloop is missing ({exc}); run ./setup.sh "
            "(it needs gcc, python3-dev, libnetfilter-queue-dev and libmnl-dev)") from exc
    return _nfqloop


@dataclass(frozen=True)
class LaneSpec:
    """One shaped direction served by the process."""

    name: str
    queue: int
    netns: str | None
    settings: dict[str, Any]
    seed: int

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LaneSpec:
        return LaneSpec(str(d["name"]), int(d["queue"]), d.get("netns"), dict(d["settings"]),
                        int(d.get("seed", 1)))


PERIOD_FIELDS = ("received", "released", "dropped", "late_over_1ms", "overflow")


class DelayLines:
    """The compiled loop with its lanes, the control channel and the period records."""

    def __init__(self, lanes: list[LaneSpec], control_fd: int | None,
                 periods: IO[str] | None, period_s: float = PERIOD_S,
                 cpus: list[int] | None = None) -> None:
        nfq = compiled()
        # `cpus`: one loop thread pinned to each (the testbed steers the packets' receive
        # processing to the other cores, see testbed.network); without it, one unpinned
        # thread per core, since a release then runs the packet's path downstream in the
        # releasing thread and a long flush on one lane must not hold up the others.
        self.cpus = list(cpus or [])
        n = len(self.cpus) or (os.cpu_count() or 1)
        self.loops = [nfq.Loop() for _ in range(max(1, min(n, len(lanes) or 1)))]
        self.control_fd = control_fd
        self.periods = periods
        self.period_s = period_s
        self.names: dict[str, tuple[Any, int]] = {}
        self.specs: dict[str, LaneSpec] = {}
        self.settings: dict[str, Settings] = {}
        self.control_errors = 0
        for lane in lanes:
            if lane.name in self.names:
                raise ValueError(f"two lanes named {lane.name!r}")
            st = Settings()
            st.update(lane.settings)
            fd = os.open(lane.netns, os.O_RDONLY) if lane.netns else -1
            loop = self.loops[len(self.names) % len(self.loops)]
            try:
                idx = loop.add_lane(lane.queue, asdict(st), netns_fd=fd, seed=lane.seed)
            except OSError as exc:
                raise RuntimeError(f"lane {lane.name} (queue {lane.queue} in "
                                   f"{lane.netns or 'this namespace'}): {exc}") from exc
            finally:
                if fd >= 0:
                    os.close(fd)
            self.names[lane.name] = (loop, idx)
            self.specs[lane.name] = lane
            self.settings[lane.name] = st
        self._last = {name: lp.stats(i, True) for name, (lp, i) in self.names.items()}
        self._cpu = _cpu_s()
        self._t = time.monotonic()
        self._pending = b""

    def reconfigure(self, data: dict[str, Any]) -> None:
        """Change one lane's settings: all of the change or none of it."""
        if not isinstance(data, dict) or "link" not in data:
            raise ValueError("expected {\"link\": NAME, setting: value, ...}")
        change = dict(data)
        name = change.pop("link")
        if name not in self.names:
            raise ValueError(f"no lane {name!r}; lanes: {sorted(self.names)}")
        new = Settings(**asdict(self.settings[name]))
        new.update(change)
        loop, idx = self.names[name]
        loop.configure(idx, **asdict(new))
        self.settings[name] = new

    def read_control(self) -> bool:
        """Handle what arrived on the control fd; False at end of input."""
        assert self.control_fd is not None
        chunk = os.read(self.control_fd, 65536)
        if not chunk:
            return False
        self._pending += chunk
        while b"\n" in self._pending:
            raw, self._pending = self._pending.split(b"\n", 1)
            if not raw.strip():
                continue
            try:
                self.reconfigure(json.loads(raw))
            except (ValueError, TypeError) as exc:
                self.control_errors += 1
                print(f"linkemu: bad control message {raw[:200]!r}: {exc}", file=sys.stderr,
                      flush=True)
        if len(self._pending) > 65536:  # a bound on what a runaway writer can make us hold
            self.control_errors += 1
            self._pending = b""
        return True

    def serve(self, rt_priority: int = 20) -> None:
        """Run the compiled loop in its own thread; this thread takes control input and
        writes the period records, so neither ever delays a release."""
        for i, loop in enumerate(self.loops):
            loop.start(rt_priority, self.cpus[i] if self.cpus else -1)
        try:
            run_periodic(self.period_s, self.write_period, self.control_fd, self.read_control)
        finally:
            for loop in self.loops:
                loop.stop()

    def write_period(self) -> None:
        now, cpu = time.monotonic(), _cpu_s()
        span = max(1e-9, now - self._t)
        unix = round(time.time(), 3)
        lines = []
        for name, (loop, i) in self.names.items():
            st = loop.stats(i, True)
            prev = self._last[name]
            rec = {"kind": "link", "unix": unix, "period_s": round(span, 3), "link": name}
            rec.update({k: st[k] - prev[k] for k in PERIOD_FIELDS})
            rec["late_max_us"] = st["period_late_max_us"]
            rec["held"] = st["held"]
            lines.append(rec)
            self._last[name] = st
        lines.append({"kind": "process", "unix": unix, "period_s": round(span, 3),
                      "cpu": round((cpu - self._cpu) / span, 3), "pid": os.getpid()})
        self._t, self._cpu = now, cpu
        if self.periods is not None:
            self.periods.write("".join(json.dumps(r) + "\n" for r in lines))
            self.periods.flush()

    def close(self) -> None:
        for loop in self.loops:
            loop.close()

    def summary(self) -> dict[str, Any]:
        links = {}
        for name, (loop, i) in self.names.items():
            st = loop.stats(i)
            spec = self.specs[name]
            settings = {k: st.pop(k) for k in ("delay_us", "jitter_us", "loss", "reorder", "gso")}
            st.pop("period_late_max_us")
            links[name] = {"queue": spec.queue, "netns": spec.netns, "settings": settings,
                           "counters": st}
        return {"links": links, "timing": [loop.timing() for loop in self.loops],
                "control_errors": self.control_errors,
                "late_hist_edges_us": compiled().LATE_HIST_EDGES_US}


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


RT_PRIORITY = 20
"""The loop thread runs SCHED_FIFO at this priority so wake-ups are on time on a busy
machine: a delay line sleeping in the kernel otherwise waits for a CPU when its timer
fires (measured here with two cores loaded: releases up to 8 ms late). The loop blocks
between releases, and the kernel's RT throttling caps an RT task at 95% of a core."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.linkemu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="JSON: {\"lanes\": [...]}")
    ap.add_argument("--stats", help="write counters as JSON here on exit")
    ap.add_argument("--periods", help="append period records (JSON lines) here")
    ap.add_argument("--period", type=float, default=PERIOD_S, help="seconds per record")
    ap.add_argument("--no-control", action="store_true", help="ignore stdin")
    ap.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                    help="SCHED_FIFO scheduling for on-time releases (default on)")
    args = ap.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text())
    lanes = [LaneSpec.from_dict(d) for d in cfg["lanes"]]
    periods = open(args.periods, "a") if args.periods else None
    lines = DelayLines(lanes, None if args.no_control else sys.stdin.fileno(), periods,
                       args.period, [int(c) for c in cfg.get("cpus", [])])

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    print(f"linkemu: {len(lanes)} lanes ready", flush=True)
    try:
        lines.serve(RT_PRIORITY if args.realtime else 0)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        lines.write_period()
        lines.close()
        result = lines.summary()
        sched = "fifo" if all(t["realtime"] for t in result["timing"]) else "normal"
        result.update({"cpu_s": round(_cpu_s(), 3), "scheduling": sched, "pid": os.getpid()})
        if args.stats:
            tmp = args.stats + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(result, fh, indent=1)
            os.replace(tmp, args.stats)
        if periods is not None:
            periods.close()
        print(json.dumps({"cpu_s": result["cpu_s"], "lanes": len(lanes)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
