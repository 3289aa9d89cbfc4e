"""Consensus protocols behind one interface; add a protocol by registering it here."""

from nodes.consensus.base import ConsensusProtocol
from nodes.consensus.bigfoot import BigFoot
from nodes.consensus.pbft import Pbft

PROTOCOLS: dict[str, type[ConsensusProtocol]] = {Pbft.name: Pbft, BigFoot.name: BigFoot}

__all__ = ["PROTOCOLS", "ConsensusProtocol", "Pbft", "BigFoot"]
