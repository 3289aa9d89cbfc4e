"""Consensus protocols of the twin's model, one module each, behind `VotingRule`.

The node (round-robin proposer, round changes, locking, sync) is shared in base.py; a
protocol only decides what a node does with proposals, votes and its own timers.
"""

from __future__ import annotations

from twin.protocols.base import VotingRule
from twin.protocols.bigfoot import BigFoot
from twin.protocols.pbft import PBFT

PROTOCOLS: dict[str, VotingRule] = {"pbft": PBFT(), "bigfoot": BigFoot()}
"""Registry by the names used in sensor records and switch commands."""

__all__ = ["PROTOCOLS", "VotingRule", "PBFT", "BigFoot"]
