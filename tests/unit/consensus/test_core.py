"""The core's rules one at a time, through `Core.handle` alone (no driver)."""

from __future__ import annotations

from typing import Any

import pytest

from nodes.consensus import (
    Committee,
    Core,
    CoreConfig,
    NullAuth,
    Schedule,
    Timeouts,
    Window,
    fault_tolerance,
    quorum_size,
)
from nodes.consensus.events import (
    LAG_TIMER,
    PROTOCOL_TIMER,
    BatchReady,
    Broadcast,
    Commit,
    Log,
    PersistVote,
    RequestSync,
    Send,
    Start,
    StartTimer,
    SwitchProtocol,
    TimerFired,
    WantBatch,
)
from nodes.consensus.messages import (
    BlockRef,
    PreparedCert,
    Proposal,
    RoundChange,
    Vote,
    VoteClaim,
)
from nodes.consensus.values import select_value
from tests.unit.consensus.harness import LightBlock, LightBlocks


class OkAuth:
    """Signs 'ok'; only 'ok' verifies."""

    def sign(self, msg: Any) -> str:
        return "ok"

    def verify(self, msg: Any) -> bool:
        return msg.sig == "ok"


def make_core(me: Any = 0, n: int = 4, protocol: str = "pbft", auth: Any = None,
              config: CoreConfig | None = None, votes: Any = ()) -> Core:
    c = Core(me, Committee(list(range(n)), auth or NullAuth()), config or CoreConfig(),
             LightBlocks(me), Schedule(protocol), votes=votes)
    c.handle(Start(), 0.0)
    return c


def said(out: list[Any]) -> set[tuple[Any, int, bool]]:
    """(peer, round, with blocks) of each ROUND-CHANGE sent."""
    return {(e.to, e.msg.round, not _light(e.msg)) for e in of(out, Send)
            if isinstance(e.msg, RoundChange)}


def _light(rc: RoundChange) -> bool:
    return any(x is not None and isinstance(x.block, BlockRef) for x in (rc.prepared, rc.voted))


def block(h: int = 1, proposer: Any = 1, protocol: str = "pbft", tag: str = "") -> LightBlock:
    return LightBlock(f"b{h}.{proposer}{tag}", h, proposer, protocol, None)


def of(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if type(e) is kind]


def logs(effects: list[Any], kind: str) -> list[dict[str, Any]]:
    return [e.data for e in effects if type(e) is Log and e.kind == kind]


# ---- quorum and timeouts ------------------------------------------------------------------
def test_quorum_intersects_in_an_honest_validator_and_stays_live() -> None:
    for n in range(1, 60):
        q, f = quorum_size(n), fault_tolerance(n)
        assert 2 * q - n >= f + 1, n  # two quorums share an honest validator
        assert q <= n - f, n  # the honest ones alone are a quorum
        assert q >= 2 * f + 1, n
    assert [quorum_size(n) for n in (4, 5, 6, 7, 10)] == [3, 4, 4, 5, 7]  # n - f at 6: 5


def test_round_timeouts_grow_then_cap_and_round_zero_may_wait_for_a_batch() -> None:
    t = Timeouts(base=1.0, backoff=2.0, cap=5.0, first_round_extra=0.5)
    assert [t.round(r) for r in range(5)] == [1.5, 2.0, 4.0, 5.0, 5.0]
    assert t.round(10**6) == 5.0
    with pytest.raises(ValueError):
        Timeouts(base=2.0, cap=1.0)


# ---- values --------------------------------------------------------------------------------
def test_select_value_respects_prepared_and_fast_path_votes() -> None:
    a, b = block(1, 0, "bigfoot", "a"), block(1, 1, "bigfoot", "b")
    none = [RoundChange(1, 2, i, None, None) for i in range(3)]
    assert select_value(none, f=1) is None
    prep = PreparedCert(0, a, ())
    assert select_value([RoundChange(1, 2, 0, prep, None), *none[1:]], 1) is a
    # f+1 claims of a round-1 PREPARE for b beat a round-0 prepared certificate for a:
    # b may have been committed on BigFoot's fast path in round 1.
    vote_b = VoteClaim(1, b, "s")
    mixed = [RoundChange(1, 2, 0, prep, None), RoundChange(1, 2, 1, None, vote_b),
             RoundChange(1, 2, 2, None, vote_b)]
    assert select_value(mixed, 1) is b
    assert select_value([mixed[0], mixed[1], none[2]], 1) is a  # one claim could be a lie
    # At equal rounds the prepared certificate wins.
    tie = [RoundChange(1, 2, 0, PreparedCert(1, a, ()), None), mixed[1], mixed[2]]
    assert select_value(tie, 1) is a


