"""Run health from synthetic run folders: which records make a run unreliable, and when."""

import json
import time

import pytest

from testbed import health
from testbed.health import HostCpuSampler, Thresholds, judge

T0 = 1_700_000_000.0
LINK = "path:mb>h2"
OTHER = "path:h2>mb"


def write_host(run_dir, busy, start_s=-1.0, interval=0.5):
    """One sample per interval from start_s on (relative to T0); busy[i] covers
    (start_s + i*interval, start_s + (i+1)*interval]."""
    path = run_dir / health.HOST_CPU
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for i, b in enumerate(busy):
            unix = T0 + start_s + (i + 1) * interval
            fh.write(json.dumps({"unix": unix, "busy": b, "per_cpu": [b, b], "load1": 0.5})
                     + "\n")


def link_rec(end_s, link=LINK, released=1000, late=0, late_max_us=200, overflow=0,
             period_s=1.0):
    return {"kind": "link", "unix": T0 + end_s, "period_s": period_s, "link": link,
            "received": released, "released": released, "dropped": 0,
            "late_over_1ms": late, "late_max_us": late_max_us, "held": 3,
            "overflow": overflow}


def proc_rec(end_s, cpu=0.2, period_s=1.0):
    return {"kind": "process", "unix": T0 + end_s, "period_s": period_s, "cpu": cpu,
            "pid": 4242}


def write_periods(run_dir, records, tail=""):
    path = run_dir / health.LINK_PERIODS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def clean_periods(seconds=20, overrides=None):
    """Per second: both links clean, unless overrides maps second -> LINK record kwargs."""
    overrides = overrides or {}
    recs = []
    for s in range(1, seconds + 1):
        recs.append(link_rec(s, **overrides.get(s, {})))
        recs.append(link_rec(s, link=OTHER, released=500))
        recs.append(proc_rec(s))
    return recs


def idle_host(run_dir, seconds=20):
    write_host(run_dir, [0.1] * (2 * seconds + 2))


def test_idle_clean_run_is_ok(tmp_path):
    idle_host(tmp_path)
    write_periods(tmp_path, clean_periods())
    h = judge(tmp_path, T0, expect_delay_line=True)
    assert (h.status, h.reasons, h.periods) == ("ok", [], [])
    assert h.summary["host"]["busy_max"] == pytest.approx(0.1)
    assert h.summary["host"]["busy_mean"] == pytest.approx(0.1)
    assert h.summary["links"][LINK]["released"] == 20 * 1000
    assert h.summary["links"][OTHER]["released"] == 20 * 500
    assert h.summary["line_cpu_max"] == {"pid 4242": pytest.approx(0.2)}
    assert json.loads(json.dumps(h.to_dict()))["status"] == "ok"


def test_three_seconds_of_saturated_cpu_is_one_merged_period(tmp_path):
    # from -1 s in 0.5 s steps: 22 idle samples reach 10.0 s, then 3 s saturated,
    # idle again, and a 1.5 s burst at 20-21.5 s that is too short to count
    write_host(tmp_path, [0.2] * 22 + [0.99] * 6 + [0.2] * 14 + [1.0] * 3 + [0.2] * 4)
    h = judge(tmp_path, T0)
    assert h.status == "unreliable"
    assert [(p.kind, p.start_s, p.end_s) for p in h.periods] == [("host_cpu", 10.0, 13.0)]
    assert len(h.reasons) == 1 and "3.0 s" in h.reasons[0] and "10.0-13.0 s" in h.reasons[0]
    assert h.summary["host"]["busy_max"] == 1.0
    d = h.to_dict()
    assert d["status"] == "unreliable"
    assert d["periods"][0]["start_s"] == 10.0 and d["periods"][0]["kind"] == "host_cpu"


def test_saturation_just_under_cpu_seconds_is_ok(tmp_path):
    write_host(tmp_path, [0.2] * 22 + [0.99] * 3 + [0.2] * 10)  # 1.5 s
    assert judge(tmp_path, T0).status == "ok"
    write_host(tmp_path, [0.99] * 4, start_s=16.5)  # appended: 2.0 s at 16.5-18.5 s
    assert judge(tmp_path, T0).status == "unreliable"


