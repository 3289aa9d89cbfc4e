"""Did the emulator keep up? Host CPU samples and delay-line periods -> a run's health.

A run that finished has not necessarily measured the system: with the host CPU saturated
or the userspace delay line releasing packets late, the numbers describe the emulator.
The runner samples the host CPU while the network is up (`HostCpuSampler`), the delay
line streams per-period counters, and `judge` reads both from the run folder after
teardown (like analysis, it needs nothing live), saying whether to trust the run, when
not, and why.

Statuses: "unreliable" is positive evidence that the emulator fell behind; "unknown"
means no such evidence but a record needed to judge is missing or damaged (no host CPU
samples, a delay line that wrote no periods, unreadable lines); "ok" means the records
are complete and nothing crossed a threshold.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

log = logging.getLogger("chaintwin.health")

HOST_CPU = "health/host_cpu.jsonl"
LINK_PERIODS = "linkemu/periods.jsonl"
SAMPLE_S = 0.5
ADJACENT_S = 0.1
"""Intervals this close count as adjacent when merging: the writers' timers drift."""

Status = Literal["ok", "unreliable", "unknown"]
Kind = Literal["host_cpu", "late_release", "line_cpu", "queue_overflow"]
WAKE_PROBES = 10
"""1 ms sleeps the sampler times per interval (about 12 ms of an idle thread per 0.5 s)."""


def wake_probe(count: int = WAKE_PROBES, sleep_s: float = 0.001) -> tuple[int, int, float]:
    """(sleeps, how many returned more than 1 ms late, the latest in ms): how late this
    host wakes an ordinary process. The delay line's own lateness misses that: it runs
    real-time and spins, while ping, the validators and the kernel's packet path on the
    other core wake as ordinary work does. (Session 9: a CI run's 40 ms pings came back
    0.2-5.8 ms late, mean +1.4 ms, on an idle host whose delay lines released on time;
    1 ms sleeps on this VM return > 2.7 ms late 1% of the time, up to 32 ms.)"""
    late, worst = 0, 0.0
    for _ in range(count):
        t = time.monotonic()
        time.sleep(sleep_s)
        over = (time.monotonic() - t - sleep_s) * 1000.0
        late += over > 1.0
        worst = max(worst, over)
    return count, late, worst


def read_proc_stat(path: Path = Path("/proc/stat")) -> dict[int, tuple[int, int]]:
    """cpu index -> (total, idle) jiffies; idle counts iowait, total leaves out guest time
    (the kernel already counts it in user/nice)."""
    out: dict[int, tuple[int, int]] = {}
    for line in path.read_text().splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        v = [int(x) for x in fields[:8]]
        out[int(name[3:])] = (sum(v), v[3] + (v[4] if len(v) > 4 else 0))
    if not out:
        raise ValueError(f"{path}: no cpuN lines")
    return out


def busy_between(prev: dict[int, tuple[int, int]],
                 cur: dict[int, tuple[int, int]]) -> tuple[float, list[float], int]:
    """(busy fraction of all cores, busy fraction per cpu, jiffies elapsed) between two
    readings; cpus that came or went in between are left out."""
    per, busy_sum, total_sum = [], 0, 0
    for cpu in sorted(cur):
        if cpu not in prev:
            continue
        total = cur[cpu][0] - prev[cpu][0]
        busy = total - (cur[cpu][1] - prev[cpu][1])
        per.append(busy / total if total > 0 else 0.0)
        busy_sum += busy
        total_sum += total
    return (busy_sum / total_sum if total_sum > 0 else 0.0), per, total_sum


