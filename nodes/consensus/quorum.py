"""The one quorum rule of every protocol here, and what a commit certificate must show.

n validators tolerate f = (n - 1) // 3 Byzantine ones. A quorum is

    q = ceil((n + f + 1) / 2)  (= (n + f) // 2 + 1, IBFT 2.0's and QBFT's quorum)

Why this number (the intersection argument):
- Safety: two quorums Q1, Q2 of one set of n share |Q1 & Q2| >= 2q - n >= f + 1
  validators, so at least one honest validator is in both. An honest validator votes
  once per (height, round, phase), so two different blocks can never both gather a
  quorum of PREPAREs (or of COMMITs) in one round, and a round-change quorum always
  contains an honest member of any quorum that prepared or committed before it.
- Liveness: q <= n - f whenever n >= 3f + 1, so the honest validators alone form a
  quorum and f silent ones cannot stop the chain.
- Why not n - f (the twin's old rule): it is also safe, but for n = 3f + 2 and
  n = 3f + 3 it waits for more votes than safety needs (n = 6: 5 instead of 4), so the
  twin predicted a slower chain than the validators run. Below 2f + 1 it never goes:
  q >= 2f + 1 for every n >= 3f + 1, which BigFoot's re-proposal rule relies on
  (a quorum holds >= f + 1 honest validators).

A block is committed by a certificate of q COMMIT votes for it in one round, or of
PREPARE votes from all n in one round (BigFoot's fast path: with all n prepared, every
quorum that follows holds q - f >= f + 1 honest validators that report that vote, so a
round change must re-propose the block; see `values.select_value`).
"""

from __future__ import annotations


def fault_tolerance(n: int) -> int:
    """f: Byzantine validators n tolerates."""
    if n < 1:
        raise ValueError(f"need at least one validator, got n={n}")
    return (n - 1) // 3


def quorum_size(n: int) -> int:
    """q = ceil((n + f + 1) / 2): any two quorums share an honest validator."""
    return (n + fault_tolerance(n)) // 2 + 1