def test_late_fraction_on_one_link_names_that_link(tmp_path):
    idle_host(tmp_path)
    late = {s: {"late": 60, "late_max_us": 3200} for s in range(13, 18)}  # 6%, 12-17 s
    write_periods(tmp_path, clean_periods(overrides=late))
    h = judge(tmp_path, T0, expect_delay_line=True)
    assert h.status == "unreliable"
    assert [(p.kind, p.subject, p.start_s, p.end_s) for p in h.periods] == [
        ("late_release", LINK, 12.0, 17.0)]
    assert len(h.reasons) == 1
    assert h.reasons[0] == (f"delay line {LINK} released 6.0% of packets > 1 ms late "
                            "(max 3.2 ms) during 12.0-17.0 s")
    assert OTHER not in h.reasons[0]
    assert h.summary["links"][LINK]["late_over_1ms"] == 300
    assert h.summary["links"][LINK]["late_max_us"] == 3200


def test_one_percent_exactly_is_not_late(tmp_path):
    idle_host(tmp_path)
    write_periods(tmp_path, clean_periods(overrides={5: {"late": 10, "late_max_us": 3000}}))
    assert judge(tmp_path, T0).status == "ok"


def test_a_single_late_ping_is_ok(tmp_path):
    idle_host(tmp_path)
    recs = [link_rec(s, released=1, late=1 if s == 7 else 0,
                     late_max_us=2500 if s == 7 else 90) for s in range(1, 21)]
    write_periods(tmp_path, recs)
    h = judge(tmp_path, T0, expect_delay_line=True)
    assert h.status == "ok", h.reasons
    assert h.summary["links"][LINK]["late_over_1ms"] == 1


def test_a_stall_with_few_packets_is_unreliable(tmp_path):
    idle_host(tmp_path)
    recs = [link_rec(s, released=5, late=3 if s == 9 else 0,
                     late_max_us=20_000 if s == 9 else 90) for s in range(1, 21)]
    write_periods(tmp_path, recs)
    h = judge(tmp_path, T0)
    assert h.status == "unreliable"
    assert [(p.kind, p.start_s, p.end_s) for p in h.periods] == [("late_release", 8.0, 9.0)]
    assert "3 of 5 packets" in h.reasons[0] and "max 20.0 ms" in h.reasons[0]


def test_overflow_is_unreliable(tmp_path):
    idle_host(tmp_path)
    write_periods(tmp_path, clean_periods(overrides={4: {"overflow": 2}, 5: {"overflow": 1}}))
    h = judge(tmp_path, T0)
    assert h.status == "unreliable"
    assert [(p.kind, p.subject, p.start_s, p.end_s) for p in h.periods] == [
        ("queue_overflow", LINK, 3.0, 5.0)]
    assert "3 packets overflowed" in h.reasons[0]


def test_saturated_delay_line_process_is_unreliable(tmp_path):
    idle_host(tmp_path)
    recs = clean_periods()
    recs.append(proc_rec(6.0, cpu=0.97))
    write_periods(tmp_path, recs)
    h = judge(tmp_path, T0)
    assert h.status == "unreliable"
    assert [(p.kind, p.subject) for p in h.periods] == [("line_cpu", "pid 4242")]
    assert h.summary["line_cpu_max"]["pid 4242"] == pytest.approx(0.97)


def test_late_spread_thin_over_the_whole_run_is_unreliable(tmp_path):
    """No period has enough packets to judge alone, but 1.3% of the run's are late."""
    idle_host(tmp_path)
    write_periods(tmp_path, [link_rec(s, released=150, late=2, late_max_us=4000)
                             for s in range(1, 11)])
    h = judge(tmp_path, T0)
    assert h.status == "unreliable"
    assert len(h.reasons) == 1 and "whole run" in h.reasons[0] and "1.3%" in h.reasons[0]
    assert [(p.start_s, p.end_s) for p in h.periods] == [(0.0, 10.0)]


