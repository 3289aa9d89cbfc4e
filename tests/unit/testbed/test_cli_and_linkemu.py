"""CLI behaviour a user relies on, and the delay line's settings checks (no root)."""

import json

import pytest

from testbed import capabilities, cli
from testbed.config import PROJECT_ROOT
from testbed.linkemu import Settings


def test_validate_reports_bad_file_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntopology: ../topologies/dumbbell.yaml\nduration: soon\n")
    assert cli.main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "duration" in err


def test_validate_accepts_shipped_experiments(capsys):
    assert cli.main(["validate", str(PROJECT_ROOT / "experiments" / "quickstart.yaml")]) == 0
    assert "quickstart" in capsys.readouterr().out


def test_bad_set_path_is_reported(capsys):
    qs = str(PROJECT_ROOT / "experiments" / "quickstart.yaml")
    assert cli.main(["validate", qs, "--set", "links.bottleneck.speed=5"]) == 2
    assert "links.bottleneck.speed" in capsys.readouterr().err


def test_doctor_json_round_trips():
    rep = capabilities.probe()
    data = json.loads(json.dumps(rep.to_dict()))
    again = capabilities.Report.from_dict(data)
    assert again.can_emulate == rep.can_emulate
    assert {c["name"] for c in data["checks"]} >= {"root", "mininet", "iperf3", "kernel:htb"}
    assert "emulation:" in rep.render()


def test_delay_line_settings_reject_nonsense():
    s = Settings()
    s.update({"delay_us": 5000, "loss": 0.01, "gso": False})
    assert (s.delay_us, s.loss, s.gso) == (5000, 0.01, False)
    with pytest.raises(ValueError, match="unknown setting"):
        s.update({"latency": 3})
    with pytest.raises(ValueError, match="invalid settings"):
        s.update({"loss": 2, "delay_us": 9})
    assert (s.delay_us, s.loss) == (5000, 0.01)  # a bad change loses nothing


def test_simulation_run_writes_manifest_and_report_redraws(tmp_path):
    """mode: simulation through the runner: manifest, artifacts, then report from CSVs."""
    from testbed import config, runner

    loaded = config.load_experiment(PROJECT_ROOT / "experiments" / "paper" / "fig4a.yaml",
                                    ["simulation.params.seeds=1",
                                     "simulation.params.episodes=2"])
    run_dir = runner.run(loaded, tmp_path, show_progress=False)
    man = json.loads((run_dir / "manifest.json").read_text())
    assert man["status"] == "ok" and man["mode"] == "simulation"
    assert man["simulation"]["params"]["seeds"] == 1
    assert "capabilities" in man and man["overrides"][0] == "simulation.params.seeds=1"
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert pngs and set(pngs) <= set(man["artifacts"])
    for p in run_dir.glob("*.png"):
        p.unlink()
    redrawn = runner.report(run_dir)
    assert [p.name for p in redrawn] == pngs


def test_doctor_names_the_compiled_delay_line_and_has_no_silent_fallback(monkeypatch):
    rep = capabilities.probe()
    (check,) = [c for c in rep.checks if c.name == "compiled delay line"]
    assert check.ok and "_nfqloop" in check.detail
    monkeypatch.setattr(capabilities, "compiled_loop",
                        lambda: (False, "abn._nfqloop does not import (test)"))
    broken = capabilities.probe()
    (check,) = [c for c in broken.checks if c.name == "compiled delay line"]
    assert not check.ok and "setup.sh" in check.fix
    if rep.shaping_backend == "userspace":  # this machine: no netem
        assert broken.shaping_backend is None
        assert "compiled delay line" in broken.render()


def test_delay_line_refuses_to_start_without_the_compiled_loop(monkeypatch):
    import builtins

    from testbed import linkemu

    real_import = builtins.__import__

    def no_loop(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "abn" and fromlist and "_nfqloop" in fromlist:
            raise ImportError("simulated: not built")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_loop)
    with pytest.raises(RuntimeError, match="setup.sh"):
        linkemu.compiled()
