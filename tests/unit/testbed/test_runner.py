"""The runner's health sequencing, on a stand-in network (no root, no Mininet started)."""

import json
import time
from types import SimpleNamespace

import pytest

from testbed import capabilities, config, health, runner
from testbed.config import PROJECT_ROOT
from testbed.errors import EmulationError


class FakeNetwork:
    """What `_run_emulation` uses of `Network`; `start` plays the delay line's records."""

    instances: list["FakeNetwork"] = []

    def __init__(self, topo, backend, run_dir, seed, timeline_delay_links, *, periods=None,
                 fail_start=False, fail_check=False):
        self.run_dir, self.periods = run_dir, periods
        self.fail_start, self.fail_check = fail_start, fail_check
        self.plan = SimpleNamespace(host_ips={}, routes={}, ip_of=lambda h: "10.0.0.1")
        self.directions, self.commands = [], []
        self.offload = {}
        self.delay_lines = object() if periods is not None else None
        self.stopped = False
        FakeNetwork.instances.append(self)

    def start(self):
        if self.fail_start:
            raise EmulationError("no network for you")
        if self.periods is not None:
            (self.run_dir / "linkemu").mkdir()
            now = time.time()
            with open(self.run_dir / health.LINK_PERIODS, "w") as fh:
                for r in self.periods:
                    fh.write(json.dumps({**r, "unix": now + r["unix"]}) + "\n")

    def check_delay_lines(self):
        if self.fail_check:
            raise EmulationError("delay line exited (1)")

    def delay_line_stats(self):
        return {}

    def stop(self):
        self.stopped = True


class SpySampler(health.HostCpuSampler):
    instances: list["SpySampler"] = []

    def __init__(self, run_dir):
        super().__init__(run_dir, interval_s=0.05)
        SpySampler.instances.append(self)


@pytest.fixture
def emulate(tmp_path, monkeypatch):
    """Run a 0.3 s emulation experiment with no processes on FakeNetwork(**net_kwargs)."""
    FakeNetwork.instances.clear()
    SpySampler.instances.clear()
    monkeypatch.setattr(capabilities, "probe",
                        lambda: capabilities.Report(checks=[], shaping_backend="netem"))
    monkeypatch.setattr(health, "HostCpuSampler", SpySampler)
    exp = tmp_path / "bare.yaml"
    exp.write_text(f"name: bare\ntopology: {PROJECT_ROOT / 'topologies' / 'dumbbell.yaml'}\n"
                   "duration: 0.3\n")

    def go(**net_kwargs):
        monkeypatch.setattr(runner, "Network", lambda *a: FakeNetwork(*a, **net_kwargs))
        run_dir = runner.run(config.load_experiment(exp), tmp_path / "results",
                             show_progress=False)
        return run_dir, json.loads((run_dir / "manifest.json").read_text())

    return go


def link(overflow=0):
    return {"kind": "link", "unix": 0.2, "period_s": 1.0, "link": "bottleneck:s>r",
            "received": 10, "released": 10, "dropped": 0, "late_over_1ms": 0,
            "late_max_us": 100, "held": 0, "overflow": overflow}


def test_a_clean_run_is_ok_with_host_samples_and_health(emulate):
    run_dir, man = emulate()
    assert man["status"] == "ok", man["health"]["reasons"]
    assert man["health"]["status"] == "ok", man["health"]["reasons"]
    assert (run_dir / health.HOST_CPU).read_text().count("\n") >= 3
    (s,) = SpySampler.instances
    assert s._thread is not None and not s._thread.is_alive()


def test_delay_line_evidence_makes_the_run_unreliable_not_failed(emulate):
    run_dir, man = emulate(periods=[link(overflow=4)])
    assert man["status"] == "unreliable" and "error" not in man
    assert [p["kind"] for p in man["health"]["periods"]] == ["queue_overflow"]
    assert "4 packets overflowed" in man["health"]["reasons"][0]


def test_a_delay_line_that_wrote_nothing_leaves_health_unknown(emulate):
    run_dir, man = emulate(periods=[])
    assert man["status"] == "ok" and man["health"]["status"] == "unknown"


def test_sampler_stops_and_health_is_kept_when_the_run_fails(emulate):
    with pytest.raises(EmulationError, match="delay line exited"):
        emulate(fail_check=True)
    man = json.loads((FakeNetwork.instances[0].run_dir / "manifest.json").read_text())
    assert man["status"] == "failed" and "health" in man
    (s,) = SpySampler.instances
    assert not s._thread.is_alive() and FakeNetwork.instances[0].stopped


def test_no_health_when_the_timeline_never_started(emulate):
    with pytest.raises(EmulationError, match="no network"):
        emulate(fail_start=True)
    man = json.loads((FakeNetwork.instances[0].run_dir / "manifest.json").read_text())
    assert man["status"] == "failed" and "health" not in man
    (s,) = SpySampler.instances
    assert s._thread is None  # never started, stop() was harmless