# ---- commit rules ----------------------------------------------------------------------------
def test_pbft_commits_on_a_quorum_of_commits_after_a_quorum_of_prepares() -> None:
    c = make_core(0)
    b = block()
    out = c.handle(Proposal(1, 0, 1, b), 1.0)
    assert [e.msg.phase for e in of(out, Broadcast)] == ["prepare"]
    out = c.handle(Vote("prepare", 1, 0, 1, b.digest), 1.1)
    assert not of(out, Broadcast)  # 2 of q = 3
    out = c.handle(Vote("prepare", 1, 0, 2, b.digest), 1.2)
    assert [e.msg.phase for e in of(out, Broadcast)] == ["commit"]
    assert not of(c.handle(Vote("commit", 1, 0, 1, b.digest), 1.3), Commit)
    (commit,) = of(c.handle(Vote("commit", 1, 0, 3, b.digest), 1.4), Commit)
    assert commit.block is b and not commit.info.fast_path and len(commit.cert.votes) == 3
    assert commit.info.silent == ()


@pytest.mark.parametrize("in_time", [True, False])
def test_bigfoot_commits_on_all_n_prepares_before_or_after_its_timer(in_time: bool) -> None:
    c = make_core(0, protocol="bigfoot")
    b = block(protocol="bigfoot")
    out = c.handle(Proposal(1, 0, 1, b), 1.0)
    (timer,) = [e for e in of(out, StartTimer) if e.kind == PROTOCOL_TIMER]
    assert timer.delay == CoreConfig().timeouts.fast_path
    for v in (1, 2):
        c.handle(Vote("prepare", 1, 0, v, b.digest), 1.05)
    if not in_time:
        out = c.handle(TimerFired(PROTOCOL_TIMER, 1, 0), 1.2)
        assert [e.msg.phase for e in of(out, Broadcast)] == ["commit"]
    out = c.handle(Vote("prepare", 1, 0, 3, b.digest), 1.3)  # the n-th PREPARE
    # n PREPAREs are a certificate whenever they arrive: after the timer too (the others
    # may have decided on them and send no COMMIT)
    (commit,) = of(out, Commit)
    assert commit.info.fast_path and len(commit.cert.votes) == 4


def test_bigfoot_after_its_timer_a_commit_quorum_decides_without_all_prepares() -> None:
    c = make_core(0, protocol="bigfoot")
    b = block(protocol="bigfoot")
    c.handle(Proposal(1, 0, 1, b), 1.0)
    for v in (1, 2):
        c.handle(Vote("prepare", 1, 0, v, b.digest), 1.05)
    out = c.handle(TimerFired(PROTOCOL_TIMER, 1, 0), 1.2)
    assert [e.msg.phase for e in of(out, Broadcast)] == ["commit"]
    (commit,) = of(c.handle(Vote("commit", 1, 0, 1, b.digest), 1.4)
                   + c.handle(Vote("commit", 1, 0, 2, b.digest), 1.5), Commit)
    assert not commit.info.fast_path


def test_commits_without_the_proposal_ask_for_the_block() -> None:
    c = make_core(0)
    out = []
    for v in (1, 2, 3):
        out += c.handle(Vote("commit", 1, 0, v, "elsewhere"), 1.0 + v / 10)
    assert of(out, RequestSync) and not of(out, Commit)


def test_the_next_height_starts_only_when_the_commit_is_applied() -> None:
    from nodes.consensus.events import Applied

    c = make_core(3)  # not a proposer of height 1 or 2 in round 0
    b = block()
    c.handle(Proposal(1, 0, 1, b), 1.0)
    for v in (1, 2):
        c.handle(Vote("prepare", 1, 0, v, b.digest), 1.1)
    for v in (1, 2):
        c.handle(Vote("commit", 1, 0, v, b.digest), 1.2)
    assert c.applying == 1 and c.height == 1
    assert c.handle(Vote("prepare", 2, 0, 2, "x"), 1.3) != []  # kept for height 2
    out = c.handle(Applied(1), 1.4)
    assert c.height == 2 and c.tip_digest == b.digest
    assert [e.round for e in of(out, StartTimer)] == [0]


