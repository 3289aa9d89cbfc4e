"""PBFT (IBFT-style, round-robin proposer): PRE-PREPARE, PREPARE, COMMIT.

Commit needs a quorum q = n - f of COMMITs, each sent after a quorum of PREPAREs: three
message delays after the proposal is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twin.protocols.base import VotingRule

if TYPE_CHECKING:
    from twin.protocols.base import Block, Node


class PBFT(VotingRule):
    name = "pbft"

    def on_proposal(self, node: Node, block: Block) -> None:
        node.send_prepare(block)

    def on_prepare(self, node: Node, block: Block, count: int) -> None:
        if count >= node.model.quorum and node.hs.block is block:
            node.send_commit(block)

    def on_commit(self, node: Node, block: Block, count: int) -> None:
        if count >= node.model.quorum:
            node.decide(block, fast=False)
