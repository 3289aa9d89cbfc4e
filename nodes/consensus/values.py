"""Locks and values: what a round change proves, what it forces, what a certificate is.

A validator is locked on the highest block it saw q PREPAREs for at this height (its
prepared certificate) and remembers its own last PREPARE. Both travel in its
ROUND-CHANGE. The proposer of round r > 0 needs q valid ROUND-CHANGEs for r and must
re-propose the value they force (`select_value`); every validator re-checks that
justification before it prepares. That is how nothing that may have committed - by q
COMMITs or by BigFoot's n PREPAREs - is ever replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from nodes.consensus.messages import Certificate, NodeId, RoundChange, Vote
from nodes.consensus.ports import Authenticator
from nodes.consensus.quorum import fault_tolerance, quorum_size


class Invalid(ValueError):
    """A message or certificate failed a check; the text says which."""


class Committee:
    """The validator set of a chain with its fault tolerance, quorum and keys."""

    def __init__(self, validators: Sequence[NodeId], auth: Authenticator) -> None:
        self.validators = tuple(validators)
        if len(set(self.validators)) != len(self.validators):
            raise ValueError(f"validators must be unique, got {self.validators}")
        self.members = frozenset(self.validators)
        self.n = len(self.validators)
        self.f = fault_tolerance(self.n)
        self.quorum = quorum_size(self.n)
        self.auth = auth

    def proposer(self, height: int, round_: int) -> NodeId:
        """Round-robin: validators[(height + round) % n] (the order with no pool)."""
        return self.validators[(height + round_) % self.n]

    def proposer_order(self, height: int, pool: frozenset[NodeId] | None) -> tuple[NodeId, ...]:
        """The proposers of rounds 0, 1, ... n-1 at `height`: the round-robin order from
        validators[height % n], validators in `pool` first (each group in that order).

        `pool` is who voted in the certificate the chain's tip block carries (of the block
        before it), the same on every validator that committed the tip. A validator cut
        off or crashed is missing from it one block later and proposes only after every
        validator that was heard from had a round (issue 17: two partitioned validators
        in a row as round 0 and round 1 proposers held the healed chain for 2.6 s). None
        or a pool naming no validator: plain round robin."""
        rot = tuple(self.validators[(height + k) % self.n] for k in range(self.n))
        if not pool or not pool & self.members:
            return rot
        return tuple(v for v in rot if v in pool) + tuple(v for v in rot if v not in pool)

    def __deepcopy__(self, memo: dict[int, Any]) -> Committee:
        return self  # immutable once built; the authenticator holds no per-run state


def check_round_change(c: Committee, rc: RoundChange, height: int) -> None:
    """Validate a ROUND-CHANGE completely; raises Invalid saying why."""
    if rc.sender not in c.members:
        raise Invalid("round change from an unknown sender")
    if rc.height != height:
        raise Invalid("round change header does not match")
    if not c.auth.verify(rc):
        raise Invalid("bad round-change signature")
    p = rc.prepared
    if p is not None:
        if not 0 <= p.round < rc.round or p.block.height != height:
            raise Invalid("malformed prepared certificate")
        ok: set[NodeId] = set()
        digest = p.block.digest
        for validator, sig in p.votes:
            if validator in c.members and validator not in ok and c.auth.verify(
                Vote("prepare", height, p.round, validator, digest, sig)
            ):
                ok.add(validator)
        if len(ok) < c.quorum:
            raise Invalid(f"prepared certificate has {len(ok)} valid prepares")
    v = rc.voted
    if v is not None:
        if not 0 <= v.round < rc.round or v.block.height != height:
            raise Invalid("malformed last vote")
        if not c.auth.verify(Vote("prepare", height, v.round, rc.sender, v.block.digest, v.sig)):
            raise Invalid("bad last-vote signature")


def select_value(rcs: Iterable[RoundChange], f: int) -> Any | None:
    """The block a round-change quorum forces the new proposer to re-propose, if any.

    Candidates: each prepared certificate (q PREPAREs at round p), and any value with
    PREPARE votes from f+1 senders at one round (BigFoot may have fast-committed it: all
    n voted for it, so at least f+1 honest members of any quorum report that vote).
    The highest round wins; at equal rounds a prepared certificate wins; at equal rank
    the first in the quorum's order.
    """
    best: tuple[int, int] | None = None
    block: Any = None
    claims: dict[tuple[int, Any], list[Any]] = {}
    for rc in rcs:
        p = rc.prepared
        if p is not None and (best is None or (p.round, 1) > best):
            best, block = (p.round, 1), p.block
        v = rc.voted
        if v is not None:
            claims.setdefault((v.round, v.block.digest), []).append(v.block)
    for (vr, _), seen in claims.items():
        if len(seen) >= f + 1 and (best is None or (vr, 0) > best):
            best, block = (vr, 0), seen[0]
    return block


def justified_value(c: Committee, just: tuple[RoundChange, ...] | None, height: int,
                    round_: int) -> Any | None:
    """Check a round-r proposal's justification; return the value it forces (or None).

    Raises Invalid unless it holds q valid ROUND-CHANGEs for this (height, round) from
    distinct validators."""
    if just is None:
        raise Invalid("round > 0 proposal without round-change justification")
    senders: set[NodeId] = set()
    good: list[RoundChange] = []
    for rc in just:
        if rc.round != round_ or rc.sender in senders:
            continue
        try:
            check_round_change(c, rc, height)
        except Invalid:
            continue
        senders.add(rc.sender)
        good.append(rc)
    if len(good) < c.quorum:
        raise Invalid(f"justification has {len(good)} valid round changes, need {c.quorum}")
    return select_value(good, c.f)


def certificate_problem(c: Committee, cert: Certificate) -> str | None:
    """None if `cert` holds q valid COMMITs or valid PREPAREs from all n, else why not."""
    good: dict[str, set[NodeId]] = {"prepare": set(), "commit": set()}
    for vote in cert.votes:
        seen = good.get(vote.phase)
        if seen is None or vote.validator not in c.members or vote.validator in seen:
            continue
        if c.auth.verify(Vote(vote.phase, cert.height, cert.round, vote.validator,
                              cert.digest, vote.sig)):
            seen.add(vote.validator)
    if len(good["commit"]) >= c.quorum or len(good["prepare"]) == c.n:
        return None
    return (f"certificate for height {cert.height} has {len(good['commit'])} valid commits"
            f" (need {c.quorum}) and {len(good['prepare'])} valid prepares"
            f" (fast path needs {c.n})")
