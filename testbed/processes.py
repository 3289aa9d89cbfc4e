"""Turn experiment process entries into commands on hosts, and supervise them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.addressing import Plan
from testbed.chain import ChainRuntime
from testbed.errors import ConfigError
from testbed.experiment_schema import (
    ChainClient,
    Command,
    Iperf3Client,
    Iperf3Server,
    Ping,
    Process,
    SlimClient,
    SlimServer,
)
from testbed.network import popen

ROLE_OUTPUTS = {"iperf3_client": "json", "iperf3_server": "json"}
SERVER_KINDS = (Iperf3Server, SlimServer)
"""Processes that listen on a port: started before the clients due at the same time, and
waited for until they listen."""


def server_address(p: Process) -> tuple[str, int] | None:
    """(host, port) of the server a client process connects to, if it is one."""
    if isinstance(p, Iperf3Client | SlimClient):
        return p.server, p.port
    return None


def argv_for(p: Process, plan: Plan, run_dir: Path, run_duration: float,
             chain: ChainRuntime | None = None, declare_port: int | None = None) -> list[str]:
    """The command line that starts process `p` on its host; `declare_port` is the hints
    port of the shim a slim client declares its flows to."""
    if isinstance(p, Iperf3Server):
        return ["iperf3", "-s", "-p", str(p.port), "-J", "--forceflush"]
    if isinstance(p, Iperf3Client):
        secs = p.duration if p.duration is not None else max(1.0, run_duration - p.start)
        argv = ["iperf3", "-c", plan.ip_of(p.server), "-p", str(p.port), "-t", f"{secs:g}",
                "-C", p.congestion, "-J", "-i", "0.5", "-P", str(p.parallel),
                "--get-server-output"]  # the receiver's per-interval view, in the same JSON
        if p.bitrate:
            argv += ["-b", p.bitrate]
        if p.reverse:
            argv.append("-R")
        return argv
    if isinstance(p, Ping):
        # -U: user-to-user latency. ping otherwise uses the kernel's receive timestamp,
        # taken before a delay line in the receiving host's PREROUTING holds the packet.
        return ["ping", "-n", "-U", "-c", str(p.count), "-i", f"{p.interval:g}",
                "-s", str(p.size), plan.ip_of(p.target)]
    if isinstance(p, Command):
        return ["bash", "-c", expand(p.command, plan, run_dir)]
    if isinstance(p, SlimServer):
        return [sys.executable, "-m", "abn.slim", "server", "--port", str(p.port)]
    if isinstance(p, SlimClient):
        argv = [sys.executable, "-m", "abn.slim", "client", "--server", plan.ip_of(p.server),
                "--port", str(p.port), "--size", str(p.size), "--deadline", f"{p.deadline:g}",
                "--burst", str(p.burst), "--interval", f"{p.interval:g}",
                "--count", str(p.count), "--out", str(run_dir / f"slim_{p.name}.csv")]
        if p.congestion:
            argv += ["--congestion", p.congestion]
        if p.declare is not None:
            if declare_port is None:
                raise ConfigError(f"process {p.name}: declare: host {p.declare!r} runs no ABN "
                                  "shim with a hints_port")
            argv += ["--declare", f"{plan.ip_of(p.declare)}:{declare_port}"]
        return argv
    if isinstance(p, ChainClient):
        if chain is None:
            raise ConfigError(f"process {p.name}: chain_client needs a 'chain' section")
        return chain.client_argv(p, run_dir)
    raise TypeError(f"unknown process kind {type(p).__name__}")


def expand(template: str, plan: Plan, run_dir: Path) -> str:
    def ip(m: re.Match[str]) -> str:
        host = m.group(1)
        if host not in plan.host_ips:
            raise ConfigError(f"command: '{{ip:{host}}}' names an unknown host")
        return plan.ip_of(host)

    out = re.sub(r"\{ip:([A-Za-z_][A-Za-z0-9_]*)\}", ip, template)
    return out.replace("{run_dir}", shlex.quote(str(run_dir)))


@dataclass
class Running:
    spec: Process
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    stopped_by_us: bool = False
    ended_at: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.spec.name, "kind": self.spec.kind, "host": self.spec.host,
            "argv": self.argv, "log": self.log_path.name, "started_at": self.started_at,
            "ended_at": self.ended_at, "returncode": self.proc.returncode,
            "stopped_by_runner": self.stopped_by_us,
        }


def start(node: Any, p: Process, argv: list[str], log_dir: Path, t_rel: float,
          launch: list[str] | None = None) -> Running:
    """Start `argv` on `node` (as `launch` if given: argv wrapped by a role, e.g. inside
    a cgroup); `argv` is what the manifest records."""
    ext = "json" if ROLE_OUTPUTS.get(p.kind) == "json" else "log"
    log_path = log_dir / f"{p.name}.{ext}"
    err_path = log_dir / f"{p.name}.stderr"
    out = open(log_path, "wb")
    err = open(err_path, "wb")
    try:
        proc = popen(node, launch or argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    finally:
        out.close()
        err.close()
    return Running(p, argv, proc, log_path, t_rel)


def wait_listening(node: Any, port: int, timeout: float = 5.0) -> bool:
    """Wait until something listens on TCP `port` in the node's namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f":{port} " in node.cmd(f"ss -Htln sport = :{port}"):
            return True
        time.sleep(0.05)
    return False


def check_exits(running: dict[str, Running]) -> None:
    """Note the end of every process that exited; raise ProcessFailed for one that had to
    succeed and failed without the runner stopping it (its log's tail says why)."""
    from testbed.errors import ProcessFailed

    for r in running.values():
        code = r.proc.poll()
        if code is None or r.ended_at is not None:
            continue
        r.ended_at = time.time()
        if code != 0 and not r.stopped_by_us and r.spec.must_succeed():
            err = r.log_path.with_suffix(".stderr")
            tail = err.read_text(errors="replace")[-400:] if err.exists() else ""
            if not tail.strip():
                tail = r.log_path.read_text(errors="replace")[-400:]
            raise ProcessFailed(f"process {r.spec.name} on {r.spec.host} exited with {code}: "
                                f"{tail.strip()}")