# ---- round changes ------------------------------------------------------------------------
def test_f_plus_one_round_changes_ahead_pull_a_validator_forward() -> None:
    c = make_core(0)
    c.handle(RoundChange(1, 5, 1, None, None), 1.0)
    assert c.round == 0 and c.waiting is None  # one could be faulty
    out = c.handle(RoundChange(1, 3, 2, None, None), 1.1)
    # It asks for the (f+1)-th highest of the rounds ahead, and stops voting in round 0...
    assert c.waiting == 3 and c.round == 0
    assert {(to, r) for to, r, _ in said(out)} == {(1, 3), (2, 3), (3, 3)}
    # ...but enters round 3 only on a quorum of round changes for it.
    c.handle(RoundChange(1, 3, 3, None, None), 1.2)
    assert c.round == 3 and c.waiting is None


def test_a_round_change_carries_its_block_only_to_the_new_proposer() -> None:
    """Issue 17: every round change carried the sender's locked block to every peer on
    every timeout (under Cubic at a congested bottleneck, 198 MB in 36 s)."""
    c = make_core(0)
    locked = block(1, 1, tag="locked")
    c.handle(Proposal(1, 0, 1, locked), 1.0)  # it votes PREPARE: its lock for round 1
    out = c.handle(TimerFired("round", 1, 0), 3.0)
    assert said(out) == {(1, 1, False), (2, 1, True), (3, 1, False)}  # (1+1) % 4 = 2
    light = next(e.msg for e in of(out, Send) if e.to == 1)
    assert light.voted.block == BlockRef(locked.digest, 1) and light.sig == c._my_rc.sig

    # The new proposer re-proposes the forced block only if it holds it in full.
    def proposer(rcs: list[RoundChange]) -> list[Any]:
        p = make_core(2)
        out: list[Any] = []
        for rc in rcs:
            out += p.handle(rc, 3.1)
        return out

    claim = VoteClaim(0, BlockRef(locked.digest, 1), "")
    blind = proposer([RoundChange(1, 1, v, None, claim) for v in (0, 1, 3)])
    assert not [e for e in of(blind, Broadcast) if isinstance(e.msg, Proposal)]
    assert any(d.get("reason") == "forced block unknown" for d in logs(blind, "stale_proposal"))
    full = RoundChange(1, 1, 0, None, VoteClaim(0, locked, ""))
    seen = proposer([full] + [RoundChange(1, 1, v, None, claim) for v in (1, 3)])
    (prop,) = [e.msg for e in of(seen, Broadcast) if isinstance(e.msg, Proposal)]
    assert prop.round == 1 and prop.block is locked


def test_a_round_r_proposal_needs_a_justifying_quorum() -> None:
    c = make_core(0)
    b = block(1, 2)
    out = c.handle(Proposal(1, 1, 2, b, None), 1.0)  # proposer of round 1 is (1+1)%4
    assert logs(out, "reject") and not of(out, Broadcast)
    just = tuple(RoundChange(1, 1, v, None, None) for v in (1, 2, 3))
    out = c.handle(Proposal(1, 1, 2, b, just), 1.1)
    assert c.round == 1 and [e.msg.phase for e in of(out, Broadcast)] == ["prepare"]


def test_a_proposal_that_ignores_the_forced_value_is_refused() -> None:
    c = make_core(0)
    locked, fresh = block(1, 1, tag="locked"), block(1, 2, tag="fresh")
    claim = VoteClaim(0, locked, "")
    just = (RoundChange(1, 1, 1, None, claim), RoundChange(1, 1, 3, None, claim),
            RoundChange(1, 1, 2, None, None))
    out = c.handle(Proposal(1, 1, 2, fresh, just), 1.0)
    assert any("forces" in d["detail"] for d in logs(out, "reject"))
    out = c.handle(Proposal(1, 1, 2, locked, just), 1.1)  # re-proposed: fine
    assert [e.msg.digest for e in of(out, Broadcast)] == [locked.digest]


# ---- out of window ----------------------------------------------------------------------------
def test_messages_far_ahead_are_dropped_and_trigger_a_sync() -> None:
    c = make_core(0, config=CoreConfig(window=Window(heights_ahead=2, rounds_ahead=5)))
    out = c.handle(Vote("prepare", 4, 0, 1, "x"), 1.0)
    assert logs(out, "dropped") and of(out, RequestSync) and len(c.buffer) == 0
    out = c.handle(Vote("prepare", 1, 6, 2, "x"), 1.0)  # round beyond the window
    assert logs(out, "dropped") and not c.rounds.get(6)


