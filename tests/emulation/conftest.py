"""Emulation tests: root + Mininet; skipped, with the reason, where either is missing.

They build real namespaces, veths, qdiscs and iptables rules, and run one at a time
(only one Mininet may run on a machine).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import config, leftovers, runner


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "emulation tests need root (run as root: sudo .venv/bin/chaintwin test)"
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        return "emulation tests need Debian's mininet (./setup.sh, then use .venv)"
    if not shutil.which("mnexec"):
        return "emulation tests need mnexec (apt-get install mininet)"
    return None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = _skip_reason()
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.emulation)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


LINE_TOPO = {
    "name": "line",
    "hosts": {"h1": {"role": "endpoint"}, "mb": {"role": "middlebox"},
              "h2": {"role": "endpoint"}},
    "links": [
        {"name": "left", "ends": ["h1", "mb"]},
        {"name": "path", "ends": ["mb", "h2"]},
    ],
}


@pytest.fixture
def run_shipped(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run a shipped experiment with overrides; check nothing is left; return
    (loaded experiment, run_dir, manifest)."""

    def go(name: str, overrides: list[str]) -> tuple[Any, Path, dict]:
        import json

        loaded = config.load_experiment(config.PROJECT_ROOT / "experiments" / name, overrides)
        run_dir = runner.run(loaded, tmp_path, show_progress=False)
        assert leftovers.find(list(loaded.topology.hosts)) == []
        man = json.loads((run_dir / "manifest.json").read_text())
        # These tests check that shipped experiments work; whether the emulator kept up
        # is the health judge's verdict (tests/emulation/test_health.py). On this
        # 2-core machine the delay line still releases 1-7% of a second's packets late
        # in bursts (issue 13 is open), so an `unreliable` run is reported, not failed.
        assert man["status"] in ("ok", "unreliable"), man.get("error")
        if man["status"] == "unreliable":
            warnings.warn(f"{name}: run marked unreliable: {man['health']['reasons'][:3]}",
                          stacklevel=2)
        return loaded, run_dir, man

    return go


@pytest.fixture
def run_experiment(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a topology + experiment into tmp_path, run it, return (run_dir, manifest)."""

    def go(exp: dict[str, Any], topo: dict[str, Any] | None = None) -> tuple[Path, dict]:
        topo = topo or LINE_TOPO
        (tmp_path / "topo.yaml").write_text(yaml.safe_dump(topo))
        exp = {"topology": "topo.yaml", **exp}
        path = tmp_path / f"{exp['name']}.yaml"
        path.write_text(yaml.safe_dump(exp))
        loaded = config.load_experiment(path)
        run_dir = runner.run(loaded, tmp_path / "results", show_progress=False)
        assert leftovers.find(list(topo["hosts"])) == []
        import json

        return run_dir, json.loads((run_dir / "manifest.json").read_text())

    return go
