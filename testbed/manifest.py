"""manifest.json: everything needed to know what a run was, written into each run folder."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from testbed.config import PROJECT_ROOT


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain")) if commit else None
    return {"commit": commit or None, "dirty": dirty}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "kernel": platform.release()}
    for dist in ("chaintwin", "pydantic", "numpy", "matplotlib", "dpkt", "gymnasium",
                 "cryptography", "tensorflow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import mininet.net

        out["mininet"] = getattr(mininet.net, "VERSION", None)
    except ImportError:
        out["mininet"] = None
    for tool, args in (("iperf3", ["--version"]), ("tcpdump", ["--version"])):
        try:
            p = subprocess.run([tool, *args], capture_output=True, text=True, timeout=5)
            out[tool] = (p.stdout or p.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            out[tool] = None
    return out


def write(run_dir: Path, data: dict[str, Any]) -> Path:
    path = run_dir / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path


def read(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no manifest.json (not a run folder?)")
    return json.loads(path.read_text())
