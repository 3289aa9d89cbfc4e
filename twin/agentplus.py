"""Agent+: the Q-agent augmented with what-if simulation (twin paper, section 3.1, Figs 2-3).

The paper: "what-if analysis can be used when the agent encounters previously unseen
scenarios, avoiding the risk of bad decisions", and "the simulated outcomes augment its
training". The faithful default does exactly that:

1. The Q-agent is trained offline before deployment on scenarios the scenario
   generator draws, simulated in the twin's own model (`twin.experiment.train` over
   generated scenarios; the figure jobs do this for agent and agent+ alike).
2. During deployment, in a state with too little evidence (`unsure="evidence"`: some
   protocol has fewer than `min_evidence` real or simulated updates in this state), the
   twin runs what-if analysis: the scenario generator draws futures around the
   calibrated state, each protocol is simulated under them from the twin's estimated
   present, and the best simulated protocol is taken.
3. Those simulated (state, protocol, reward) transitions train the Q-agent
   (`augment_updates` per what-if call), so the state soon has evidence and the agent
   decides alone (a table look-up instead of a simulation).

Step 1 for agent+ goes further than for the agent: after the agent's plain Q-learning,
agent+ runs `offline_episodes` more episodes on the generated training scenarios in which
every decision consults what-if (`AgentPlus.act_offline`), so each visited state gets
paired simulated outcomes for every protocol (and its `SimEvidence`) before deployment.

Our additions, each a named option measured against that default (docs/measurements.md):

- `unsure="consistency"`: also ask while the state's simulated outcomes disagree on the
  best protocol in more than `1 - agree` of them: there the best protocol depends on
  more than the state key says (the backlog, the load), and only a simulation from the
  present can tell.

- `unsure="significance"`: keep asking while the simulated advantage between the two best
  protocols is within `z` standard errors of zero (at most `max_sims` calls per state;
  `check_disagreement` also asks when the Q-table disagrees with the simulation).
- `budget_share`/`budget_burst`: cap what-if calls to a share of decisions.
- `counterfactual`: after a real step with protocol a and reward r, train every other
  protocol b with r - (sim_b - sim_a) (sim: this step's simulated latencies if what-if
  was consulted, else the state's mean). Why: the plain state (F, N_L, N_H) leaves out
  the backlog, whose age dominates the step reward; whichever protocol ran takes the
  blame for a growing backlog and the greedy choice flip-flops. The simulated paired
  difference has the backlog cancelled (common random numbers).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from twin.agents import QAgent
from twin.model import ChainModel
from twin.whatif import WhatIfOptimiser

State = tuple[int, ...]


class AgentPlusSettings(BaseModel):
    """When agent+ falls back to what-if simulation and how its outcomes train the agent."""

    model_config = ConfigDict(extra="forbid")

    unsure: Literal["evidence", "significance", "consistency"] = "evidence"
    """When what-if decides: the paper's rule (too little evidence in the state) or ours
    (also while the simulated advantage is not significant, or while the simulations
    disagree on the best protocol)."""
    offline_episodes: int = Field(default=0, ge=0)
    """Offline training episodes in which every decision consults what-if (after the
    agent's plain Q-learning; 0: agent+ starts from the agent's table)."""
    offline_epsilon: float = Field(default=0.1, ge=0, le=1)
    """Exploration in those episodes: the share of steps that run a random protocol
    instead of the simulated best (so the table also sees where other choices lead)."""
    agree: float = Field(default=0.8, gt=0.5, le=1)
    """consistency: a state is sure once this share of its simulations name the same
    best protocol (and it has at least `min_sims` of them)."""
    max_samples: int = Field(default=200, ge=2)
    """Simulated outcomes kept per state (the oldest are dropped): the bound on memory."""
    min_evidence: int = Field(default=2, ge=1)
    """evidence: a state is unseen while some protocol has fewer updates than this
    (real steps count for the protocol taken, a what-if call for every protocol)."""
    min_sims: int = Field(default=2, ge=1)
    """significance, consistency: a state counts as unseen until it has this many
    simulated comparisons."""
    max_sims: int = Field(default=3, ge=1)
    """significance: what-if calls per state at most; beyond this the agent decides."""
    z: float = Field(default=1.0, ge=0)
    """significance: unsure while |mean simulated advantage| < z * its standard error."""
    check_disagreement: bool = False
    """significance: also unsure when the Q-table's greedy choice differs from the
    simulated best."""
    budget_share: float | None = Field(default=None, gt=0, le=1)
    """What-if calls at most budget_burst + budget_share * decisions so far; None: no
    cap (the paper's agent+ asks whenever the state is unseen)."""
    budget_burst: int = Field(default=10, ge=0)
    """Calls allowed up front, for the first unseen states (with a budget_share)."""
    augment_updates: int = Field(default=1, ge=0)
    """Q-updates per simulated outcome added to the agent's training (the paper's
    augmentation; it initialises unseen states at the simulated level)."""
    counterfactual: bool = False
    """Train the protocols not taken in a real step from the simulated differences."""


class SimEvidence:
    """Simulated latencies per protocol from what-if calls in one state (the latest
    `maxlen`)."""

    def __init__(self, maxlen: int) -> None:
        self.samples: deque[np.ndarray] = deque(maxlen=maxlen)

    def __len__(self) -> int:
        return len(self.samples)

    def mean(self) -> np.ndarray:
        return np.mean(self.samples, axis=0)

    def best(self) -> int:
        return int(np.argmin(self.mean()))

    def agreement(self) -> float:
        """Share of the samples whose best protocol is the best on the mean."""
        best = self.best()
        return float(np.mean([int(np.argmin(x)) == best for x in self.samples]))

    def advantage(self) -> tuple[float, float]:
        """Mean and standard error of (second best - best) simulated latency, paired."""
        m = self.mean()
        order = np.argsort(m)
        d = np.array([s[order[1]] - s[order[0]] for s in self.samples])
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
        return float(d.mean()), se


class AgentPlus:
    def __init__(self, agent: QAgent, whatif: WhatIfOptimiser,
                 settings: AgentPlusSettings | None = None) -> None:
        self.agent = agent
        self.whatif = whatif
        self.settings = settings or AgentPlusSettings()
        self.evidence: dict[State, SimEvidence] = {}
        self.whatif_decisions = 0
        self.agent_decisions = 0
        self.seconds = 0.0
        """Wall-clock seconds spent deciding (what-if runs and table look-ups)."""
        self._last: tuple[State, np.ndarray] | None = None
        """The simulated latencies behind the latest decision, if it was simulated."""

    def unsure(self, state: State) -> bool:
        """Does the agent need the simulation in this state (see the module docstring)?"""
        s = self.settings
        if s.unsure == "evidence":
            return self.agent.untried(state, s.min_evidence)
        ev = self.evidence.get(state)
        n = len(ev) if ev else 0
        if n < s.min_sims:
            return True
        assert ev is not None
        if s.unsure == "consistency":
            return ev.agreement() < s.agree
        if n >= s.max_sims:
            return False
        adv, se = ev.advantage()
        if adv < s.z * se:
            return True
        if not s.check_disagreement:
            return False
        v = self.agent.values(state)
        greedy = np.flatnonzero(v == v.max())
        return len(greedy) > 1 or int(greedy[0]) != ev.best()

    def within_budget(self) -> bool:
        s = self.settings
        if s.budget_share is None:
            return True
        decisions = self.whatif_decisions + self.agent_decisions
        return self.whatif_decisions < s.budget_burst + s.budget_share * decisions

    def act(self, state: State, model: ChainModel | Callable[[], ChainModel]) -> int:
        """Decide in `state`; `model` is the twin's estimated present (or a function that
        builds it, called only when what-if is consulted)."""
        t = time.perf_counter()
        try:
            self._last = None
            if not (self.unsure(state) and self.within_budget()):
                self.agent_decisions += 1
                return self.agent.act(state)
            self.whatif_decisions += 1
            return int(np.argmin(self._simulate(state, model)))
        finally:
            self.seconds += time.perf_counter() - t

    def act_offline(self, state: State, model: ChainModel | Callable[[], ChainModel],
                    rng: np.random.Generator) -> int:
        """An offline training decision: always simulate (the outcomes train the table and
        the state's evidence), then run the simulated best or, with probability
        `offline_epsilon`, a random protocol. Not counted as a deployment decision."""
        simulated = self._simulate(state, model)
        if rng.uniform() < self.settings.offline_epsilon:
            return int(rng.integers(self.agent.n_actions))
        return int(np.argmin(simulated))

    def _simulate(self, state: State, model: ChainModel | Callable[[], ChainModel]
                  ) -> np.ndarray:
        simulated = self.whatif.evaluate(model() if callable(model) else model)
        self.evidence.setdefault(state, SimEvidence(self.settings.max_samples)
                                 ).samples.append(simulated)
        self.augment(state, simulated)
        self._last = (state, simulated)
        return simulated

    def augment(self, state: State, latencies: np.ndarray) -> None:
        """Train on simulated outcomes; the state is taken to persist over the step.

        All protocols share one bootstrap value, taken before any of them is updated, so
        the order of the updates does not leak into the Q-gap."""
        for _ in range(self.settings.augment_updates):
            boot = self.agent.bootstrap(state, False)
            for a, lat in enumerate(latencies):
                self.agent.update(state, a, -float(lat) + boot)

    def train_step(self, state: State, action: int, reward: float, next_state: State,
                   done: bool) -> None:
        """Learn from a real step, plus the simulated counterfactuals for other protocols
        (all with the bootstrap value from before the step's updates)."""
        sim: np.ndarray | None = None
        if self.settings.counterfactual:
            if self._last is not None and self._last[0] == state:
                sim = self._last[1]
            elif state in self.evidence:
                sim = self.evidence[state].mean()
        if sim is None:
            self.agent.train_step(state, action, reward, next_state, done)
            return
        boot = self.agent.bootstrap(next_state, done)
        for b in range(self.agent.n_actions):
            r_b = reward - float(sim[b] - sim[action])  # r_b == reward for b == action
            self.agent.update(state, b, r_b + boot)
