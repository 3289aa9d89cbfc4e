"""kill -9 a real node process mid-run, restart it: it recovers and catches up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from nodes.cli import main as cli_main
from nodes.config import load_genesis
from nodes.transport import encode, read_frame
from tests.unit.nodes.cluster import FAST_TIMING, assert_prefix_consistent, free_ports

ROOT = Path(__file__).resolve().parents[3]


def _hashes(folder: Path, vid: str) -> list[str]:
    db = sqlite3.connect(folder / "data" / vid / "ledger.sqlite")
    try:
        return [r[0] for r in db.execute("SELECT hash FROM blocks ORDER BY height")]
    finally:
        db.close()


def _start(folder: Path, vid: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nodes", "node", "--config", str(folder / f"node-{vid}.yaml")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / f"{vid}.err", "ab"),  # noqa: SIM115
        start_new_session=True,
    )


async def _height(port: int) -> int:
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            await asyncio.sleep(0.05)
    writer.write(encode({"t": "status"}))
    reply = await asyncio.wait_for(read_frame(reader), 5)
    writer.close()
    assert reply is not None
    return int(reply["height"])


def test_kill9_restart_recovers_and_catches_up(tmp_path: Path) -> None:
    ports = free_ports(4)
    assert (
        cli_main(
            [
                "genesis",
                "--out",
                str(tmp_path),
                "-n",
                "4",
                "--hosts",
                ",".join(["127.0.0.1"] * 4),
                "--timing",
                json.dumps(FAST_TIMING),
            ]
        )
        == 0
    )
    # Rewrite ports (genesis with one host per node reuses base_port).
    g = load_genesis(tmp_path / "genesis.yaml")
    import yaml

    data = g.model_dump(mode="json")
    for v, p in zip(data["validators"], ports, strict=True):
        v["port"] = p
    (tmp_path / "genesis.yaml").write_text(yaml.safe_dump(data))
    procs = {f"v{i}": _start(tmp_path, f"v{i}") for i in range(4)}
    client = None
    try:
        for p in ports:  # all nodes listening
            asyncio.run(_height(p))
        # The workload client through its CLI: a schedule, a CSV of per-tx times.
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodes",
                "client",
                "--genesis",
                str(tmp_path / "genesis.yaml"),
                "--key",
                str(tmp_path / "keys" / "client0.key"),
                "--schedule",
                "0:100,1:200",
                "--duration",
                "4",
                "--size",
                "64",
                "--drain",
                "5",
                "--out",
                str(tmp_path / "tx.csv"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        time.sleep(1.5)
        procs["v2"].send_signal(signal.SIGKILL)
        procs["v2"].wait(5)
        before = _hashes(tmp_path, "v2")
        time.sleep(1.0)
        procs["v2"] = _start(tmp_path, "v2")
        out, _ = client.communicate(timeout=30)
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["committed"] == summary["submitted"] > 500, summary
        rows = (tmp_path / "tx.csv").read_text().splitlines()
        assert len(rows) == summary["submitted"] + 1 and all(r.split(",")[3] for r in rows[1:])

        # Let everyone settle, then the restarted node must reach the others' height.
        target = max(asyncio.run(_height(p)) for p in ports)
        for _ in range(200):
            if asyncio.run(_height(ports[2])) >= target:
                break
            time.sleep(0.05)
    finally:
        for p in [*procs.values(), *([client] if client else [])]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in [*procs.values(), *([client] if client else [])]:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    chains = {f"v{i}": _hashes(tmp_path, f"v{i}") for i in range(4)}
    assert len(before) > 0
    assert chains["v2"][: len(before)] == before, "a committed block was lost or changed"
    assert len(chains["v2"]) >= target > len(before)
    assert_prefix_consistent(chains)
    records = [
        json.loads(line) for line in (tmp_path / "telemetry" / "v2.jsonl").read_text().splitlines()
    ]
    assert any(r["kind"] == "block" and r["record"].get("synced") for r in records)