class HostCpuSampler:
    """Samples /proc/stat in a daemon thread and appends one flushed JSON line per
    interval to `<run_dir>/health/host_cpu.jsonl`, so a killed run keeps every sample
    taken; a daemon so a stuck sampler can never keep the process alive."""

    def __init__(self, run_dir: Path, interval_s: float = SAMPLE_S,
                 stat_path: Path = Path("/proc/stat")) -> None:
        self.path = Path(run_dir) / HOST_CPU
        self.interval_s = interval_s
        self.stat_path = stat_path
        self.error: str | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Opens the file and takes the first reading here, so a bad folder or a missing
        /proc/stat raises in the caller instead of dying quietly in the thread."""
        if self._thread is not None:
            raise RuntimeError("HostCpuSampler already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a", encoding="utf-8")
        try:
            first = read_proc_stat(self.stat_path)
        except BaseException:
            fh.close()
            raise
        self._thread = threading.Thread(target=self._loop, args=(fh, first),
                                        name="host-cpu-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends sampling with one last (partial) interval and joins; safe to call twice or
        before start."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5 + 2 * self.interval_s)
        if self._thread.is_alive():
            log.warning("host CPU sampler did not stop within %.1f s", 5 + 2 * self.interval_s)

    def __enter__(self) -> HostCpuSampler:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _loop(self, fh: Any, prev: dict[int, tuple[int, int]]) -> None:
        nxt = time.monotonic() + self.interval_s
        try:
            while not self._stop.wait(max(0.0, nxt - time.monotonic())):
                nxt += self.interval_s
                prev = self._sample(fh, prev, last=False)
            self._sample(fh, prev, last=True)
        except (OSError, ValueError) as exc:
            self.error = f"host CPU sampling stopped: {exc}"
            log.warning("%s", self.error)
        finally:
            fh.close()

    def _sample(self, fh: Any, prev: dict[int, tuple[int, int]],
                last: bool) -> dict[int, tuple[int, int]]:
        probes, late, worst = wake_probe() if not last else (0, 0, 0.0)
        cur = read_proc_stat(self.stat_path)
        busy, per, jiffies = busy_between(prev, cur)
        if last and jiffies == 0:  # stopped within one clock tick: nothing was measured
            return cur
        rec = {"unix": time.time(), "busy": round(busy, 4),
               "per_cpu": [round(x, 4) for x in per], "load1": os.getloadavg()[0],
               "wake_probes": probes, "wake_late_1ms": late,
               "wake_late_max_ms": round(worst, 3)}
        fh.write(json.dumps(rec) + "\n")
        fh.flush()
        self.samples += 1
        return cur


@dataclass(frozen=True)
class Thresholds:
    """When the emulator counts as having fallen behind. The defaults are meant to let
    scheduler noise through (a single late ping) and catch what distorts a measurement
    (a sustained late fraction, a stall of the delay line, a saturated host)."""

    late_ms: float = 1.0
    """A packet released more than this after its due time is late. The delay line counts
    only against 1 ms (`late_over_1ms`), so any other value is refused."""
    late_fraction: float = 0.01
    """A link over the whole run is late when more than this fraction of its released
    packets were late."""
    period_late_fraction: float = 0.05
    """A single period (1 s) of a link is late when more than this fraction of its packets
    were. Bursts (a block broadcast to every validator) make a few packets of a second
    1-5 ms late even on an idle host, because each release runs the packet's path
    downstream in the delay line's context: measured on the chain smoke run, 0.3-0.7% of
    packets per link, up to 2% in single periods. A sustained late fraction is caught by
    the whole-run rule; a burst episode by this one."""
    min_packets: int = 200
    """A link-period with fewer released packets is not judged on its late fraction: one
    late packet among fewer than 100 is already over 1%. From 200 on, 1% means at least
    3 late packets. Such periods still count toward the whole-run fraction."""
    min_late: int = 3
    """The whole run of a link with fewer than `min_packets` released is judged too, once
    this many of them were late (a 30-ping run with 5 releases > 1 ms late measured
    202.3 ms for 200 while the judge said ok)."""
    stall_ms: float = 10.0
    """A period whose worst release is later than this (10 x late_ms) is a stall of the
    delay line and late whatever its packet count: a 20 ms freeze distorts every packet
    it holds back."""
    cpu_busy: float = 0.95
    """The host is saturated while this fraction of all its cores is busy..."""
    cpu_seconds: float = 2.0
    """...for at least this long without a break (shorter bursts are start-up noise)."""
    wake_late_fraction: float = 0.03
    """The host woke processes late over the run when more than this share of the
    sampler's 1 ms sleeps (`wake_probe`) came back over 1 ms late (calm on this VM: 0-1
    of 100-320; the CI runs whose pings were 1-2 ms late: 4 of 100). Pings and
    validators then measure the host's wake-ups, not the emulated link."""
    min_wake_probes: int = 100
    """Fewer probes (a run under 5 s) are not judged: 3 late of 40 is chance at 1-2%."""
    line_cpu: float = 0.95
    """A delay-line process using this many cores (of its one) in a period is saturated:
    it cannot have released on time."""

    def __post_init__(self) -> None:
        if self.late_ms != 1.0:
            raise ValueError(f"late_ms={self.late_ms}: the delay line counts lateness "
                             "against 1 ms only (late_over_1ms)")


