"""The Python side of a compiled loop: do something every period, and react to input on
a control fd in between (end of input stops it). The delay line and the ABN shim both
run this way while the loop thread handles the packets."""

from __future__ import annotations

import select
import time
from collections.abc import Callable


def run_periodic(period_s: float, tick: Callable[[], object], control_fd: int | None = None,
                 on_input: Callable[[], bool] | None = None) -> None:
    """Call `tick` every `period_s`; between ticks wait for `control_fd` and call
    `on_input`, returning once it says False. A tick that is late by more than a period
    restarts the schedule from now instead of catching up in a burst."""
    nxt = time.monotonic() + period_s
    fds = [] if control_fd is None else [control_fd]
    while True:
        ready, _, _ = select.select(fds, [], [], max(0.0, nxt - time.monotonic()))
        if ready and on_input is not None and not on_input():
            return
        if time.monotonic() >= nxt:
            tick()
            nxt += period_s
            if nxt < time.monotonic():
                nxt = time.monotonic() + period_s
