"""Cubic-like and BBR-like senders for the DQN environment's fluid bottleneck (Fig. 11's
baselines). Models, not claims about real TCP.

What is modelled, and why it is a fair stand-in for "the network without ABN": each flow
runs its own end-to-end controller that knows nothing of deadlines, rewards or C_r; it
sees only what its bytes met at the bottleneck (`abn.dqn_env.fifo_bottleneck`: a
drop-tail FIFO of `buffer_s` at C_r, as a fluid). Time advances in sub-steps of one
propagation round trip (`rtt_s`), the scale at which both controllers act, so slow
start, Cubic's cubic growth and BBR's gain cycle run at their own speed, not the
slot's. A window-limited sender puts `cwnd - queued` bytes into the bottleneck each
round (bytes waiting in the queue are in flight). Losses are fluid: arrivals that
overflow the buffer are dropped in proportion to each flow's arrivals, and a flow sees a
loss that round with probability min(1, its dropped bytes / MSS) (about one lost segment
is enough, so big senders see every overflow, as with drop-tail's synchronised losses,
and a flow sending a few segments into a mostly-full queue sometimes escapes); dropped
bytes stay unsent and are sent again. A round in which none of a flow's bytes were
delivered gives it no delivery-rate sample (no ACKs came back). Not modelled: ACK
clocking within a round, delayed ACKs, RTO, SACK and recovery details, HyStart, receive
windows, pacing jitter.

Cubic-like (RFC 9438's window rules, one reduction per round): slow start doubles cwnd
every round from IW = 10 segments until the first loss; a loss sets W_max = cwnd (fast
convergence: lower when cwnd is below the previous W_max), cwnd = beta * cwnd
(beta = 0.7); then cwnd follows W(t) = C (t - K)^3 + W_max with C = 0.4 segments/s^3,
K = cbrt(W_max (1 - beta) / C), never below the Reno-friendly estimate and never more
than 1.5x per round. So over-subscription (the sum of windows beyond BDP + buffer) causes
losses, every flow backs off at once, and the link idles while windows regrow; and all
flows get about equal shares whatever their deadlines.

BBR-like (BBR v1's state machine): bandwidth estimate = max over the last 10 rounds of
the flow's delivery rate (samples from rounds where it was application-limited count
only when they raise the estimate); Startup paces at 2.885x the estimate until the
estimate stops growing by 25% for 3 rounds; Drain paces at 1/2.885 until its inflight
(queued plus a round's delivery) is at most estimate x min-RTT estimate; then ProbeBW
cycles pacing gains 1.25, 0.75, 1 x 6, one round each (the starting phase drawn from the
model's seeded generator, never the 0.75 one). Inflight is capped at 2 x estimate x
min-RTT estimate, the min-RTT estimate being the smallest round trip the flow has seen
(rtt_s plus the queue's delay at C_r then: a flow that starts behind a standing queue
takes it for propagation, as real BBR does). Every 10 s a flow spends 200 ms in ProbeRTT
with a 4-segment window and its min-RTT estimate restarts from what it sees there (v1
does when the estimate expires, which a standing queue makes the usual case). Losses
are ignored, as v1 does. So BBR fills the pipe and the buffer, each flow's share follows
its probing luck and its min-RTT estimate, and new flows converge to a share slowly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from abn.dqn_env import SimFlow
from abn.flows import FlowKey

MSS = 1448
INITIAL_WINDOW = 10


@dataclass(slots=True)
class _Cubic:
    cwnd: float
    ssthresh: float = math.inf
    w_max: float = 0.0
    epoch: float = 0.0
    offered: float = 0.0


class CubicLike:
    """Loss-driven AIMD with Cubic's growth (module docstring)."""

    name = "cubic"
    beta = 0.7
    c = 0.4

    def __init__(self, rtt_s: float, seed: int) -> None:
        if not rtt_s > 0:
            raise ValueError(f"rtt_s must be positive, got {rtt_s}")
        self.rtt_s = rtt_s
        self.rng = np.random.default_rng([seed, 0xC0B])
        self._flows: dict[FlowKey, _Cubic] = {}

    def _state(self, key: FlowKey) -> _Cubic:
        st = self._flows.get(key)
        if st is None:
            st = self._flows[key] = _Cubic(float(INITIAL_WINDOW * MSS))
        return st

    def offer(self, flows: Sequence[SimFlow], now: float, dt: float) -> np.ndarray:
        _prune(self._flows, flows)
        out = np.empty(len(flows))
        for i, f in enumerate(flows):
            st = self._state(f.key)
            st.offered = max(st.cwnd - f.queued, 0.0)
            out[i] = st.offered
        return out

    def feedback(self, flows: Sequence[SimFlow], served: np.ndarray, dropped: np.ndarray,
                 now: float, dt: float) -> None:
        draws = self.rng.uniform(size=len(flows))
        for f, lost, u in zip(flows, dropped, draws, strict=True):
            st = self._state(f.key)
            if u < lost / MSS:
                w = st.cwnd / MSS
                prev = st.w_max / MSS
                st.w_max = (w * (1 + self.beta) / 2 if w < prev else w) * MSS
                st.cwnd = max(st.cwnd * self.beta, 2.0 * MSS)
                st.ssthresh = st.cwnd
                st.epoch = now
            elif st.cwnd < st.ssthresh:
                st.cwnd *= 2
            else:
                st.cwnd = min(self._target(st, now), st.cwnd * 1.5)

    def _target(self, st: _Cubic, now: float) -> float:
        t = now - st.epoch
        w_max = st.w_max / MSS
        k = math.cbrt(w_max * (1 - self.beta) / self.c)
        cubic = self.c * (t - k) ** 3 + w_max
        reno = w_max * self.beta + 3 * (1 - self.beta) / (1 + self.beta) * t / self.rtt_s
        return max(cubic, reno, 2.0) * MSS