@dataclass
class Period:
    """A time span (s from the timeline's start) in which one subject fell behind."""

    start_s: float
    end_s: float
    kind: Kind
    subject: str
    """The link (`path:mb>h2`), `host`, or delay-line process (`pid 1234`)."""
    detail: str


@dataclass
class Health:
    """A run's verdict, kept in its manifest (`to_dict`) so figures and reports can say it
    without judging again."""

    status: Status
    reasons: list[str]
    """Sentences naming the subject, the numbers and the time span; also why a status is
    unknown."""
    periods: list[Period]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for p in d["periods"]:
            p["start_s"], p["end_s"] = round(p["start_s"], 3), round(p["end_s"], 3)
        return d


@dataclass
class _Records:
    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """(line number, record)."""
    bad: list[int] = field(default_factory=list)
    """Line numbers that could not be read (records lost)."""
    truncated: bool = False
    """The last line was cut short: its writer was killed mid-line."""


def _read_jsonl(path: Path) -> _Records | None:
    if not path.is_file():
        return None
    out = _Records()
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            out.rows.append((i, row))
        except ValueError:
            if i == len(lines):  # no newline after it: a writer killed mid-line
                out.truncated = True
            else:
                out.bad.append(i)
    return out


@dataclass
class _Span:
    kind: Kind
    subject: str
    start: float
    end: float
    released: int = 0
    late: int = 0
    late_max_us: int = 0
    overflow: int = 0
    cpu_max: float = 0.0
    weighted: float = 0.0
    """busy or cpu x seconds, for a mean over the span."""
    reasoned: bool = True
    """False for spans that only show where a whole-run reason happened."""

    def absorb(self, o: _Span) -> None:
        self.end = max(self.end, o.end)
        self.released += o.released
        self.late += o.late
        self.late_max_us = max(self.late_max_us, o.late_max_us)
        self.overflow += o.overflow
        self.cpu_max = max(self.cpu_max, o.cpu_max)
        self.weighted += o.weighted
        self.reasoned = self.reasoned or o.reasoned


def _merge(spans: list[_Span]) -> list[_Span]:
    out: list[_Span] = []
    for s in sorted(spans, key=lambda s: (s.kind, s.subject, s.start)):
        last = out[-1] if out else None
        if (last is not None and (last.kind, last.subject) == (s.kind, s.subject)
                and s.start <= last.end + ADJACENT_S):
            last.absorb(s)
        else:
            out.append(s)
    return out


def _late_words(s: _Span, th: Thresholds) -> str:
    share = (f"{s.late} of {s.released} packets" if s.released < th.min_packets
             else f"{s.late / s.released:.1%} of packets")
    return f"{share} > {th.late_ms:g} ms late (max {s.late_max_us / 1000:.1f} ms)"


def _describe(s: _Span, th: Thresholds) -> tuple[str, str]:
    """(reason sentence, short detail) of a merged span."""
    when = f"during {s.start:.1f}-{s.end:.1f} s"
    dur = s.end - s.start
    if s.kind == "host_cpu":
        mean = s.weighted / dur if dur > 0 else s.cpu_max
        detail = f"host {mean:.0%} busy (max {s.cpu_max:.0%})"
        return (f"host CPU was >= {th.cpu_busy:.0%} busy (all cores together) for "
                f"{dur:.1f} s (mean {mean:.0%}) {when}", detail)
    if s.kind == "late_release":
        words = _late_words(s, th)
        return f"delay line {s.subject} released {words} {when}", f"{s.subject}: {words}"
    if s.kind == "queue_overflow":
        words = f"{s.overflow} packets overflowed its queue (passed unshaped or lost)"
        return f"delay line {s.subject}: {words} {when}", f"{s.subject}: {words}"
    words = f"used {s.cpu_max:.2f} of a core (saturated)"
    return f"delay-line process {s.subject} {words} {when}", f"{s.subject} {words}"


