"""Nothing a run creates outlives it: not on a normal end, a failing process or Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from testbed import leftovers
from testbed.config import PROJECT_ROOT

from .conftest import LINE_TOPO

HOSTS = list(LINE_TOPO["hosts"])


def _write(tmp_path: Path, exp: dict) -> Path:
    (tmp_path / "topo.yaml").write_text(yaml.safe_dump(LINE_TOPO))
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"topology": "topo.yaml", **exp}))
    return path


IPERF_PAIR = [
    {"name": "srv", "kind": "iperf3_server", "host": "h2"},
    {"name": "flow", "kind": "iperf3_client", "host": "h1", "server": "h2", "start": 0.5},
]
SHAPED = {"path": {"bw": "50mbit", "delay": "10ms", "jitter": "2ms", "loss": "0.1%"}}


def _manifest(results: Path) -> dict:
    (man,) = results.glob("*/*/manifest.json")
    return json.loads(man.read_text())


def test_failing_required_process_fails_the_run_and_cleans_up(tmp_path: Path) -> None:
    path = _write(tmp_path, {
        "name": "failing", "duration": 20, "links": SHAPED,
        "processes": [
            *IPERF_PAIR,
            {"name": "broken", "kind": "command", "host": "h1", "required": True,
             "start": 2, "command": "echo about to fail >&2; exit 3"},
        ],
    })
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(path), "--results",
                        str(tmp_path / "res"), "-q"], capture_output=True, text=True,
                       cwd=PROJECT_ROOT, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "process broken on h1 exited with 3" in p.stderr
    assert "about to fail" in p.stderr
    man = _manifest(tmp_path / "res")
    assert man["status"] == "failed"
    assert leftovers.find(HOSTS) == []


def test_ctrl_c_mid_run_tears_everything_down(tmp_path: Path) -> None:
    path = _write(tmp_path, {
        "name": "interrupted", "duration": 60, "links": SHAPED,
        "processes": IPERF_PAIR,
        "captures": [{"host": "h2"}],
    })
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", str(path),
                             "--results", str(tmp_path / "res")], stderr=subprocess.PIPE,
                            text=True, cwd=PROJECT_ROOT)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    for line in proc.stderr:  # progress lines: wait until traffic has run a while
        if "[interrupted]" in line and float(line.split("%")[1].split("/")[0]) >= 3:
            break
        assert time.monotonic() < deadline, "run did not start"
    assert leftovers.find(HOSTS), "the run should have live namespaces before Ctrl-C"
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, rest
    man = _manifest(tmp_path / "res")
    assert man["status"] == "interrupted"
    assert leftovers.find(HOSTS) == []
