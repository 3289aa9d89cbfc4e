"""BigFoot (Saltini 2022): a fast path of two message delays when every validator answers.

After the proposal each validator broadcasts PREPARE and starts its fast-path timer. A
PREPARE from all n validators commits at once (a fast certificate is valid at any time).
When the timer expires with a quorum of PREPAREs, the node falls back to PBFT's COMMIT
phase. So with a node down BigFoot always waits out the timer: its weakness that the
twin exploits by switching to PBFT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twin.kernel import PRIO_TIMER
from twin.protocols.base import VotingRule

if TYPE_CHECKING:
    from twin.protocols.base import Block, Node


class BigFoot(VotingRule):
    name = "bigfoot"

    def on_proposal(self, node: Node, block: Block) -> None:
        node.send_prepare(block)
        model = node.model
        model.kernel.schedule(model.kernel.now + model.cfg.fast_path_timeout, PRIO_TIMER,
                              self._fast_timer, node, node.hs, node.epoch)

    def _fast_timer(self, node: Node, hs: object, epoch: int) -> None:
        if not node.up or node.epoch != epoch or node.hs is not hs or node.hs.decided:
            return
        node.hs.fast_expired = True
        block = node.hs.block
        if block is not None and node.hs.prepare_count(block) >= node.model.quorum:
            node.send_commit(block)

    def on_prepare(self, node: Node, block: Block, count: int) -> None:
        if count >= node.model.n_validators:
            node.decide(block, fast=not node.hs.fast_expired)
        elif node.hs.fast_expired and count >= node.model.quorum and node.hs.block is block:
            node.send_commit(block)

    def on_commit(self, node: Node, block: Block, count: int) -> None:
        if count >= node.model.quorum:
            node.decide(block, fast=False)