def _num(row: dict[str, Any], key: str, default: float | None = None) -> float:
    v = row.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{key} is not a number")
    return float(v)


def _host(recs: _Records, t0: float, th: Thresholds,
          summary: dict[str, Any]) -> tuple[list[_Span], list[str], list[str]]:
    """Spans of a saturated host, what is unknown, and whole-run reasons (wake-ups)."""
    samples: list[tuple[float, float, int]] = []  # (unix, busy, cpus)
    probes = late = 0
    worst = 0.0
    for line, row in recs.rows:
        try:
            samples.append((_num(row, "unix"), _num(row, "busy"),
                            len(row.get("per_cpu") or [])))
            if _num(row, "unix") > t0:
                probes += int(_num(row, "wake_probes", 0))
                late += int(_num(row, "wake_late_1ms", 0))
                worst = max(worst, _num(row, "wake_late_max_ms", 0.0))
        except ValueError:
            recs.bad.append(line)
    samples.sort()
    gaps = [b[0] - a[0] for a, b in zip(samples, samples[1:], strict=False)]
    first_len = statistics.median(gaps) if gaps else SAMPLE_S
    intervals = []  # (start_s, end_s, busy) relative to t0, from t0 on
    for i, (unix, busy, _) in enumerate(samples):
        start = (samples[i - 1][0] if i else unix - first_len) - t0
        if unix - t0 > 0:
            intervals.append((max(start, 0.0), unix - t0, busy))
    if not intervals:
        return [], [f"no host CPU samples from the timeline on ({HOST_CPU} missing or "
                    "empty): whether the host kept up is unknown"], []
    length = sum(e - s for s, e, _ in intervals)
    summary["host"] = {
        "samples": len(intervals),
        "cpus": max(c for _, _, c in samples),
        "busy_max": round(max(b for _, _, b in intervals), 4),
        "busy_mean": round(sum((e - s) * b for s, e, b in intervals) / length, 4)
        if length > 0 else None,
        "wake_probes": probes, "wake_late_1ms": late, "wake_late_max_ms": round(worst, 3),
    }
    spans: list[_Span] = []
    run: _Span | None = None
    for s, e, b in [*intervals, (0.0, 0.0, -1.0)]:  # a sentinel ends the last run
        if b >= th.cpu_busy:
            span = _Span("host_cpu", "host", s, e, cpu_max=b, weighted=b * (e - s))
            if run is None:
                run = span
            else:
                run.absorb(span)
            continue
        if run is not None and run.end - run.start >= th.cpu_seconds - 1e-6:
            spans.append(run)
        run = None
    reasons = []
    if probes >= th.min_wake_probes and late > th.wake_late_fraction * probes:
        reasons.append(f"host woke processes late: {late} of {probes} 1 ms sleeps "
                       f"({late / probes:.0%}) returned > 1 ms late (max {worst:.1f} ms) "
                       "over the run")
    return spans, [], reasons


LINK_COUNTS = ("received", "released", "dropped", "late_over_1ms", "late_max_us", "overflow")