def test_truncated_last_lines_are_tolerated(tmp_path):
    idle_host(tmp_path)
    with open(tmp_path / health.HOST_CPU, "a") as fh:
        fh.write('{"unix": 1700000021.5, "bu')
    write_periods(tmp_path, clean_periods(), tail='{"kind": "link", "unix": 17')
    h = judge(tmp_path, T0, expect_delay_line=True)
    assert h.status == "ok", h.reasons
    assert sorted(h.summary["truncated"]) == sorted([health.HOST_CPU, health.LINK_PERIODS])


def test_an_unreadable_middle_line_makes_health_unknown(tmp_path):
    idle_host(tmp_path)
    lines = [json.dumps(r) for r in clean_periods(5)]
    lines.insert(3, "{garbage")
    lines.insert(5, json.dumps({"kind": "link", "unix": T0 + 2, "period_s": 1.0}))  # no link
    (tmp_path / "linkemu").mkdir()
    (tmp_path / health.LINK_PERIODS).write_text("\n".join(lines) + "\n")
    h = judge(tmp_path, T0)
    assert h.status == "unknown"
    assert any("2 unreadable line(s) (first: line 4)" in r for r in h.reasons)


def test_missing_host_samples_make_health_unknown_not_ok(tmp_path):
    write_periods(tmp_path, clean_periods())
    h = judge(tmp_path, T0)
    assert h.status == "unknown"
    assert len(h.reasons) == 1 and health.HOST_CPU in h.reasons[0]
    assert "host" not in h.summary


def test_missing_host_samples_do_not_hide_evidence(tmp_path):
    write_periods(tmp_path, clean_periods(overrides={4: {"overflow": 5}}))
    h = judge(tmp_path, T0)
    assert h.status == "unreliable"
    assert len(h.reasons) == 2 and "unknown" in h.reasons[1]


def test_netem_runs_need_no_delay_line_records_but_userspace_runs_do(tmp_path):
    idle_host(tmp_path)
    assert judge(tmp_path, T0).status == "ok"
    h = judge(tmp_path, T0, expect_delay_line=True)
    assert h.status == "unknown" and health.LINK_PERIODS in h.reasons[0]


def test_set_up_before_the_timeline_is_not_judged(tmp_path):
    write_host(tmp_path, [1.0] * 10 + [0.1] * 40, start_s=-5.0)  # saturated until t0
    write_periods(tmp_path, [link_rec(0.0, late=500, overflow=9), *clean_periods()])
    h = judge(tmp_path, T0, expect_delay_line=True)
    assert h.status == "ok", h.reasons
    assert h.summary["host"] == {"samples": 40, "cpus": 2, "busy_max": 0.1, "busy_mean": 0.1,
                                 "wake_probes": 0, "wake_late_1ms": 0, "wake_late_max_ms": 0.0}
    spill = tmp_path / "spill"
    write_host(spill, [1.0] * 12 + [0.1] * 40, start_s=-5.2)  # saturated -5.2..0.8 s
    assert judge(spill, T0).status == "ok"  # only 0.8 s of it in the timeline
    assert judge(spill, T0 - 1.0).status == "ok"  # 1.8 s: the interval across t0 is cut
    assert judge(spill, T0 - 1.2).status == "unreliable"  # 2.0 s


def test_late_ms_other_than_the_counted_one_is_refused():
    with pytest.raises(ValueError, match="1 ms"):
        Thresholds(late_ms=2.0)
    assert Thresholds(min_packets=10).min_packets == 10


def test_busy_between_readings():
    prev = {0: (1000, 900), 1: (1000, 500)}
    cur = {0: (1100, 950), 1: (1100, 500), 2: (50, 0)}  # cpu2 came online: left out
    busy, per, jiffies = health.busy_between(prev, cur)
    assert per == [0.5, 1.0] and busy == pytest.approx(0.75) and jiffies == 200


