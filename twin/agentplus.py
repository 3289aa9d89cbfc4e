"""Agent+: the Q-agent augmented with what-if simulation (twin paper, section 3.1).

Where the agent is unsure (it has not tried every protocol in this state, by real or
simulated experience), the what-if optimiser decides, and its simulated outcome for
every protocol is fed to the Q-table as training data. Elsewhere the agent's greedy
choice stands, which costs a table look-up instead of a simulation.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from twin.agents import QAgent
from twin.model import ChainModel
from twin.whatif import WhatIfOptimiser


class AgentPlusSettings(BaseModel):
    """When agent+ falls back to what-if simulation."""

    model_config = ConfigDict(extra="forbid")

    min_tries: int = Field(default=1, ge=1)
    """Use what-if in a state until every protocol has this many (real or simulated) tries."""
    augment_updates: int = Field(default=1, ge=1)
    """Q-updates per simulated outcome added to the agent's training."""


class AgentPlus:
    def __init__(self, agent: QAgent, whatif: WhatIfOptimiser,
                 settings: AgentPlusSettings | None = None) -> None:
        self.agent = agent
        self.whatif = whatif
        self.settings = settings or AgentPlusSettings()
        self.whatif_decisions = 0
        self.agent_decisions = 0
        self.seconds = 0.0
        """Wall-clock seconds spent deciding (what-if runs and table look-ups)."""

    def act(self, state: tuple[int, ...], model: ChainModel) -> int:
        t = time.perf_counter()
        try:
            if not self.agent.untried(state, self.settings.min_tries):
                self.agent_decisions += 1
                return self.agent.act(state)
            simulated = self.whatif.evaluate(model)
            self.augment(state, simulated)
            self.whatif_decisions += 1
            return int(np.argmin(simulated))
        finally:
            self.seconds += time.perf_counter() - t

    def augment(self, state: tuple[int, ...], latencies: np.ndarray) -> None:
        """Train on simulated outcomes; the state is taken to persist over the step."""
        for _ in range(self.settings.augment_updates):
            for a, lat in enumerate(latencies):
                self.agent.train_step(state, a, -float(lat), state, False)