def test_future_messages_are_verified_before_they_are_kept() -> None:
    c = make_core(0, auth=OkAuth())
    out = c.handle(Vote("prepare", 2, 0, 1, "x", "forged"), 1.0)
    assert logs(out, "reject") and len(c.buffer) == 0
    out = c.handle(Vote("prepare", 2, 0, 1, "x", "ok"), 1.0)
    assert len(c.buffer) == 1
    assert [e.kind for e in of(out, StartTimer)] == [LAG_TIMER]  # one height ahead: wait


def test_each_validator_gets_its_share_of_the_buffer() -> None:
    c = make_core(0, config=CoreConfig(window=Window(max_messages=8)))  # 2 per validator
    kept = [bool(c.buffer.add(("k", r), 2, 1, object(), 10)) for r in range(5)]
    assert kept == [True, True, False, False, False]
    c.handle(Vote("prepare", 2, 0, 2, "x"), 1.0)
    assert len(c.buffer) == 3  # the flood of validator 1 did not crowd out validator 2


# ---- switch, restart, observers ----------------------------------------------------------------
def test_switch_takes_effect_at_max_of_requested_and_commit_plus_delay() -> None:
    s = Schedule("pbft", reconfig_delay=2)
    s.on_commit(5, [("bigfoot", None)])
    assert [s.at(h) for h in (6, 7, 8)] == ["pbft", "bigfoot", "bigfoot"]
    s.on_commit(8, [("pbft", 20)])
    assert s.at(19) == "bigfoot" and s.at(20) == "pbft"


def test_an_agreed_switch_must_be_for_a_height_not_started() -> None:
    c = make_core(0)
    assert logs(c.handle(SwitchProtocol("bigfoot", 1), 1.0), "reject")
    assert logs(c.handle(SwitchProtocol("hotstuff", 5), 1.0), "reject")
    assert not c.handle(SwitchProtocol("bigfoot", 2), 1.0)
    assert c.protocol_at(2) == "bigfoot" and c.protocol_at(1) == "pbft"


def test_a_restarted_validator_is_bound_by_its_votes() -> None:
    mine = block(1, 1, tag="mine")
    c = make_core(1, votes=[(Vote("prepare", 1, 0, 1, mine.digest), mine)])
    # As proposer of (1, 0) it re-proposes its block instead of asking for a batch.
    assert c.rounds[0].proposed and c.rounds[0].proposal is mine
    other = make_core(0, votes=[(Vote("prepare", 1, 0, 0, mine.digest), mine)])
    out = other.handle(Proposal(1, 0, 1, block(1, 1, tag="other")), 1.0)
    assert any("before a restart" in d["detail"] for d in logs(out, "reject"))


def test_a_restarted_validator_does_not_vote_in_a_round_it_left() -> None:
    """Before: the ROUND-CHANGE was not persisted, so a validator killed after asking to
    leave round 0 voted there again once restarted: with f faulty validators and the
    ones still in round 0, a second quorum while round 1 was justified without it."""
    c = make_core(0)
    out = c.handle(TimerFired("round", 1, 0), 3.0)  # round 0 times out: ROUND-CHANGE(1)
    kept = [e.vote for e in of(out, PersistVote) if e.vote.phase == "rc"]
    assert [v.round for v in kept] == [1]
    i_persist, i_send = (next(i for i, e in enumerate(out) if isinstance(e, t))
                         for t in (PersistVote, Send))
    assert i_persist < i_send  # stored before it is said

    again = make_core(0, votes=[(v, None) for v in kept])
    assert again.waiting == 1 and again._my_rc is not None and again._my_rc.round == 1
    out = again.handle(Proposal(1, 0, 1, block()), 3.5)
    assert not [e for e in of(out, Broadcast) if isinstance(e.msg, Vote)]
    for v in (1, 2):  # a certificate for round 1 still takes it there
        again.handle(RoundChange(1, 1, v, None, None), 3.6)
    assert again.round == 1


def test_an_observer_follows_but_never_votes() -> None:
    c = make_core(9)  # not one of validators 0..3
    b = block()
    out = c.handle(Proposal(1, 0, 1, b), 1.0)
    out += c.handle(TimerFired("round", 1, 0), 2.0)
    assert not of(out, Broadcast)
    for v in (1, 2, 3):
        out += c.handle(Vote("commit", 1, 0, v, b.digest), 2.1)
    assert of(out, Commit)


def test_only_events_are_handled() -> None:
    c = make_core(0)
    with pytest.raises(TypeError):
        c.handle("prepare", 1.0)
    assert not make_core(2).handle(BatchReady(7), 1.0)  # not its height: nothing
    assert of(make_core(1).handle(Start(), 0.0), WantBatch) == []  # started once
