"""Golden traces of the core: every effect of a short fault plan, one file per protocol.

A behaviour change of the rules shows up as a diff of these files. After a change
that is meant, regenerate them and read the diff:

    CHAINTWIN_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/unit/consensus/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nodes.consensus.events import (
    Broadcast,
    CancelTimer,
    Commit,
    Log,
    PersistVote,
    RequestSync,
    Send,
    ServeSync,
    StartTimer,
    WantBatch,
)
from nodes.consensus.messages import Proposal, RoundChange, SyncRequest, SyncResponse, Vote
from tests.unit.consensus.harness import MemoryCluster
from tests.unit.consensus.plan import FaultPlan

GOLDEN = Path(__file__).parent / "golden"

# Validator 3 proposes height 3 (and 0 height 4): it crashes before its turn, so height 3
# needs a round change, and catches up by state transfer after its restart.
CASES = {
    "pbft": FaultPlan(7, protocol="pbft", duration=2.6, gst=0.0, crash=(3, 0.2, 1.9)),
    "bigfoot": FaultPlan(7, protocol="bigfoot", duration=2.6, gst=0.0, crash=(3, 0.2, 1.9)),
    "pbft_to_bigfoot": FaultPlan(8, protocol="pbft", duration=1.2, gst=0.0, switch_at=2),
}


def describe_msg(m: Any) -> str:
    t = type(m)
    if t is Vote:
        return f"{m.phase} h{m.height} r{m.round} {m.digest}"
    if t is Proposal:
        n = len(m.justification) if m.justification is not None else 0
        return f"proposal h{m.height} r{m.round} {m.block.digest} just={n}"
    if t is RoundChange:
        p = f"{m.prepared.round}:{m.prepared.block.digest}" if m.prepared else "-"
        v = f"{m.voted.round}:{m.voted.block.digest}" if m.voted else "-"
        return f"rc h{m.height} r{m.round} prepared={p} voted={v}"
    if t is SyncRequest:
        return f"sync_req from h{m.start}"
    if t is SyncResponse:
        return f"sync_resp {[b.height for b, _ in m.blocks]} tip={m.tip}"
    return repr(m)


def describe(e: Any) -> str:
    t = type(e)
    if t is Broadcast:
        return f"broadcast {describe_msg(e.msg)}"
    if t is Send:
        return f"send {e.to} {describe_msg(e.msg)}"
    if t is StartTimer:
        return f"start {e.kind} h{e.height} r{e.round} {e.delay:g}s"
    if t is CancelTimer:
        return f"cancel {e.kind} h{e.height} r{e.round}"
    if t is Commit:
        i = e.info
        return (f"commit h{e.block.height} {e.block.digest} {e.block.protocol} r{i.round}"
                f" fast={i.fast_path} votes={len(e.cert.votes)} synced={i.synced}")
    if t is PersistVote:
        return f"persist {e.vote.phase} h{e.vote.height} r{e.vote.round}"
    if t is RequestSync:
        return f"request_sync {e.to if e.to is not None else '*'} from h{e.msg.start}"
    if t is ServeSync:
        return f"serve_sync {e.to} from h{e.start} limit {e.limit}"
    if t is WantBatch:
        return f"want_batch h{e.height}"
    if t is Log:
        return f"log {e.kind} {json.dumps(e.data, sort_keys=True, default=str)}"
    raise TypeError(e)


def trace(plan: FaultPlan) -> list[str]:
    cluster = MemoryCluster(plan)
    cluster.effects = []
    cluster.run()
    return [f"{t:.6f} n{me} {describe(e)}" for t, me, e in cluster.effects]


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_trace(case: str) -> None:
    got = trace(CASES[case])
    path = GOLDEN / f"{case}.json"
    if os.environ.get("CHAINTWIN_REGEN_GOLDEN"):
        path.write_text(json.dumps(got, indent=0) + "\n")
    assert path.exists(), f"missing golden file {path} (CHAINTWIN_REGEN_GOLDEN=1 writes it)"
    want = json.loads(path.read_text())
    first = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
                 min(len(want), len(got)))
    assert got == want, (f"trace differs from {path.name} at line {first}: "
                         f"{want[first:first + 1]} vs {got[first:first + 1]}")


def test_golden_traces_show_the_rules_at_work() -> None:
    pbft = json.loads((GOLDEN / "pbft.json").read_text())
    bigfoot = json.loads((GOLDEN / "bigfoot.json").read_text())
    switch = json.loads((GOLDEN / "pbft_to_bigfoot.json").read_text())
    assert any("commit h3" in x and " r1 " in x for x in pbft), "no round change at h3"
    assert any("synced=True" in x for x in pbft + bigfoot), "no state transfer"
    assert any("fast=True" in x for x in bigfoot) and not any("fast=True" in x for x in pbft)
    assert any("bigfoot r0 fast=True" in x for x in switch)
