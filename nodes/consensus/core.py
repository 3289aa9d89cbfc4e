"""The consensus core: one validator's rules as a deterministic state machine.

`Core.handle(event, now) -> list[Effect]` is the whole interface. The core owns no
socket, no clock and no randomness: `now` is handed in (wall time on a validator,
simulated time in the twin) and only stamped into records and rate limits. Drivers
execute the effects (`events`), feed back timer firings, and after making a `Commit`
durable feed `Applied` for it: only then does the core move to the next height (as
raft's Ready/Advance), so block checks always see the committed tip.

The rules, all here (quorum and certificates in `quorum`/`values`, protocols in `rules`):

- Heights and rounds (IBFT/QBFT). Round r of height h has proposer order[r % n]:
  the round-robin order from validators[h % n], with the validators named in the
  certificate the tip block carries first (`Committee.proposer_order`; leader
  reputation as in DiemBFT/Aptos, from committed data only, so every validator at h
  agrees). A validator crashed or cut off drops out of that certificate within two
  blocks and then proposes only after every validator that was heard from (issue 17:
  two partitioned validators, consecutive in the round robin, were the healed chain's
  round 0 and round 1 proposers and held it 2.6 s). Entering a round starts its
  timer, min(base * backoff**(r + level), cap) (+ a round-0 allowance for batching),
  where `level` is the back-off carried across heights (`CoreConfig.carry_backoff`): a
  height committed in a round above 0 raises it by one, one committed in round 0
  lowers it by one. Why: behind a congested path (two Cubic flows filling a drop-tail queue; issue
  17) a block's votes took 2-5 s, so every height paid one or two failed rounds before
  its timer grew past the path's delay, and the back-off restarted at 1 s at the next
  height. Carried, the timer stays above the delay the chain last needed (as TCP keeps
  its backed-off RTO until a fresh sample) and comes down one step per quick commit;
  all validators derive it from the same commits (a restart starts at 0). The round-0
  proposer asks its driver for a batch (`WantBatch`) and proposes on `BatchReady`.
- Proposals. Accepted from the round's proposer only, once per round (a second one is
  an equivocation and ignored), at the current round or, if justified, at a later one
  (the validator moves there); above round 0 only with q valid ROUND-CHANGEs whose
  forced value (`values.select_value`) it carries. Content is the `BlockRules`' check.
  The validator then PREPAREs, at most one digest per (round, phase), also across
  restarts (votes are persisted before they are sent and restored on start; so is a
  ROUND-CHANGE's round: a restarted validator votes in no round below one it asked for).
- Commit rules: the protocol's rules object says when to COMMIT or commit on PREPAREs;
  q COMMITs for the proposal of any round commit it. COMMITs without the proposal mean
  it committed elsewhere: ask for the blocks.
- Locks: q PREPAREs make a prepared certificate (kept for the highest round).
- Round changes (the pacemaker; issue 17). A validator *enters* round r > 0 only on a
  round-change certificate: q valid ROUND-CHANGEs for r (or a proposal for r justified
  by them). On a round timeout in round r it stops voting in r, broadcasts ROUND-CHANGE
  for r + 1 (its prepared certificate and last PREPARE) and *waits*, re-sending that
  ROUND-CHANGE every round timeout until a certificate forms. On valid ROUND-CHANGEs
  from f + 1 validators for rounds above the one it asked for, it asks for the (f+1)-th
  highest of them too (at least one honest validator asked for it). A ROUND-CHANGE for a
  round below ours is answered with ours for that round, if we sent one, and our latest
  (once per peer and round): a validator that missed a certificate gets it back.
  Why: with capped timeouts, validators that moved on every timeout drifted apart for
  good (two at round 51, three at 49, 200 s without a commit:
  tests/unit/consensus/test_round_sync.py); entering on certificates, every honest
  validator enters a round within one message delay of the others, after GST.
  A validator that knows its height is decided elsewhere (a verified message for a later
  height, a sync answer) sends no ROUND-CHANGE on a timeout: it asks for the blocks.
  The proposer of round r > 0 proposes once it holds q ROUND-CHANGEs for r.
- Protocol switch at a height (`schedule`); each height runs one protocol's rules.
- Out of window (`window`): a message for a past height is a peer lagging (if it
  verifies, answer with a hint of our tip, rate-limited per peer, unless it is the
  normal tail of the last height); for a later height within `heights_ahead` it is
  verified and kept, bounded, and hints that we are behind (ask for blocks now if two
  heights ahead or a round change, after `lag_grace` if a vote one height ahead);
  beyond the window it is dropped; so are rounds beyond `rounds_ahead`.
- State transfer: blocks from a `SyncResponse` are committed one at a time, each only
  with a valid certificate and acceptable content on our tip; one request in flight, to
  one peer, the next sent as soon as an answer says there is more (see "state
  transfer" below); a request is served once, while fresh (`sync_fresh`).

Issue 17 (liveness under faults) changes round synchronisation, back-off, catch-up and
windows: here, and nowhere in the drivers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nodes.consensus.events import (
    LAG_TIMER,
    PROTOCOL_TIMER,
    ROUND_TIMER,
    SYNC_TIMER,
    Applied,
    BatchReady,
    Broadcast,
    CancelTimer,
    Commit,
    CommitInfo,
    Log,
    PersistVote,
    RequestSync,
    Send,
    ServeSync,
    Start,
    StartTimer,
    SwitchProtocol,
    TimerFired,
    WantBatch,
)
from nodes.consensus.messages import (
    BlockRef,
    Certificate,
    CertVote,
    NodeId,
    PreparedCert,
    Proposal,
    RoundChange,
    SyncRequest,
    SyncResponse,
    Vote,
    VoteClaim,
)
from nodes.consensus.ports import BlockRules, CoreConfig
from nodes.consensus.rules import ProtocolRules, rules_for
from nodes.consensus.schedule import Schedule
from nodes.consensus.state import RoundState
from nodes.consensus.values import (
    Committee,
    Invalid,
    certificate_problem,
    check_round_change,
    justified_value,
    select_value,
)
from nodes.consensus.window import FutureBuffer

_NO_OUT: Any = ()
"""`out` outside `handle`: appending to it fails loudly."""
_MSG_BYTES = 200
"""Buffer accounting for a vote, a round change without blocks, a proposal's header."""