def _links(recs: _Records, t0: float, th: Thresholds,
           summary: dict[str, Any]) -> tuple[list[_Span], list[str], bool]:
    """Spans and whole-run reasons from the delay line's records; also whether any link
    record falls in the timeline."""
    spans: list[_Span] = []
    totals: dict[str, dict[str, int]] = {}
    by_link: dict[str, list[_Span]] = {}
    cpu: dict[str, float] = {}
    other = 0
    for line, row in recs.rows:
        kind = row.get("kind")
        if kind not in ("link", "process"):
            other += 1  # a record kind added later: not ours to judge
            continue
        try:
            end = _num(row, "unix") - t0
            start = max(end - _num(row, "period_s"), 0.0)
            if kind == "process":
                subject, c = f"pid {int(_num(row, 'pid'))}", _num(row, "cpu")
            else:
                link = row["link"]
                if not isinstance(link, str):
                    raise ValueError("link is not a string")
                n = {k: int(_num(row, k, 0)) for k in LINK_COUNTS}
        except (KeyError, ValueError):
            recs.bad.append(line)
            continue
        if end <= 0:
            continue
        if kind == "process":
            cpu[subject] = max(cpu.get(subject, 0.0), c)
            if c >= th.line_cpu:
                spans.append(_Span("line_cpu", subject, start, end, cpu_max=c))
            continue
        t = totals.setdefault(link, dict.fromkeys(LINK_COUNTS, 0) | {"periods": 0})
        for k, v in n.items():
            t[k] = max(t[k], v) if k == "late_max_us" else t[k] + v
        t["periods"] += 1
        sp = _Span("late_release", link, start, end, released=n["released"],
                   late=n["late_over_1ms"], late_max_us=n["late_max_us"])
        by_link.setdefault(link, []).append(sp)
        by_fraction = (n["released"] >= th.min_packets
                       and n["late_over_1ms"] > th.period_late_fraction * n["released"])
        if by_fraction or n["late_max_us"] > th.stall_ms * 1000:
            spans.append(sp)
        if n["overflow"] > 0:
            spans.append(_Span("queue_overflow", link, start, end, overflow=n["overflow"]))
    reasons = []
    flagged = {s.subject for s in spans if s.kind == "late_release"}
    for link, t in sorted(totals.items()):
        few = t["released"] < th.min_packets and t["late_over_1ms"] < th.min_late
        if (link in flagged or few
                or t["late_over_1ms"] <= th.late_fraction * t["released"]):
            continue
        whole = _Span("late_release", link, 0, 0, released=t["released"],
                      late=t["late_over_1ms"], late_max_us=t["late_max_us"])
        reasons.append(f"delay line {link} released {_late_words(whole, th)} over the whole "
                       "run, though no single period crossed the thresholds")
        for sp in by_link[link]:  # show where it happened, without a reason each
            if sp.late > th.late_fraction * sp.released:
                sp.reasoned = False
                spans.append(sp)
    summary["links"] = totals
    summary["line_cpu_max"] = {k: round(v, 4) for k, v in sorted(cpu.items())}
    if other:
        summary["other_records"] = other
    return spans, reasons, bool(totals)


def judge(run_dir: Path, t0_unix: float, thresholds: Thresholds = Thresholds(), *,
          expect_delay_line: bool = False) -> Health:
    """Judge a run from its folder alone (`health/host_cpu.jsonl`, `linkemu/periods.jsonl`),
    so it can be judged again after the fact. Without the periods file there is nothing
    to say about delay lines (netem runs); `expect_delay_line` (the run had one) makes
    its absence "unknown". Records ending before the timeline's start (`t0_unix`) are
    set-up and not judged. A record's `unix` is the end of its period, which began
    `period_s` earlier (the previous sample, for host CPU)."""
    run_dir, th = Path(run_dir), thresholds
    summary: dict[str, Any] = {}
    host_recs = _read_jsonl(run_dir / HOST_CPU)
    spans, unknown, host_reasons = _host(host_recs or _Records(), t0_unix, th, summary)
    link_recs = _read_jsonl(run_dir / LINK_PERIODS)
    whole_run: list[str] = []
    had_links = False
    if link_recs is not None:
        more, whole_run, had_links = _links(link_recs, t0_unix, th, summary)
        spans += more
    if expect_delay_line and not had_links:
        unknown.append(f"the delay line wrote no link records from the timeline on "
                       f"({LINK_PERIODS} missing or empty): whether it released packets on "
                       "time is unknown")
    for name, recs in ((HOST_CPU, host_recs), (LINK_PERIODS, link_recs)):
        if recs is None:
            continue
        lost = sorted(set(recs.bad))
        if lost:
            unknown.append(f"{name}: {len(lost)} unreadable line(s) (first: line {lost[0]}); "
                           "what they recorded is unknown")
        if recs.truncated:
            summary.setdefault("truncated", []).append(name)
    reasons: list[str] = []
    periods: list[Period] = []
    for s in sorted(_merge(spans), key=lambda s: (s.start, s.kind, s.subject)):
        reason, detail = _describe(s, th)
        if s.reasoned:
            reasons.append(reason)
        periods.append(Period(s.start, s.end, s.kind, s.subject, detail))
    reasons += whole_run + host_reasons
    status: Status = "unreliable" if reasons else "unknown" if unknown else "ok"
    return Health(status, reasons + unknown, periods, summary)