def write_stat(path, cpus):
    """A /proc/stat with cpuN lines of (user, idle, iowait) jiffies, replaced atomically;
    all user time is guest time, which the kernel counts in both."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {u} 0 0 {idle} {io} 0 0 0 {u} 0" for i, (u, idle, io) in enumerate(cpus)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\nintr 1 2 3\n")
    tmp.replace(path)


def test_sampler_writes_flushed_lines_with_busy_fractions(tmp_path):
    stat = tmp_path / "stat"
    write_stat(stat, [(100, 100, 0), (100, 100, 0)])
    s = HostCpuSampler(tmp_path, interval_s=0.2, stat_path=stat)
    s.stop()  # before start: harmless
    s.start()
    # cpu0: 50 busy of 100 (iowait counts as idle); cpu1: 100 of 100; guest not counted
    write_stat(stat, [(150, 130, 20), (200, 100, 0)])
    deadline = time.monotonic() + 5
    while s.samples < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = (tmp_path / health.HOST_CPU).read_text().splitlines()  # flushed while running
    assert lines
    first = json.loads(lines[0])
    assert first["per_cpu"] == [0.5, 1.0] and first["busy"] == 0.75
    assert abs(first["unix"] - time.time()) < 5 and isinstance(first["load1"], float)
    s.stop()
    s.stop()
    assert s.error is None


def test_sampler_on_the_real_proc_stat(tmp_path):
    with HostCpuSampler(tmp_path, interval_s=0.05) as s:
        time.sleep(0.3)
    recs = [json.loads(x) for x in (tmp_path / health.HOST_CPU).read_text().splitlines()]
    assert len(recs) >= 3 and s.samples == len(recs)
    ncpu = len(health.read_proc_stat())
    for r in recs:
        assert 0.0 <= r["busy"] <= 1.0 and len(r["per_cpu"]) == ncpu
        assert isinstance(r["load1"], float)
    assert [r["unix"] for r in recs] == sorted(r["unix"] for r in recs)
    assert judge(tmp_path, recs[0]["unix"] - 1).summary["host"]["samples"] == len(recs)


def test_sampler_refuses_a_second_start(tmp_path):
    with HostCpuSampler(tmp_path, interval_s=0.05) as s, pytest.raises(RuntimeError):
        s.start()


# what `chaintwin run` and `chaintwin report` make of it


def fake_run(tmp_path, monkeypatch, status, health_dict):
    """`runner.run` replaced by one that writes a finished run's manifest."""
    from testbed import manifest, runner

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    man = {"experiment": {"name": "quickstart"}, "mode": "emulation", "status": status}
    if health_dict is not None:
        man["health"] = health_dict
    manifest.write(run_dir, man)
    monkeypatch.setattr(runner, "run", lambda loaded, results, show_progress: run_dir)
    return run_dir