class Core:
    def __init__(self, me: NodeId, committee: Committee, config: CoreConfig,
                 blocks: BlockRules, schedule: Schedule, tip_height: int = 0,
                 tip_digest: Any = None, votes: Iterable[tuple[Vote, Any]] = (),
                 tip_voters: Iterable[NodeId] | None = None) -> None:
        """`tip_*`: the last committed block (`tip_voters`: `blocks.voters` of it);
        `votes`: this validator's persisted votes (with the block of each PREPARE), which
        bind it after a restart."""
        self.me = me
        self.c = committee
        self.n, self.f, self.quorum = committee.n, committee.f, committee.quorum
        self.is_validator = me in committee.members
        self.config = config
        self.blocks = blocks
        self.schedule = schedule
        self.tip_height = tip_height
        self.tip_digest = tip_digest
        self._restored = [(v, b) for v, b in votes if v.height == tip_height + 1]
        self.protocol: ProtocolRules = rules_for(schedule.at(tip_height + 1))
        self.height = tip_height + 1
        self._pool = None if tip_voters is None else frozenset(tip_voters)
        self._applying_pool: frozenset[NodeId] | None = None
        self._tip_cert: Certificate | None = None
        """Our certificate of the tip, with the COMMITs that came after the quorum: the
        next block we build carries it, so its voters are who was heard from."""
        self._applying_cert: Certificate | None = None
        self._order = committee.proposer_order(
            self.height, self._pool if config.proposer_pool else None)
        """Proposers of rounds 0..n-1 at this height (see the module's rules)."""
        self.round = 0
        self.rounds: dict[int, RoundState] = {}
        self.rcs: dict[int, dict[NodeId, RoundChange]] = {}
        self.prepared: tuple[int, Any, tuple[tuple[NodeId, str], ...]] | None = None
        self.last_vote: tuple[int, Any, str, Any] | None = None
        self.sent_votes: dict[tuple[int, str], Any] = {}
        self.rc_log: list[tuple[int, float, str]] = []
        self.waiting: int | None = None
        """The round we asked to move to (sent ROUND-CHANGE for) and wait to enter."""
        self._my_rc: RoundChange | None = None
        self._echoed: dict[tuple[NodeId, int], float] = {}
        self.timers: dict[tuple[str, int, int], None] = {}
        self.buffer = FutureBuffer(config.window, self.n)
        self.started = False
        self.applying: int | None = None
        self._applying_digest: Any = None
        self._pending_sync: list[tuple[Any, Certificate, NodeId]] = []
        self._synced = 0
        self._last_sync_req = float("-inf")
        self._sync_wait: tuple[NodeId, float] | None = None
        """The one sync request in flight: (asked peer, sent at)."""
        self._given_up: dict[NodeId, float] = {}
        """Peers whose answer we stopped waiting for -> when we asked: a late answer
        still measures them (else a give-up time shorter than every true answer time
        would never grow)."""
        self._sync_rtt: float | None = None
        """Smoothed time from a sync request to its answer (sets the give-up time)."""
        self._peer_rtt: dict[NodeId, float] = {}
        """The same per peer: the fastest peer that has the blocks is asked."""
        self._sync_seq = 0
        self._peer_tips: dict[NodeId, int] = {}
        """Heights peers are known to have committed (signed answers and votes)."""
        self._sync_turn = 0
        self._hinted: dict[NodeId, float] = {}
        self._served: dict[NodeId, float] = {}
        self._served_at: dict[NodeId, float] = {}
        """The signed time of the last request served per peer (replays refused)."""
        self._lag_height = 0
        self._lag_peer: NodeId | None = None
        self.level = 0
        """Back-off steps carried across heights (see the module's rules)."""
        self.now = 0.0
        self.out: list[Any] = _NO_OUT

    # ---- the interface --------------------------------------------------------------
    def handle(self, event: Any, now: float) -> list[Any]:
        """Apply one event; return the effects for the driver, in order."""
        fn = _DISPATCH.get(type(event))
        if fn is None:
            raise TypeError(f"not a consensus event: {event!r}")
        self.now = now
        out: list[Any] = []
        self.out = out
        try:
            if self.started or type(event) is Start:
                fn(self, event)
        finally:
            self.out = _NO_OUT
        return out

    def proposer(self, height: int, round_: int) -> NodeId | None:
        """The proposer of (height, round_); None for another height than ours (its
        order depends on a block we have not committed)."""
        return self._order[round_ % self.n] if height == self.height else None

    def protocol_at(self, height: int) -> str:
        return self.schedule.at(height)

    # ---- hooks for the protocols' rules --------------------------------------------
    def prepare_count(self, rs: RoundState) -> int:
        if rs.proposal is None:
            return 0
        return rs.prepare_tally.get(rs.proposal.digest, 0)

    def send_commit(self, rs: RoundState) -> None:
        """Vote COMMIT for the current round's proposal (once)."""
        if rs.sent_commit or rs.proposal is None or rs.round != self.round:
            return
        rs.sent_commit = True
        self._vote(rs, "commit")
        self._check_commit_quorum(rs)

    def commit_on_prepares(self, rs: RoundState) -> None:
        """Commit on PREPAREs from all n (a fast certificate is valid at any time)."""
        digest = rs.proposal.digest
        votes = tuple(CertVote(v, "prepare", s) for v, (d, s, _) in rs.prepares.items()
                      if d == digest)
        if len(votes) == self.n:
            self._finalize(rs, Certificate(self.height, rs.round, digest, votes), True)

    def start_protocol_timer(self, rs: RoundState, delay: float) -> None:
        key = (PROTOCOL_TIMER, self.height, rs.round)
        if key not in self.timers:
            self.timers[key] = None
            self.out.append(StartTimer(PROTOCOL_TIMER, self.height, rs.round, delay))

    # ---- lifecycle -------------------------------------------------------------------
    def _on_start(self, ev: Start) -> None:
        if self.started:
            return
        self.started = True
        self._enter_height(self.tip_height + 1)
        if self.tip_height > 0:
            self._request_sync(None)

    def _enter_height(self, height: int) -> None:
        out = self.out
        for key in self.timers:
            out.append(CancelTimer(*key))
        self.timers.clear()
        self.height = height
        self._order = self.c.proposer_order(
            height, self._pool if self.config.proposer_pool else None)
        self._arm_sync_timer()
        self.round = 0
        self.rounds = {}
        self.rcs = {}
        self.prepared = None
        self.last_vote = None
        self.sent_votes = {}
        self.rc_log = []
        self.waiting = None
        self._my_rc = None
        self._echoed = {}
        left = 0
        if self._restored:
            for vote, block in self._restored:
                if vote.height != height:
                    continue
                if vote.phase == "rc":  # we asked to leave for this round before a restart
                    left = max(left, vote.round)
                    continue
                self.sent_votes[(vote.round, vote.phase)] = vote.digest
                if vote.phase == "prepare" and block is not None and (
                        self.last_vote is None or vote.round > self.last_vote[0]):
                    self.last_vote = (vote.round, vote.digest, vote.sig, block)
            self._restored = []
        name = self.schedule.at(height)
        if name != self.protocol.name:
            self.protocol = rules_for(name)
            out.append(Log("switch", {"height": height, "protocol": name}))
        self._start_round(0)
        if left:
            self._ask_round(left)  # bound by it: no vote below it; say it again
        for msg in self.buffer.take(height):
            if self.height != height or self.applying is not None:
                break  # committed meanwhile: the rest is stale
            self._current(msg, True)

    def _start_round(self, round_: int) -> None:
        h = self.height
        old = (ROUND_TIMER, h, self.round)
        if old in self.timers:
            del self.timers[old]
            self.out.append(CancelTimer(*old))
        self.round = round_
        self.waiting = None
        self.timers[(ROUND_TIMER, h, round_)] = None
        self.out.append(StartTimer(ROUND_TIMER, h, round_,
                                   self._round_timeout(round_)))
        if self.is_validator and self.proposer(h, round_) == self.me:
            if round_ == 0:
                lv = self.last_vote
                if lv is not None and lv[0] == 0 and lv[3].proposer == self.me:
                    self._propose(h, 0, lv[3], None)  # restarted: never a second block
                else:
                    self.out.append(WantBatch(h))
            else:
                self._maybe_propose_after_rc()

    def _round_timeout(self, round_: int) -> float:
        t = self.config.timeouts
        if not self.level:
            return t.round(round_)
        extra = t.first_round_extra if round_ == 0 else 0.0
        return t.round(round_ + self.level) + extra

    def _floor(self) -> int:
        """The lowest round we may still vote in: the one we asked for, else ours."""
        return self.waiting if self.waiting is not None else self.round

    def _rs(self, round_: int) -> RoundState:
        rs = self.rounds.get(round_)
        if rs is None:
            rs = self.rounds[round_] = RoundState(round_)
        return rs

    # ---- proposing -------------------------------------------------------------------
    def _on_batch_ready(self, ev: BatchReady) -> None:
        h = self.height
        if (ev.height != h or self.applying is not None or self.round != 0
                or self.waiting is not None  # the batch came after we left round 0
                or not self.is_validator or self.proposer(h, 0) != self.me
                or self._rs(0).proposed):
            return
        block = self.blocks.build(h, self.tip_digest, self.protocol.name, self.now,
                                  self._tip_cert)
        self._propose(h, 0, block, None)

    def _maybe_propose_after_rc(self) -> None:
        h, r = self.height, self.round
        if r == 0 or not self.is_validator or self.proposer(h, r) != self.me:
            return
        rs = self._rs(r)
        rcs = self.rcs.get(r)
        if rs.proposed or rcs is None or len(rcs) < self.quorum:
            return
        just = tuple(rcs.values())[: self.quorum]
        forced = select_value(just, self.f)
        if type(forced) is BlockRef:
            forced = self._known_block(forced.digest)
            if forced is None:  # sent to us by digest only: cannot re-propose it
                self.out.append(Log("stale_proposal", {"height": h, "round": r,
                                                       "reason": "forced block unknown"}))
                return
        if forced is not None:
            self.out.append(Log("reproposal", {"height": h, "round": r}))
            block = forced
        else:
            block = self.blocks.build(h, self.tip_digest, self.protocol.name, self.now,
                                      self._tip_cert)
        self._propose(h, r, block, just)

    def _known_block(self, digest: Any) -> Any:
        """A block of this height with `digest` that we hold in full, or None."""
        for rs in self.rounds.values():
            if rs.proposal is not None and rs.proposal.digest == digest:
                return rs.proposal
        for by in self.rcs.values():
            for rc in by.values():
                for x in (rc.prepared, rc.voted):
                    if x is not None and x.block.digest == digest \
                            and type(x.block) is not BlockRef:
                        return x.block
        return None

    def _propose(self, h: int, r: int, block: Any,
                 just: tuple[RoundChange, ...] | None) -> None:
        self._rs(r).proposed = True
        p = Proposal(h, r, self.me, block, just)
        sig = self.c.auth.sign(p)
        if sig:
            p = Proposal(h, r, self.me, block, just, sig)
        self.out.append(Broadcast(p))
        self._on_proposal(p, True)

    # ---- messages for (height, round) --------------------------------------------------
    def _on_message(self, msg: Any) -> None:
        sender = msg.sender
        if sender not in self.c.members or msg.round < 0 or msg.height < 1:
            self._reject("consensus", f"bad header from {sender!r}")
            return
        h = msg.height
        if self.applying is not None:
            if h > self.height:
                self._keep_future(msg)
            elif h == self.height and type(msg) is Vote:
                self._applying_cert = self._late_commit(msg, self._applying_cert)
            return
        if h == self.height:
            if msg.round > self.round + self.config.window.rounds_ahead:
                self._drop("round beyond window", sender)
                return
            self._current(msg, False)
        elif h > self.height:
            self._keep_future(msg)
        elif h == self.height - 1 and type(msg) is Vote:
            self._tip_cert = self._late_commit(msg, self._tip_cert)
        elif h < self.height - 1 or type(msg) is RoundChange:
            # A vote one height behind is the normal tail of the last height (its sender
            # commits as soon as the quorum's votes reach it); only a sender further
            # behind, or timing out there, needs our blocks: a hint, if it is who it says.
            if self.c.auth.verify(msg):
                self._help(sender, h)
            else:
                self._reject(_kind(msg), f"bad signature from {sender} (height {h})")

    def _late_commit(self, v: Vote, cert: Certificate | None) -> Certificate | None:
        """`cert` with `v` added if `v` is a valid COMMIT for it from a validator it does
        not name yet (one check per validator and height at most: n - q of them)."""
        if (cert is None or v.phase != "commit" or v.round != cert.round
                or v.digest != cert.digest or cert.votes and cert.votes[0].phase != "commit"
                or any(x.validator == v.sender for x in cert.votes)):
            return cert
        if not self.c.auth.verify(v):
            self._reject("commit", f"bad commit signature from {v.sender}")
            return cert
        return Certificate(cert.height, cert.round, cert.digest,
                           cert.votes + (CertVote(v.sender, "commit", v.sig),))

    def _current(self, msg: Any, verified: bool) -> None:
        t = type(msg)
        if t is Vote:
            self._on_vote(msg, verified)
        elif t is Proposal:
            self._on_proposal(msg, verified)
        else:
            self._on_round_change(msg, verified)

    def _keep_future(self, msg: Any) -> None:
        h, sender, w = msg.height, msg.sender, self.config.window
        if h > self.height + w.heights_ahead or msg.round > w.rounds_ahead:
            self._drop("height or round beyond window", sender)
            self._request_sync(sender)
            return
        t = type(msg)
        try:
            self._precheck(msg)
        except Invalid as exc:
            self._reject(_kind(msg), str(exc))
            return
        self._saw_tip(sender, h - 1)
        key = (t.__name__, h, msg.round, sender, msg.phase if t is Vote else "")
        if not self.buffer.add(key, h, sender, msg, self._size(msg)):
            self._drop("buffer full", sender)
        if h > self.height + 1 or t is RoundChange:
            self._request_sync(sender)
        elif t is not Proposal:
            self._lag_check(sender)

    def _precheck(self, msg: Any) -> None:
        """What can be checked before this validator reaches the message's height."""
        t = type(msg)
        if t is RoundChange:
            check_round_change(self.c, msg, msg.height)
        elif not self.c.auth.verify(msg):  # a proposal's proposer: checked at its height
            raise Invalid(f"bad {_kind(msg)} signature from {msg.sender}")

    def _size(self, msg: Any, omit: Any = None) -> int:
        t = type(msg)
        if t is Vote:
            return _MSG_BYTES
        if t is Proposal:  # its justification's round changes do not repeat its block
            extra = sum(self._size(rc, msg.block.digest) for rc in msg.justification or ())
            return _MSG_BYTES + self.blocks.size(msg.block) + extra
        blocks = {x.block.digest: x.block for x in (msg.prepared, msg.voted)
                  if x is not None and x.block.digest != omit and type(x.block) is not BlockRef}
        return _MSG_BYTES + sum(self.blocks.size(b) for b in blocks.values())

    def _on_proposal(self, p: Proposal, verified: bool) -> None:
        h, r, sender = self.height, p.round, p.sender
        w = self.waiting
        if r < self.round or (w is not None and self.round < r < w):
            if sender == self.proposer(h, r):
                self.out.append(Log("stale_proposal", {"height": h, "round": r}))
            else:
                self._reject("proposal", f"proposal h={h} r={r} from {sender} not expected")
            return
        if sender != self.proposer(h, r):
            self._reject("proposal", f"proposal h={h} r={r} from {sender} not expected")
            return
        if not verified and not self.c.auth.verify(p):
            self._reject("proposal", f"bad proposal signature from {sender}")
            return
        block = p.block
        rs = self._rs(r)
        if rs.proposal is not None:
            if rs.proposal.digest != block.digest:
                self.out.append(Log("equivocation", {"height": h, "round": r,
                                                     "proposer": sender}))
            return
        try:
            if block.height != h:
                raise Invalid(f"height {block.height}, expected {h}")
            if r > 0:
                forced = justified_value(self.c, p.justification, h, r)
                if forced is not None and forced.digest != block.digest:
                    raise Invalid("proposal ignores the value its round-change quorum forces")
                if forced is None and block.proposer != sender:
                    raise Invalid("a fresh block must be made by the round's proposer")
            elif block.proposer != sender:
                raise Invalid("round-0 block must be made by its proposer")
            if block.protocol != self.protocol.name:
                raise Invalid(f"protocol '{block.protocol}', expected '{self.protocol.name}'")
            problem = self.blocks.check(block, self.tip_digest)
            if problem is not None:
                raise Invalid(problem)
        except Invalid as exc:
            self._reject("proposal", f"h={h} r={r} from {sender}: {exc}")
            return
        if self.sent_votes.get((r, "prepare"), block.digest) != block.digest:
            self._reject("proposal", f"h={h} r={r}: voted for another block before a restart")
            return
        if r > self.round:
            self.rc_log.append((r, self.now, "justified-proposal"))
            self._start_round(r)
        rs.proposal = block
        rs.proposal_at = self.now
        self._vote(rs, "prepare")
        self.protocol.on_proposal(self, rs)
        if self.height == h and self.applying is None:  # COMMITs may have come first
            self._check_commit_quorum(rs)

    def _vote(self, rs: RoundState, phase: str) -> None:
        if not self.is_validator:
            return
        block = rs.proposal
        digest = block.digest
        r = rs.round
        if r < self._floor():
            return  # we asked to leave this round: no more votes in it
        if self.sent_votes.get((r, phase), digest) != digest:
            return  # never two different votes in one round, even across restarts
        self.sent_votes[(r, phase)] = digest
        vote = Vote(phase, self.height, r, self.me, digest)
        sig = self.c.auth.sign(vote)
        if sig:
            vote = Vote(phase, self.height, r, self.me, digest, sig)
        prepare = phase == "prepare"
        self.out.append(PersistVote(vote, block if prepare else None))
        self.out.append(Broadcast(vote))
        if prepare:
            rs.prepares[self.me] = (digest, sig, self.now)
            rs.prepare_tally[digest] = rs.prepare_tally.get(digest, 0) + 1
            self.last_vote = (r, digest, sig, block)
            self._update_prepared(rs)
        else:
            rs.commits[self.me] = (digest, sig, self.now)
            rs.commit_tally[digest] = rs.commit_tally.get(digest, 0) + 1

    def _on_vote(self, v: Vote, verified: bool) -> None:
        prepare = v.phase == "prepare"
        if not prepare and v.phase != "commit":
            self._reject("consensus", f"unknown vote phase {v.phase!r}")
            return
        known = self.rounds.get(v.round)
        if known is not None and v.sender in (known.prepares if prepare else known.commits):
            return
        if not verified and not self.c.auth.verify(v):  # before any state (issue 18)
            self._reject(v.phase, f"bad {v.phase} signature from {v.sender}")
            return
        rs = known if known is not None else self._rs(v.round)
        votes = rs.prepares if prepare else rs.commits
        votes[v.sender] = (v.digest, v.sig, self.now)
        tally = rs.prepare_tally if prepare else rs.commit_tally
        tally[v.digest] = tally.get(v.digest, 0) + 1
        if self.config.log_votes:
            self.out.append(Log("vote", {"height": self.height, "round": v.round,
                                         "phase": v.phase, "validator": v.sender}))
        if prepare:
            if rs.proposal is not None and v.digest == rs.proposal.digest:
                self._update_prepared(rs)
                if v.round == self.round:
                    self.protocol.on_prepare(self, rs)
        else:
            self._check_commit_quorum(rs)

    def _update_prepared(self, rs: RoundState) -> None:
        if self.prepared is not None and self.prepared[0] >= rs.round:
            return
        if self.prepare_count(rs) < self.quorum:
            return
        digest = rs.proposal.digest
        votes = tuple((v, s) for v, (d, s, _) in rs.prepares.items() if d == digest)
        self.prepared = (rs.round, rs.proposal, votes)

    def _check_commit_quorum(self, rs: RoundState) -> None:
        if rs.proposal is None:
            if rs.commit_tally and max(rs.commit_tally.values()) >= self.quorum:
                # Committed elsewhere: the (verified) committers will have the block.
                digest = max(rs.commit_tally, key=rs.commit_tally.__getitem__)
                for v, (d, _, _) in rs.commits.items():
                    if d == digest and v != self.me:
                        self._saw_tip(v, self.height)
                self._request_sync(None)
            return
        digest = rs.proposal.digest
        if rs.commit_tally.get(digest, 0) < self.quorum:
            return
        votes = tuple(CertVote(v, "commit", s) for v, (d, s, _) in rs.commits.items()
                      if d == digest)
        self._finalize(rs, Certificate(self.height, rs.round, digest, votes), False)

    # ---- commit ----------------------------------------------------------------------
    def _finalize(self, rs: RoundState, cert: Certificate, fast: bool) -> None:
        block = rs.proposal
        h = self.height
        if block.height != h or self.applying is not None:
            return
        votes = [(v, "prepare", t) for v, (_, _, t) in rs.prepares.items()]
        votes += [(v, "commit", t) for v, (_, _, t) in rs.commits.items()]
        votes.sort(key=_received_at)
        heard = rs.prepares.keys() | rs.commits.keys()
        if self.config.carry_backoff:
            self.level = min(self.level + 1, 64) if rs.round else max(self.level - 1, 0)
        info = CommitInfo(h, rs.round, fast, rs.proposal_at, self.now, tuple(votes),
                          tuple(self.rc_log),
                          tuple(v for v in self.c.validators if v not in heard))
        self._commit(block, cert, info)

    def _commit(self, block: Any, cert: Certificate, info: CommitInfo) -> None:
        self.schedule.on_commit(block.height, self.blocks.switches(block))
        self._applying_pool = self.blocks.voters(block)
        self._applying_cert = cert
        self.applying = block.height
        self._applying_digest = block.digest
        self.out.append(Commit(block, cert, info))

    def _on_applied(self, ev: Applied) -> None:
        if self.applying != ev.height:
            return
        self.applying = None
        self.tip_height = ev.height
        self.tip_digest = self._applying_digest
        self._pool = self._applying_pool
        self._tip_cert = self._applying_cert
        if self._pending_sync:
            self._next_synced()
            if self.applying is not None:
                return
        if self._synced:
            self.out.append(Log("sync", {"added": self._synced, "height": self.tip_height}))
            self._synced = 0
        self._enter_height(self.tip_height + 1)

    # ---- round changes ----------------------------------------------------------------
    def _on_timer(self, ev: TimerFired) -> None:
        key = (ev.kind, ev.height, ev.round)
        if key not in self.timers:
            return  # cancelled, or from before a restart
        del self.timers[key]
        if self.applying is not None or ev.height != self.height:
            return
        if ev.kind == ROUND_TIMER:
            if ev.round == self.round:
                self._on_round_timeout(ev.round)
        elif ev.kind == PROTOCOL_TIMER:
            rs = self.rounds.get(ev.round)
            if rs is not None:
                self.protocol.on_timer(self, rs)
        elif ev.kind == LAG_TIMER:
            self._request_sync(self._lag_peer)
        elif ev.kind == SYNC_TIMER and self._sync_wait is not None:
            self._request_sync(None, urgent=True)  # unanswered: ask the next peer
            if not any(k[0] == SYNC_TIMER for k in self.timers):
                self._arm_sync_timer()  # not due yet (its answer time grew): wait on

    def _on_round_timeout(self, round_: int) -> None:
        h = self.height
        self._request_sync(None)
        # Decided elsewhere (a verified message or answer from a later height): the blocks
        # come by sync; a ROUND-CHANGE (it carries our locked block) would only load our
        # link. (Issue 17: a validator behind a 3 Mbit/s link re-sent 120 KB round changes
        # to six peers and buried its own uplink.)
        behind = any(t >= h for t in self._peer_tips.values())
        if not behind and self.waiting is None and self.is_validator:
            self.rc_log.append((round_ + 1, self.now, "timeout"))
            self.out.append(Log("round_change", {"height": h, "round": round_ + 1,
                                                 "reason": "timeout"}))
            self._ask_round(round_ + 1)
        elif not behind and self._my_rc is not None:
            self._say(self._my_rc)  # still no certificate: say it again
        if self.round == round_ and self.height == h:  # not entered a round meanwhile
            wanted = round_ + 1 if behind or self.waiting is None else self.waiting
            self.timers[(ROUND_TIMER, h, round_)] = None
            self.out.append(StartTimer(ROUND_TIMER, h, round_,
                                       self._round_timeout(wanted)))

    def _ask_round(self, round_: int) -> None:
        """Leave our round for `round_`: stop voting, send ROUND-CHANGE, wait for a
        certificate (entered at once if we complete one)."""
        if not self.is_validator:
            return
        prepared = voted = None
        if self.prepared is not None:
            pr, pblock, pvotes = self.prepared
            prepared = PreparedCert(pr, pblock, pvotes)
        if self.last_vote is not None:
            vr, _, vsig, vblock = self.last_vote
            voted = VoteClaim(vr, vblock, vsig)
        rc = RoundChange(self.height, round_, self.me, prepared, voted)
        sig = self.c.auth.sign(rc)
        if sig:
            rc = RoundChange(self.height, round_, self.me, prepared, voted, sig)
        self.waiting = round_
        self._my_rc = rc
        self.out.append(PersistVote(Vote("rc", self.height, round_, self.me, "", rc.sig)))
        self._say(rc)
        self.rcs.setdefault(round_, {})[self.me] = rc
        self._check_certificate(round_)

    def _check_certificate(self, round_: int) -> None:
        """Enter `round_` if we hold q ROUND-CHANGEs for it and may vote there."""
        if round_ <= self.round or round_ < self._floor():
            return
        if len(self.rcs.get(round_, ())) < self.quorum:
            return
        self.rc_log.append((round_, self.now, "certificate"))
        self.out.append(Log("round_change", {"height": self.height, "round": round_,
                                             "reason": "certificate"}))
        self._start_round(round_)

    def _on_round_change(self, rc: RoundChange, verified: bool) -> None:
        r, sender = rc.round, rc.sender
        seen = self.rcs.get(r)
        if seen is not None and sender in seen:
            if seen[sender] == rc:  # the same (verified) one again: it is still waiting
                self._echo(sender, r)
            return
        if not verified:
            try:
                check_round_change(self.c, rc, self.height)
            except Invalid as exc:
                self._reject("rc", f"from {sender}: {exc}")
                return
        held = self.rcs.setdefault(r, {})
        if not (_is_light(rc) and sender in held):  # a copy with blocks beats one without
            held[sender] = rc
        floor = self._floor()
        if r > self.round:
            self._check_certificate(r)
        if self.height != rc.height or self.applying is not None:
            return
        if r > floor and self.is_validator:
            # f+1 validators asked for rounds above ours: at least one honest one timed
            # out there; ask for the (f+1)-th highest too.
            highest: dict[NodeId, int] = {}
            for rr, by in self.rcs.items():
                if rr > floor:
                    for v in by:
                        if rr > highest.get(v, -1):
                            highest[v] = rr
            ahead = sorted(highest.values(), reverse=True)
            if len(ahead) >= self.f + 1 and ahead[self.f] > floor:
                target = ahead[self.f]
                self.rc_log.append((target, self.now, "f+1 round changes"))
                self._ask_round(target)
        else:
            self._echo(sender, r)
        if r == self.round and self.waiting is None:
            self._maybe_propose_after_rc()

    def _echo(self, peer: NodeId, r: int) -> None:
        """`peer` asks for round r, below ours: send it our ROUND-CHANGE for r (if we sent
        one) and our latest, at most once per base timeout per peer and round: what it
        missed of a certificate."""
        if r >= self._floor() or _rate_limited(self._echoed, (peer, r), self.now,
                                       self.config.timeouts.base):
            return
        mine = self.rcs.get(r, {}).get(self.me)
        if mine is not None and mine is not self._my_rc:
            self._say(mine, peer)
        if self._my_rc is not None:
            self._say(self._my_rc, peer)

    def _say(self, rc: RoundChange, to: NodeId | None = None) -> None:
        """Send our ROUND-CHANGE to `to` (None: every other validator): with its blocks
        to the proposer of its round, who may have to re-propose one; by digest to the
        others, who only count it and check a justification against the proposal."""
        target = self.proposer(rc.height, rc.round)
        light = _light(rc)
        for peer in (self.c.validators if to is None else (to,)):
            if peer != self.me:
                self.out.append(Send(peer, rc if peer == target else light))

    # ---- state transfer ---------------------------------------------------------------
    # Pull, one request in flight (issue 17: pushed batches from every peer, and a
    # request to all peers every 0.25 s, buried a validator behind a 3 Mbit/s link under
    # copies of the same blocks). A lagging validator asks ONE peer, the fastest of those
    # known to have its next block (`_sync_target`), for blocks from that height; the
    # answer is bounded in blocks and bytes; when it says there is more, the next request
    # goes at once, so a thin link carries each block once, back to back. An unanswered
    # request is given up (`_sync_give_up`) and the next peer is asked. A validator that
    # sees a peer working on a height it committed sends it only a hint (its tip).
    def _next_needed(self) -> int:
        return self.tip_height + 1 + len(self._pending_sync) + (self.applying is not None)

    def _saw_tip(self, peer: NodeId, height: int) -> None:
        if height > self._peer_tips.get(peer, 0):
            self._peer_tips[peer] = height

    def _sync_target(self, hint: NodeId | None) -> NodeId | None:
        """The peer to ask: of those known to have our next block (and `hint`, a peer that
        just showed it is ahead), the one that answered fastest; a peer never asked counts
        as average. Else the next validator in turn. (Issue 17: a healed validator kept
        asking the one behind a 3 Mbit/s link, whose answers then filled that link.)"""
        need = self._next_needed()
        ahead = {v for v, t in self._peer_tips.items() if t >= need and v != self.me}
        if hint is not None and hint != self.me:
            ahead.add(hint)
        if ahead:
            avg = self._sync_rtt or 0.0
            self._sync_turn += 1
            n, turn, index = self.n, self._sync_turn, self.c.validators.index
            return min(ahead, key=lambda v: (self._peer_rtt.get(v, avg), v != hint,
                                             (index(v) - turn) % n))
        others = [v for v in self.c.validators if v != self.me]
        if not others:
            return None
        self._sync_turn += 1
        return others[self._sync_turn % len(others)]

    def _sync_give_up(self) -> float:
        """Seconds to wait for an answer: 3 smoothed answer times, within
        [2 * sync_interval, sync_timeout] (1 s before the first answer)."""
        rtt = self._sync_rtt
        floor = 2 * self.config.sync_interval
        guess = 1.0 if rtt is None else 3 * rtt
        return min(max(guess, floor), self.config.sync_timeout)

    def _request_sync(self, peer: NodeId | None, urgent: bool = False) -> None:
        now = self.now
        wait = self._sync_wait
        if wait is not None:
            if now - wait[1] < self._sync_give_up() - 1e-9:
                return  # one request in flight
            # It did not answer in time: rank it behind every peer that answered in that
            # time (twice the wait, doubling while it stays silent: a crashed peer
            # otherwise stayed first in line, its give-up time below the live peers'
            # true answer times), and ask someone else.
            peer, asked = wait
            self._peer_rtt[peer] = 2 * max(self._peer_rtt.get(peer, 0.0), now - asked)
            self._given_up[peer] = asked
            self._sync_wait = None
        if not urgent and now - self._last_sync_req < self.config.sync_interval:
            return
        target = self._sync_target(peer)
        if target is None:
            return
        self._last_sync_req = now
        self._sync_wait = (target, now)
        start = self._next_needed()
        req = SyncRequest(self.me, start, now)
        sig = self.c.auth.sign(req)
        if sig:
            req = SyncRequest(self.me, start, now, sig)
        self.out.append(RequestSync(target, req))
        self._arm_sync_timer()

    def _arm_sync_timer(self) -> None:
        """Wake up when the request in flight is due to be given up (one timer)."""
        wait = self._sync_wait
        if wait is None:
            return
        for key in [k for k in self.timers if k[0] == SYNC_TIMER]:
            del self.timers[key]
            self.out.append(CancelTimer(*key))
        self._sync_seq += 1
        self.timers[(SYNC_TIMER, self.height, self._sync_seq)] = None
        left = max(self._sync_give_up() - (self.now - wait[1]), 0.0)
        self.out.append(StartTimer(SYNC_TIMER, self.height, self._sync_seq, left))

    def _lag_check(self, peer: NodeId) -> None:
        """A peer votes one height ahead: our commit votes are usually in flight, so ask
        for blocks only if we are still at this height after a grace period."""
        h = self.height
        if self._lag_height == h:
            return
        self._lag_height, self._lag_peer = h, peer
        self.timers[(LAG_TIMER, h, 0)] = None
        self.out.append(StartTimer(LAG_TIMER, h, 0, self.config.lag_grace))

    def _help(self, peer: NodeId, height: int) -> None:
        """A peer is still working on a height we committed: tell it our tip (a hint no
        bigger than its message; it asks one peer for the blocks)."""
        if _rate_limited(self._hinted, peer, self.now, self.config.sync_interval):
            return
        self.out.append(ServeSync(peer, self.tip_height + 1, 0))

    def _on_sync_request(self, req: SyncRequest) -> None:
        if req.sender not in self.c.members or not self.c.auth.verify(req):
            self._reject("sync", f"unsigned or unknown sync message from {req.sender!r}")
            return
        last = self._served_at.get(req.sender, float("-inf"))
        if req.at <= last or abs(self.now - req.at) > self.config.sync_fresh:
            self._reject("sync", f"stale or replayed sync request from {req.sender} "
                         f"(signed at {req.at:.3f}, last served {last:.3f}, now {self.now:.3f})")
            return
        if req.start < 1 or _rate_limited(self._served, req.sender, self.now,
                                          self.config.sync_interval / 4):
            return
        self._served_at[req.sender] = req.at
        self.out.append(ServeSync(req.sender, req.start, self.config.sync_batch,
                                  self.config.sync_bytes))

    def _on_sync_response(self, resp: SyncResponse) -> None:
        sender = resp.sender
        if sender not in self.c.members or not self.c.auth.verify(resp):
            self._reject("sync", f"unsigned or unknown sync message from {sender!r}")
            return
        self._saw_tip(sender, resp.tip)
        wait = self._sync_wait
        asked: float | None = None
        answered = wait is not None and wait[0] == sender
        if wait is not None and answered:
            asked = wait[1]
            self._sync_wait = None
        elif resp.blocks:  # a late answer to a request we gave up (a hint carries none)
            asked = self._given_up.pop(sender, None)
        if asked is not None:
            sample = self.now - asked
            rtt = self._sync_rtt
            self._sync_rtt = sample if rtt is None else 0.75 * rtt + 0.25 * sample
            mine = self._peer_rtt.get(sender)
            self._peer_rtt[sender] = sample if mine is None else 0.5 * mine + 0.5 * sample
        expected = self._next_needed()
        added = 0
        for block, cert in resp.blocks:
            if block.height < expected:
                continue  # already ours
            if block.height != expected:
                self._reject("sync", f"block {block.height} from {sender}: expected {expected}")
                self._peer_tips.pop(sender, None)
                return
            self._pending_sync.append((block, cert, sender))
            expected += 1
            added += 1
        if added and self.applying is None:
            self._next_synced()
        if resp.tip >= self._next_needed():
            # It has more: ask again now (an answer or a hint; one request in flight).
            self._request_sync(sender, urgent=answered or not added)

    def _next_synced(self) -> None:
        while self._pending_sync:
            block, cert, sender = self._pending_sync.pop(0)
            h = self.tip_height + 1
            if block.height != h:
                continue
            expected = self.schedule.at(h)
            if block.protocol != expected:
                problem: str | None = f"protocol '{block.protocol}', expected '{expected}'"
            elif cert.height != h or cert.digest != block.digest:
                problem = "certificate is for another block"
            else:
                problem = (self.blocks.check(block, self.tip_digest)
                           or certificate_problem(self.c, cert))
            if problem is not None:
                self._reject("sync", f"block {h} from {sender}: {problem}")
                self._pending_sync.clear()
                self._peer_tips.pop(sender, None)
                return
            fast = all(v.phase == "prepare" for v in cert.votes)
            self._synced += 1
            self._commit(block, cert, CommitInfo(h, cert.round, fast, self.now, self.now,
                                                 synced=True))
            return

    # ---- protocol switch ----------------------------------------------------------------
    def _on_switch(self, ev: SwitchProtocol) -> None:
        try:
            rules_for(ev.protocol)
        except ValueError as exc:
            self._reject("switch", str(exc))
            return
        if ev.height <= self.height:
            self._reject("switch", f"switch to {ev.protocol} at height {ev.height}: this "
                         f"validator already runs height {self.height}")
            return
        self.schedule.decide(ev.protocol, ev.height)

    # ---- records ----------------------------------------------------------------------
    def _reject(self, what: str, detail: str) -> None:
        self.out.append(Log("reject", {"what": what, "detail": detail}))

    def _drop(self, reason: str, sender: NodeId) -> None:
        self.out.append(Log("dropped", {"reason": reason, "from": sender}))


