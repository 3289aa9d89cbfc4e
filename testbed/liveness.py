"""How the chain lived through a run: stalls while transactions waited, and for every
fault event the longest commit gap after it and how long lagging validators took to
catch up (issue 17). From the run folder only (validators' telemetry, the latency
table), so `chaintwin report` recomputes it.

- A **stall** is a span with no new height on any validator, while a submitted
  transaction was waiting, longer than f + 1 rounds' timeouts plus one round-0 timeout:
  what f crashed proposers in a row cost before a live one commits, with room to spare.
  It is `expected` when the timeline had more than f validators crashed, down or cut
  off during it and it ended within `RECOVERY_ALLOWANCE_S` of them coming back (no BFT
  chain can commit then); a run with an unexpected one ends as `status: degraded`.
- After each fault event (crash, restart, partition, heal, host and link up/down,
  slow): `longest_gap_s` is the longest span without a new height from the event to the
  next fault event or the end (the event opens the first span, the next event or the
  end closes the last), `first_commit_after_s` the wait for the first new height, and
  `catch_up_s` is, per validator not at the chain's height then, the time until it got
  there (None: never, within the run).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

RECOVERY_ALLOWANCE_S = 3.5
"""Two round timeouts plus the time a restarted validator takes to load and reconnect."""
FAULT_ACTIONS = ("crash", "restart", "partition", "heal", "host_down", "host_up",
                 "link_down", "link_up", "slow", "set_link")


def commit_times(chain_dir: Path) -> dict[str, dict[int, float]]:
    """validator -> height -> when it committed it first (unix s; synced blocks too)."""
    from testbed.chain import blocks

    out: dict[str, dict[int, float]] = {}
    for path in sorted((chain_dir / "telemetry").glob("*.jsonl")):
        seen: dict[int, float] = {}
        for b in blocks(chain_dir, path.stem):
            seen.setdefault(int(b["height"]), float(b["committed_at"]))
        out[path.stem] = seen
    return out


def chain_times(per: dict[str, dict[int, float]]) -> dict[int, float]:
    """height -> first time any validator committed it."""
    out: dict[int, float] = {}
    for seen in per.values():
        for h, t in seen.items():
            if h not in out or t < out[h]:
                out[h] = t
    return out


def _pending(latency_csv: Path) -> list[tuple[float, float]]:
    """(submitted, committed or +inf) per transaction, run-relative seconds."""
    if not latency_csv.exists():
        return []
    out = []
    for r in csv.DictReader(open(latency_csv)):
        out.append((float(r["submit_s"]), float(r["commit_s"]) if r["commit_s"] else 1e18))
    return out


def stalls(first: dict[int, float], t0: float, end: float, txs: list[tuple[float, float]],
           threshold: float) -> list[dict[str, float]]:
    """Spans (run-relative s) longer than `threshold` with no new height while some
    transaction was waiting."""
    times = sorted(t - t0 for t in first.values())
    edges = [0.0, *[t for t in times if 0.0 <= t <= end], end]
    out = []
    for a, b in zip(edges, edges[1:], strict=False):
        if b - a <= threshold:
            continue
        # waiting during [a + threshold, b): submitted before it ended, committed after
        lo = a + threshold
        if any(s < b and c > lo for s, c in txs):
            out.append({"from_s": round(a, 3), "to_s": round(b, 3), "length_s": round(b - a, 3)})
    return out


def beyond_f(events: list[dict[str, Any]], validators: list[str],
             end: float) -> list[tuple[float, float]]:
    """Spans (run-relative s) in which more than f validators were crashed, down or on
    the small side of a partition."""
    if not validators:
        return []
    f = (len(validators) - 1) // 3
    vals = set(validators)
    down: set[str] = set()
    cut: set[str] = set()
    spans: list[tuple[float, float]] = []
    since: float | None = None
    for ev in sorted(events, key=lambda e: float(e["actual_s"])):
        a, host = ev.get("action"), ev.get("host")
        if a in ("crash", "host_down") and host in vals:
            down.add(host)
        elif a in ("restart", "host_up"):
            down.discard(host)
        elif a == "partition":
            groups = [set(g) & vals for g in ev.get("groups", [])]
            big = max(groups, key=len)
            cut = set().union(*(g for g in groups if g is not big))
        elif a == "heal":
            cut = set()
        else:
            continue
        t = float(ev["actual_s"])
        over = len(down | cut) > f
        if over and since is None:
            since = t
        elif not over and since is not None:
            spans.append((since, t))
            since = None
    if since is not None:
        spans.append((since, end))
    return spans


def recovery(events: list[dict[str, Any]], per: dict[str, dict[int, float]],
             first: dict[int, float], t0: float, end: float) -> list[dict[str, Any]]:
    faults = sorted((e for e in events if e.get("action") in FAULT_ACTIONS),
                    key=lambda e: float(e["actual_s"]))
    times = sorted(t - t0 for t in first.values())
    out = []
    for i, ev in enumerate(faults):
        at = float(ev["actual_s"])
        until = float(faults[i + 1]["actual_s"]) if i + 1 < len(faults) else end
        inside = [t for t in times if at <= t <= until]
        edges = [at, *inside, until]
        gap = max(b - a for a, b in zip(edges, edges[1:], strict=False))
        height = max((h for h, t in first.items() if t - t0 <= at), default=0)
        catch: dict[str, float | None] = {}
        for vid, seen in per.items():
            mine = max((h for h, t in seen.items() if t - t0 <= at), default=0)
            if mine < height:
                # the first block at or above it (a block made durable just before a kill
                # is in the ledger but may be missing from the telemetry)
                t_reach = min((t for h, t in seen.items() if h >= height), default=None)
                catch[vid] = round(t_reach - t0 - at, 3) if t_reach is not None else None
        resume = round(inside[0] - at, 3) if inside else None
        out.append({"action": ev["action"], "at_s": round(at, 3),
                    "target": ev.get("host") or ev.get("link") or ev.get("groups"),
                    "first_commit_after_s": resume,
                    "longest_gap_s": round(gap, 3), "height_at_event": height,
                    "catch_up_s": catch})
    return out


def stall_threshold(n: int, round_timeout: float, backoff: float, cap: float) -> float:
    """Seconds without a block that f crashed proposers in a row cannot explain."""
    f = max((n - 1) // 3, 0)
    return sum(min(round_timeout * backoff**r, cap) for r in range(f + 1)) + round_timeout


def report(run_dir: Path, manifest: dict[str, Any], round_timeout: float,
           backoff: float = 1.5, cap: float = 4.0) -> dict[str, Any]:
    """The manifest's `chain.liveness`: stalls and per-fault recovery."""
    from testbed.chain import LATENCY_CSV

    t0 = float(manifest.get("timeline_t0_unix") or 0.0)
    end = float(manifest["experiment"].get("duration", 0.0))
    per = commit_times(run_dir / "chain")
    first = chain_times(per)
    events = manifest.get("events", [])
    validators = (manifest["experiment"].get("chain") or {}).get("validators", [])
    threshold = stall_threshold(len(validators) or len(per), round_timeout, backoff, cap)
    spans = beyond_f(events, validators, end)
    found = stalls(first, t0, end, _pending(run_dir / LATENCY_CSV), threshold)
    for st in found:
        st["expected"] = any(a < st["to_s"] and st["from_s"] < b + RECOVERY_ALLOWANCE_S
                             and st["to_s"] <= b + RECOVERY_ALLOWANCE_S for a, b in spans)
    return {"stall_threshold_s": threshold, "stalls": found,
            "beyond_f": [{"from_s": round(a, 3), "to_s": round(b, 3)} for a, b in spans],
            "faults": recovery(events, per, first, t0, end)}