def unreliable_health():
    return {"status": "unreliable",
            "reasons": [f"delay line {LINK} released 1.5% of packets > 1 ms late "
                        "(max 3.2 ms) during 12.0-17.0 s"],
            "periods": [{"start_s": 12.0, "end_s": 17.0, "kind": "late_release",
                         "subject": LINK, "detail": f"{LINK}: 1.5% late"}],
            "summary": {}}


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `chaintwin ARGV`; QS stands for the quickstart."""
    from testbed import cli
    from testbed.config import PROJECT_ROOT

    qs = str(PROJECT_ROOT / "experiments" / "quickstart.yaml")
    code = cli.main([qs if a == "QS" else a for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("strict,code", [(False, 0), (True, 3)])
def test_run_warns_about_an_unreliable_run_and_strict_fails_it(tmp_path, monkeypatch, capsys,
                                                               strict, code):
    fake_run(tmp_path, monkeypatch, "unreliable", unreliable_health())
    got, out, err = run_cli(["run", "QS", "-q", *(["--strict"] if strict else [])], capsys)
    assert got == code
    assert "status: unreliable" in out
    assert "UNRELIABLE" in err
    assert f"reason: delay line {LINK} released 1.5%" in err
    assert f"period: 12.0-17.0 s late_release: {LINK}: 1.5% late" in err


def test_run_strict_passes_a_healthy_run(tmp_path, monkeypatch, capsys):
    fake_run(tmp_path, monkeypatch, "ok", {"status": "ok", "reasons": [], "periods": [],
                                           "summary": {}})
    code, out, err = run_cli(["run", "QS", "--strict"], capsys)
    assert (code, err) == (0, "")
    assert "status: ok" in out


def test_run_strict_fails_a_run_whose_health_is_unknown(tmp_path, monkeypatch, capsys):
    fake_run(tmp_path, monkeypatch, "ok", {"status": "unknown", "reasons": ["no samples"],
                                           "periods": [], "summary": {}})
    assert run_cli(["run", "QS"], capsys)[0] == 0
    code, out, err = run_cli(["run", "QS", "--strict"], capsys)
    assert code == 3 and "health is unknown" in err and "reason: no samples" in err


def test_report_prints_the_recorded_health(tmp_path, monkeypatch, capsys):
    run_dir = fake_run(tmp_path, monkeypatch, "unreliable", unreliable_health())
    code, out, err = run_cli(["report", str(run_dir)], capsys)
    assert code == 0 and "status: unreliable" in out and "period: 12.0-17.0 s" in err


def _wakes(run_dir, late_per_sample, samples=20):
    path = run_dir / health.HOST_CPU
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(samples):
            fh.write(json.dumps({"unix": T0 + (i + 1) * 0.5, "busy": 0.05, "per_cpu": [0.05],
                                 "load1": 0.1, "wake_probes": 10,
                                 "wake_late_1ms": late_per_sample(i),
                                 "wake_late_max_ms": 4.0 if late_per_sample(i) else 0.2})
                     + "\n")


def test_a_host_that_wakes_processes_late_makes_the_run_unreliable(tmp_path):
    # an idle host whose delay lines release on time, but whose ordinary wake-ups are
    # late (session 9: pings 0.2-5.8 ms late, health "ok"): unreliable, saying why
    write_periods(tmp_path, clean_periods(10))
    _wakes(tmp_path, lambda i: 2)  # 20% of 200 sleeps
    h = judge(tmp_path, T0)
    assert h.status == "unreliable"
    assert any("40 of 200 1 ms sleeps (20%)" in r for r in h.reasons), h.reasons
    _wakes(tmp_path, lambda i: 1 if i % 5 == 0 else 0)  # 2%: this VM on a calm day
    assert judge(tmp_path, T0).status == "ok"
    _wakes(tmp_path, lambda i: 5, samples=8)  # 80 probes: too few to judge
    assert judge(tmp_path, T0).status == "ok"


def test_the_sampler_records_its_wake_probes(tmp_path):
    with HostCpuSampler(tmp_path, interval_s=0.05):
        time.sleep(0.3)
    rows = [json.loads(x) for x in (tmp_path / health.HOST_CPU).read_text().splitlines()]
    probed = [r for r in rows if r["wake_probes"]]
    assert probed and all(r["wake_probes"] == health.WAKE_PROBES for r in probed)
    assert all(0 <= r["wake_late_1ms"] <= r["wake_probes"] for r in probed)
    assert all(r["wake_late_max_ms"] >= 0 for r in probed)


def test_a_short_run_with_several_late_releases_is_unreliable(tmp_path):
    # 30 pings, 5 of them released > 1 ms late: the CI run that measured 202.3 ms
    idle_host(tmp_path, 6)
    recs = [link_rec(i + 1.0, released=5, late=1 if i < 5 else 0, late_max_us=4000)
            for i in range(6)]
    write_periods(tmp_path, recs)
    h = judge(tmp_path, T0)
    assert h.status == "unreliable" and any("5 of 30 packets" in r for r in h.reasons), h
    (tmp_path / health.LINK_PERIODS).unlink()
    write_periods(tmp_path, [link_rec(i + 1.0, released=5, late=1 if i < 2 else 0,
                                      late_max_us=4000) for i in range(6)])
    assert judge(tmp_path, T0).status == "ok"  # 2 late of 30: chance