def _light(rc: RoundChange) -> RoundChange:
    """The same ROUND-CHANGE (same signature: it signs digests) naming blocks by digest."""
    p, v = rc.prepared, rc.voted
    return RoundChange(
        rc.height, rc.round, rc.sender,
        None if p is None else PreparedCert(p.round, BlockRef(p.block.digest, rc.height),
                                            p.votes),
        None if v is None else VoteClaim(v.round, BlockRef(v.block.digest, rc.height), v.sig),
        rc.sig)


def _is_light(rc: RoundChange) -> bool:
    return any(x is not None and type(x.block) is BlockRef for x in (rc.prepared, rc.voted))


def _kind(msg: Any) -> str:
    t = type(msg)
    if t is Vote:
        return str(msg.phase)
    return "proposal" if t is Proposal else "rc"


def _received_at(v: tuple[NodeId, str, float]) -> float:
    return v[2]


def _rate_limited(last: dict[Any, float], peer: Any, now: float, gap: float) -> bool:
    """True if `peer` was let through less than `gap` ago; else note it (bounded)."""
    t = last.get(peer)
    if t is not None and now - t < gap:
        return True
    if len(last) > 10_000:
        last.clear()
    last[peer] = now
    return False


_DISPATCH: dict[type, Any] = {
    Start: Core._on_start,
    Proposal: Core._on_message,
    Vote: Core._on_message,
    RoundChange: Core._on_message,
    TimerFired: Core._on_timer,
    BatchReady: Core._on_batch_ready,
    Applied: Core._on_applied,
    SyncRequest: Core._on_sync_request,
    SyncResponse: Core._on_sync_response,
    SwitchProtocol: Core._on_switch,
}
