"""Slim flows: short transfers with a deadline, the ABN paper's model of consensus traffic.

Each transfer is its own TCP connection (so a new flow at the middlebox): the client
sends an 8-byte length and `size` bytes, the server answers one byte once it has them
all, and the client records the completion time (connect to answer) against the
deadline. Transfers come in bursts of `burst` (4 = the PBFT validators of the paper)
every `interval` seconds; with `--declare HOST:PORT` each is declared to the ABN shim
first (abn.hints), since the paper's middlebox knows each flow's size and deadline.

Records stream to the CSV as each transfer ends (one row, flushed), so a run that is
stopped keeps every finished transfer; transfers still open at the end are written as
not completed.

    python -m abn.slim server --port 6100
    python -m abn.slim client --server 10.0.5.2 --port 6100 --size 65536 --deadline 0.5 \\
        --burst 4 --interval 1 --count 30 [--congestion abn] [--declare 10.0.2.2:7400] \\
        --out slim.csv
"""

from __future__ import annotations

import argparse
import csv
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from abn.hints import encode_declaration

HEADER = struct.Struct("!Q")
MAX_TRANSFER = 1 << 32
FIELDS = ["burst", "index", "start_s", "sport", "size_bytes", "deadline_ms", "completion_ms",
          "met", "congestion", "error"]


# ---------------------------------------------------------------- server

def _serve_one(conn: socket.socket, timeout_s: float) -> None:
    conn.settimeout(timeout_s)
    try:
        head = _read_exact(conn, HEADER.size)
        (size,) = HEADER.unpack(head)
        if size > MAX_TRANSFER:
            return  # refuse silently: no answer bigger than the question
        left = size
        while left:
            chunk = conn.recv(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)
        conn.sendall(b"\x01")
    except OSError:
        pass
    finally:
        conn.close()


def _read_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed early")
        buf += chunk
    return buf


def serve(port: int, timeout_s: float = 30.0, max_open: int = 256) -> None:
    """Accept transfers until killed; at most `max_open` at once, each bounded in time."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(512)
    slots = threading.BoundedSemaphore(max_open)
    print(f"abn.slim server: listening on {port}", flush=True)
    while True:
        conn, _ = lsock.accept()
        if not slots.acquire(blocking=False):
            conn.close()
            continue

        def run(c: socket.socket = conn) -> None:
            try:
                _serve_one(c, timeout_s)
            finally:
                slots.release()

        threading.Thread(target=run, daemon=True).start()


# ---------------------------------------------------------------- client

@dataclass(frozen=True)
class SlimPlan:
    server: str
    port: int
    size_bytes: int
    deadline_s: float
    burst: int = 4
    interval_s: float = 1.0
    count: int = 10
    """Bursts."""
    congestion: str | None = None
    declare: tuple[str, int] | None = None

    def starts(self) -> Iterator[tuple[int, float]]:
        for b in range(self.count):
            yield b, b * self.interval_s


class Recorder:
    """One CSV row per transfer, flushed as it is written."""

    def __init__(self, out: IO[str]) -> None:
        self.lock = threading.Lock()
        self.out = out
        self.writer = csv.DictWriter(out, FIELDS)
        self.writer.writeheader()
        out.flush()
        self.open: dict[tuple[object, object], dict[str, object]] = {}

    def opened(self, row: dict[str, object]) -> None:
        with self.lock:
            self.open[(row["burst"], row["index"])] = row

    def write(self, row: dict[str, object]) -> None:
        with self.lock:
            if self.open.pop((row["burst"], row["index"]), None) is None and self.closed:
                return
            self.writer.writerow(row)
            self.out.flush()

    closed = False

    def close_open(self) -> None:
        """Write the transfers still under way as not completed (the run is ending)."""
        with self.lock:
            self.closed = True
            for row in self.open.values():
                self.writer.writerow({**row, "completion_ms": "", "met": 0,
                                      "error": "stopped"})
            self.open.clear()
            self.out.flush()


def transfer(plan: SlimPlan, burst: int, index: int, t0: float, rec: Recorder,
             timeout_s: float) -> None:
    start = time.monotonic()
    row: dict[str, object] = {"burst": burst, "index": index, "start_s": round(start - t0, 4),
                              "size_bytes": plan.size_bytes,
                              "deadline_ms": round(plan.deadline_s * 1e3, 3),
                              "congestion": plan.congestion or "", "error": ""}
    rec.opened(row)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if plan.congestion:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION,
                            plan.congestion.encode())
        sock.bind(("0.0.0.0", 0))
        sport = sock.getsockname()[1]
        row["sport"] = sport
        if plan.declare is not None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.sendto(encode_declaration(sport, plan.server, plan.port, plan.size_bytes,
                                            plan.deadline_s), plan.declare)
        sock.settimeout(timeout_s)
        sock.connect((plan.server, plan.port))
        sock.sendall(HEADER.pack(plan.size_bytes))
        payload = memoryview(bytes(min(plan.size_bytes, 1 << 20)))
        left = plan.size_bytes
        while left:
            n = sock.send(payload[:min(left, len(payload))])
            left -= n
        if sock.recv(1) != b"\x01":
            raise ConnectionError("server closed without answering")
        ms = (time.monotonic() - start) * 1e3
        row.update(completion_ms=round(ms, 3), met=int(ms <= plan.deadline_s * 1e3))
    except OSError as exc:
        row.update(completion_ms="", met=0, error=type(exc).__name__)
    finally:
        sock.close()
    rec.write(row)


def run_client(plan: SlimPlan, out: IO[str], timeout_s: float = 30.0) -> int:
    """Start every burst on time (each transfer in its own thread); wait for the last."""
    rec = Recorder(out)

    def stop(*_: object) -> None:
        rec.close_open()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    t0 = time.monotonic()
    threads: list[threading.Thread] = []
    for b, at in plan.starts():
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for i in range(plan.burst):
            th = threading.Thread(target=transfer, args=(plan, b, i, t0, rec, timeout_s),
                                  daemon=True)
            th.start()
            threads.append(th)
    for th in threads:
        th.join(timeout_s)
    return 0


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m abn.slim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--size", type=int, required=True, help="bytes per transfer")
    c.add_argument("--deadline", type=float, required=True, help="seconds")
    c.add_argument("--burst", type=int, default=4)
    c.add_argument("--interval", type=float, default=1.0)
    c.add_argument("--count", type=int, default=10, help="bursts")
    c.add_argument("--congestion")
    c.add_argument("--declare", type=_host_port, help="the shim's HOST:PORT for declarations")
    c.add_argument("--out", required=True)
    c.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    if args.mode == "server":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        serve(args.port)
        return 0
    if not 0 < args.size <= MAX_TRANSFER or args.deadline <= 0 or args.burst < 1:
        print("abn.slim: size must be 1..2^32 bytes, deadline > 0, burst >= 1",
              file=sys.stderr)
        return 2
    plan = SlimPlan(args.server, args.port, args.size, args.deadline, args.burst,
                    args.interval, args.count, args.congestion, args.declare)
    with Path(args.out).open("w", newline="") as out:
        return run_client(plan, out, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