_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
_STARTUP_GAIN = 2 / math.log(2)


@dataclass(slots=True)
class _Bbr:
    start: float
    mode: str = "startup"
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=10))
    full_bw: float = 0.0
    full_count: int = 0
    cycle: int = 0
    last_probe_rtt: float = 0.0
    probe_rtt_until: float = 0.0
    app_limited: bool = False
    min_rtt: float = math.inf
    probe_min_rtt: float = math.inf


class BbrLike:
    """Rate-based bandwidth probing after BBR v1 (module docstring)."""

    name = "bbr"
    window_rounds = 10
    probe_rtt_every_s = 10.0
    probe_rtt_s = 0.2

    def __init__(self, rtt_s: float, capacity_bps: float, seed: int) -> None:
        if not (rtt_s > 0 and capacity_bps > 0):
            raise ValueError(f"rtt_s and capacity_bps must be positive, got {rtt_s}, "
                             f"{capacity_bps}")
        self.rtt_s = rtt_s
        self.capacity_Bps = capacity_bps / 8
        self.rng = np.random.default_rng([seed, 0xBB2])
        self._flows: dict[FlowKey, _Bbr] = {}

    def _state(self, key: FlowKey, now: float) -> _Bbr:
        st = self._flows.get(key)
        if st is None:
            st = self._flows[key] = _Bbr(start=now, last_probe_rtt=now)
        return st

    def bandwidth(self, st: _Bbr) -> float:
        """Bytes/s: the max-filtered delivery rate, or IW per RTT before any sample."""
        return max(st.samples) if st.samples else INITIAL_WINDOW * MSS / self.rtt_s

    def offer(self, flows: Sequence[SimFlow], now: float, dt: float) -> np.ndarray:
        _prune(self._flows, flows)
        out = np.empty(len(flows))
        for i, f in enumerate(flows):
            st = self._state(f.key, now)
            if st.mode == "probe_bw" and now - st.last_probe_rtt >= self.probe_rtt_every_s:
                st.mode, st.probe_rtt_until = "probe_rtt", now + max(self.probe_rtt_s, dt)
                st.probe_min_rtt = math.inf
            bw = self.bandwidth(st)
            min_rtt = st.min_rtt if st.min_rtt < math.inf else self.rtt_s
            if st.mode == "probe_rtt":
                planned = max(4.0 * MSS - f.queued, 0.0)
            else:
                gain, cwnd_gain = {
                    "startup": (_STARTUP_GAIN, _STARTUP_GAIN),
                    "drain": (1 / _STARTUP_GAIN, _STARTUP_GAIN),
                }.get(st.mode, (_GAINS[st.cycle], 2.0))
                cwnd = max(cwnd_gain * bw * min_rtt, 4.0 * MSS)
                planned = min(gain * bw * dt, max(cwnd - f.queued, 0.0))
            st.app_limited = f.unsent < planned
            out[i] = planned
        return out

    def feedback(self, flows: Sequence[SimFlow], served: np.ndarray, dropped: np.ndarray,
                 now: float, dt: float) -> None:
        rtt = self.rtt_s + sum(f.queued for f in flows) / self.capacity_Bps
        for f, sv in zip(flows, served, strict=True):
            st = self._state(f.key, now)
            st.min_rtt = min(st.min_rtt, rtt)
            st.probe_min_rtt = min(st.probe_min_rtt, rtt)
            rate = float(sv) / dt
            if rate > 0 and (not st.app_limited or rate > self.bandwidth(st)):
                st.samples.append(rate)
            bw = self.bandwidth(st)
            if st.mode == "startup":
                if bw >= st.full_bw * 1.25:
                    st.full_bw, st.full_count = bw, 0
                else:
                    st.full_count += 1
                if st.full_count >= 3:
                    st.mode = "drain"
            elif st.mode == "drain":  # until inflight (queued + delivered per round) <= BDP
                if f.queued + float(sv) * self.rtt_s / dt <= bw * st.min_rtt:
                    self._enter_probe_bw(st)
            elif st.mode == "probe_bw":
                st.cycle = (st.cycle + 1) % len(_GAINS)
            elif st.mode == "probe_rtt" and now >= st.probe_rtt_until:
                st.last_probe_rtt, st.min_rtt = now, st.probe_min_rtt
                self._enter_probe_bw(st)

    def _enter_probe_bw(self, st: _Bbr) -> None:
        st.mode = "probe_bw"
        st.cycle = int(self.rng.choice([0, 2, 3, 4, 5, 6, 7]))


_S = TypeVar("_S")


def _prune(states: dict[FlowKey, _S], flows: Sequence[SimFlow]) -> None:
    """Forget flows that have left (keeps the state as small as the model)."""
    if len(states) > 2 * len(flows) + 16:
        live = {f.key for f in flows}
        for key in [k for k in states if k not in live]:
            del states[key]
