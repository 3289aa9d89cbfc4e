"""Slim flows on loopback: completion times against the deadline, declarations sent
first, and transfers cut by the end of a run still written down."""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from abn.hints import parse_declaration
from abn.slim import SlimPlan, run_client, serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bursts_complete_and_declare_each_flow_first() -> None:
    port = _free_port()
    threading.Thread(target=serve, args=(port,), daemon=True).start()
    time.sleep(0.2)
    hints = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hints.bind(("127.0.0.1", 0))
    hints.settimeout(2)
    plan = SlimPlan("127.0.0.1", port, 100_000, 5.0, burst=3, interval_s=0.1, count=2,
                    declare=("127.0.0.1", hints.getsockname()[1]))
    out = io.StringIO()
    assert run_client(plan, out) == 0
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 6 and {r["error"] for r in rows} == {""}
    assert all(r["met"] == "1" and 0 < float(r["completion_ms"]) < 5000 for r in rows)
    assert sorted((r["burst"], r["index"]) for r in rows) == [
        (b, i) for b in "01" for i in "012"]
    declared = [parse_declaration(hints.recvfrom(600)[0], "127.0.0.1") for _ in rows]
    assert sorted(d.key.sport for d in declared) == sorted(int(r["sport"]) for r in rows)
    assert {(d.size_bytes, d.deadline_s, d.key.dport) for d in declared} == {(100_000, 5.0, port)}


def test_missed_deadline_is_recorded_as_missed() -> None:
    port = _free_port()
    threading.Thread(target=serve, args=(port,), daemon=True).start()
    time.sleep(0.2)
    out = io.StringIO()
    run_client(SlimPlan("127.0.0.1", port, 50_000_000, 0.001, burst=1, count=1), out)
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert row["met"] == "0" and float(row["completion_ms"]) > 1


def test_sigterm_writes_open_transfers_as_stopped(tmp_path: Path) -> None:
    # a server that accepts and never answers: every transfer stays open
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    out = tmp_path / "slim.csv"
    proc = subprocess.Popen([sys.executable, "-m", "abn.slim", "client", "--server",
                             "127.0.0.1", "--port", str(lsock.getsockname()[1]), "--size",
                             "1000", "--deadline", "1", "--burst", "2", "--count", "1",
                             "--out", str(out)], cwd=Path(__file__).resolve().parents[3])
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0
    lsock.close()
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and {r["error"] for r in rows} == {"stopped"}
    assert {r["met"] for r in rows} == {"0"}
