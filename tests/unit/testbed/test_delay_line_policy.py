"""The delay line's policy, without a kernel: delays, jitter reordering, order, loss.

Every rule is checked on both schedulers: the Python reference (testbed.linkemu) and
the compiled one the delay line runs (abn._nfqloop); a differential test then drives
both with the same random workload and requires identical decisions.
"""

import random
import statistics

import pytest

from testbed.linkemu import Scheduler, SplitMix64, compiled

MS = 1_000_000  # ns


def make(kind: str, seed: int = 1, **settings):
    if kind == "python":
        return Scheduler(seed, **settings)
    return compiled().Scheduler(seed, **settings)


both = pytest.mark.parametrize("kind", ["python", "compiled"])


def feed(s, n: int, gap: int = MS) -> list[tuple[int, int]]:
    """Admit n packets `gap` ns apart; return (release time, id) in release order."""
    for pid in range(n):
        s.admit(pid, pid * gap)
    return drain(s)


def drain(s, start_batch: int = 0) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    next_batch = start_batch  # a batch verdict releases every held FIFO id up to the one given
    while (t := s.next_release()) is not None:
        batch, singles = s.due(t)
        if batch is not None:
            out += [(t, pid) for pid in range(next_batch, batch + 1)]
            next_batch = batch + 1
        out += [(t, pid) for pid in singles]
    return out


@both
def test_fixed_delay_is_exact_fifo_with_batch_verdicts(kind):
    s = make(kind, delay_us=20_000)
    for pid in range(200):
        s.admit(pid, pid * MS)
    batch, singles = s.due(199 * MS + 20 * MS)
    assert batch == 199 and singles == []  # one batch verdict, no per-packet verdicts
    s2 = make(kind, delay_us=20_000)
    out = feed(s2, 200)
    assert [pid for _, pid in out] == list(range(200))
    assert all(t == pid * MS + 20 * MS for t, pid in out)


@both
def test_reordering_jitter_draws_uniform_delays_and_reorders(kind):
    s = make(kind, seed=3, delay_us=50_000, jitter_us=25_000, reorder=True)
    gap = MS // 2
    out = feed(s, 4000, gap=gap)
    delays = [t - pid * gap for t, pid in out]
    assert min(delays) >= 25 * MS and max(delays) <= 75 * MS
    assert statistics.mean(delays) == pytest.approx(50 * MS, abs=2 * MS)
    order = [pid for _, pid in out]
    assert sorted(order) == list(range(4000))
    assert order != sorted(order)  # packets overtake each other, as with netem jitter


@both
def test_no_reorder_keeps_order_and_only_stretches_delays(kind):
    s = make(kind, seed=3, delay_us=50_000, jitter_us=25_000, reorder=False)
    gap = MS // 2
    out = feed(s, 4000, gap=gap)
    assert [pid for _, pid in out] == list(range(4000))
    times = [t for t, _ in out]
    assert times == sorted(times)
    assert all(t - pid * gap >= 25 * MS for t, pid in out)


@both
def test_switching_to_ordered_never_overtakes_held_packets(kind):
    s = make(kind, seed=7, delay_us=50_000, jitter_us=40_000, reorder=True)
    for pid in range(100):
        s.admit(pid, pid * MS)
    s.configure(jitter_us=0, delay_us=1000)  # run-time change
    for pid in range(100, 200):
        s.admit(pid, 100 * MS + pid * MS // 10)
    released = []
    while (t := s.next_release()) is not None:
        batch, singles = s.due(t)
        released += singles + ([batch] if batch is not None else [])
    late = released[released.index(100):]
    assert late == list(range(100, 200))  # in order, and after every earlier packet
    assert set(released[:released.index(100)]) == set(range(100))


@both
def test_loss_rate_and_seeded_determinism(kind):
    def run(seed):
        s = make(kind, seed=seed, loss=0.01)
        return [s.admit(pid, 0) for pid in range(100_000)]

    a = run(5)
    lost = a.count(False) / len(a)
    assert 0.009 <= lost <= 0.011
    assert a == run(5) and a != run(6)


@both
def test_lateness_is_counted_per_packet(kind):
    s = make(kind, delay_us=10_000)
    for pid in range(10):
        s.admit(pid, 0)
    s.due(10 * MS + 3 * MS)  # all ten released 3 ms after their time
    c = s.counters()
    assert c["released"] == 10 and c["late_over_1ms"] == 10 and c["late_max_us"] == 3000


@both
def test_bad_settings_are_refused_whole(kind):
    s = make(kind, delay_us=5000)
    with pytest.raises(ValueError):
        s.configure(loss=2.0, delay_us=9)
    with pytest.raises(ValueError):
        s.configure(latency=3)
    s.admit(0, 0)
    assert s.next_release() == 5 * MS  # the refused change left the delay as it was


def test_compiled_random_stream_is_the_reference_one():
    ref = SplitMix64(42)
    assert compiled().uniforms(42, 5) == [ref.uniform() for _ in range(5)]


def test_compiled_scheduler_decides_exactly_as_the_reference():
    """Random arrivals, settings changes and release times; every decision identical."""
    rnd = random.Random(11)
    py, c = make("python", seed=9), make("compiled", seed=9)
    now, pid = 0, 0
    for step in range(3000):
        r = rnd.random()
        if r < 0.01:
            change = {"delay_us": rnd.choice([0, 500, 20_000]),
                      "jitter_us": rnd.choice([0, 0, 5000, 30_000]),
                      "loss": rnd.choice([0.0, 0.0, 0.05]), "reorder": rnd.random() < 0.7}
            py.configure(**change)
            c.configure(**change)
        elif r < 0.75:
            assert py.admit(pid, now) == c.admit(pid, now), f"step {step}"
            pid += 1
        else:
            assert py.due(now) == c.due(now), f"step {step}"
        assert py.next_release() == c.next_release()
        now += rnd.randrange(0, 3 * MS)
    assert drain(py) == drain(c)
    pc, cc = py.counters(), c.counters()
    assert {k: pc[k] for k in pc} == {k: cc[k] for k in pc}
