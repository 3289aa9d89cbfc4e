"""The delay line's policy, without a kernel: delays, jitter reordering, order, loss."""

import statistics

import pytest

from testbed.linkemu import Scheduler, Settings


def feed(s: Scheduler, n: int, gap: float = 0.001) -> list[tuple[float, int]]:
    """Admit n packets `gap` apart; return (release time, id) in release order."""
    for pid in range(n):
        s.admit(pid, pid * gap)
    out: list[tuple[float, int]] = []
    next_batch = 0  # a batch verdict releases every held FIFO id up to the one given
    while (t := s.next_release()) is not None:
        batch, singles = s.due(t)
        if batch is not None:
            out += [(t, pid) for pid in range(next_batch, batch + 1)]
            next_batch = batch + 1
        out += [(t, pid) for pid in singles]
    return out


def test_fixed_delay_is_exact_fifo_with_batch_verdicts():
    s = Scheduler(Settings(delay_us=20_000), seed=1)
    out = feed(s, 200)
    assert [pid for _, pid in out] == list(range(200))
    assert all(t == pytest.approx(pid * 0.001 + 0.02) for t, pid in out)
    assert not s.heap  # no per-packet verdicts needed


def test_reordering_jitter_draws_uniform_delays_and_reorders():
    s = Scheduler(Settings(delay_us=50_000, jitter_us=25_000, reorder=True), seed=3)
    out = feed(s, 4000, gap=0.0005)
    delays = [t - pid * 0.0005 for t, pid in out]
    assert min(delays) >= 0.025 - 1e-9 and max(delays) <= 0.075 + 1e-9
    assert statistics.mean(delays) == pytest.approx(0.05, abs=0.002)
    order = [pid for _, pid in out]
    assert order != sorted(order)  # packets overtake each other, as with netem jitter


def test_no_reorder_keeps_order_and_only_stretches_delays():
    s = Scheduler(Settings(delay_us=50_000, jitter_us=25_000, reorder=False), seed=3)
    out = feed(s, 4000, gap=0.0005)
    assert [pid for _, pid in out] == list(range(4000))
    times = [t for t, _ in out]
    assert times == sorted(times)
    assert all(t - pid * 0.0005 >= 0.025 - 1e-9 for t, pid in out)


def test_switching_to_ordered_never_overtakes_held_packets():
    s = Scheduler(Settings(delay_us=50_000, jitter_us=40_000, reorder=True), seed=7)
    for pid in range(100):
        s.admit(pid, pid * 0.001)
    s.settings.update({"jitter_us": 0, "delay_us": 1000})  # run-time change
    for pid in range(100, 200):
        s.admit(pid, 0.1 + pid * 0.0001)
    released = []
    while s.next_release() is not None:
        batch, singles = s.due(s.next_release())
        released += singles + ([batch] if batch is not None else [])
    late = released[released.index(100):]
    assert late == list(range(100, 200))  # in order, and after every earlier packet
    assert set(released[:released.index(100)]) == set(range(100))


def test_loss_rate_and_seeded_determinism():
    def run(seed):
        s = Scheduler(Settings(loss=0.01), seed=seed)
        return [s.admit(pid, 0.0) for pid in range(100_000)]

    a = run(5)
    lost = a.count(False) / len(a)
    assert 0.009 <= lost <= 0.011
    assert a == run(5) and a != run(6)
