"""Workload client: signed transactions at a given TPS and payload size.

Each transaction goes to every target validator (each producer keeps its own pool, as
in the twin paper). The client records its submit time (also the tx timestamp) and the
time it first hears the transaction committed from any node; per-transaction latency is
commit time - submit time, as in the twin paper.

With a `journal` path every submission and every commit notice is appended to it as it
happens (`s,<id>,<time>` / `c,<id>,<time>`, flushed per batch), so a client killed
before it writes its CSV loses nothing: `ClientResult.from_journal` rebuilds it. On
SIGTERM or SIGINT the CLI stops sending, skips the drain and writes its CSV.

A target that stops reading (its host cut off, its process stopped) never holds up the
others: a batch goes to every target whose unsent backlog is under `max_backlog`
bytes and is skipped (counted per target) for the rest; a connection that gets no
acknowledgement for a few seconds is closed and redialled (issue 17: one validator cut
off for 20 s stopped the whole load, because the client waited on its socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nodes.crypto import KeyPair
from nodes.transport import CONNECT_TIMEOUT, encode, read_frame, tune_socket
from nodes.tx import Transaction


def parse_schedule(text: str) -> list[tuple[float, float]]:
    """'0:100,10:500' -> [(0.0, 100.0), (10.0, 500.0)]: from t seconds on, send at tps."""
    out = []
    for part in text.split(","):
        try:
            start, tps = part.split(":")
            out.append((float(start), float(tps)))
        except ValueError as exc:
            raise ValueError(f"schedule entry '{part}' is not 'seconds:tps'") from exc
    if not out or out[0][0] != 0.0:
        raise ValueError("schedule must start at 0, e.g. '0:100,10:500'")
    if any(b[0] <= a[0] for a, b in zip(out, out[1:], strict=False)):
        raise ValueError("schedule times must increase")
    if any(tps < 0 for _, tps in out):
        raise ValueError("schedule rates must be >= 0")
    return out


@dataclass
class ClientResult:
    submitted: dict[str, float] = field(default_factory=dict)
    committed: dict[str, float] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    ended: float = 0.0

    def latencies(self) -> np.ndarray:
        return np.array(
            [self.committed[i] - self.submitted[i] for i in self.committed if i in self.submitted]
        )

    def summary(self) -> dict[str, Any]:
        lat = self.latencies()
        # Throughput over the span in which commits happened (includes the drain).
        last = max(self.committed.values(), default=self.ended)
        span = max(max(last, self.ended) - self.started, 1e-9)
        return {
            "submitted": len(self.submitted),
            "committed": len(self.committed),
            "rejected": dict(self.rejected),
            "committed_tps": len(self.committed) / span,
            "latency_mean": float(lat.mean()) if lat.size else None,
            "latency_p50": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p95": float(np.percentile(lat, 95)) if lat.size else None,
        }

    @classmethod
    def from_journal(cls, path: Path) -> ClientResult:
        """What a client's journal recorded (a line cut short by a kill is skipped)."""
        res = cls()
        with open(path) as fh:
            for line in fh:
                parts = line.rstrip("\n").split(",")
                if len(parts) != 3 or not line.endswith("\n"):
                    continue
                kind, tx_id, t = parts
                try:
                    at = float(t)
                except ValueError:
                    continue
                if kind == "s":
                    res.submitted.setdefault(tx_id, at)
                elif kind == "c":
                    res.committed.setdefault(tx_id, at)
        times = list(res.submitted.values())
        res.started, res.ended = min(times, default=0.0), max(times, default=0.0)
        return res

    def write_csv(self, path: Path) -> None:
        """Every submitted transaction, committed or not (empty commit time)."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["tx_id", "submit_time", "commit_time", "latency"])
            for tx_id, sub in self.submitted.items():
                com = self.committed.get(tx_id)
                w.writerow(
                    [
                        tx_id,
                        f"{sub:.6f}",
                        "" if com is None else f"{com:.6f}",
                        "" if com is None else f"{com - sub:.6f}",
                    ]
                )


class WorkloadClient:
    def __init__(
        self,
        client_id: str,
        key: KeyPair,
        targets: list[tuple[str, int]],
        schedule: list[tuple[float, float]],
        duration: float,
        payload_size: int = 100,
        tick: float = 0.01,
        drain: float = 5.0,
        connect_timeout: float = 10.0,
        journal: Path | None = None,
        max_backlog: int = 1024 * 1024,
    ) -> None:
        if not targets:
            raise ValueError("client needs at least one target host:port")
        self.client_id = client_id
        self.key = key
        self.targets = targets
        self.schedule = schedule
        self.duration = duration
        self.payload = b"\x00" * payload_size
        self.tick = tick
        self.drain = drain
        self.connect_timeout = connect_timeout
        self.max_backlog = max_backlog
        self.skipped: Counter[str] = Counter()
        """Batches not sent to a target (host:port) because it was not reading."""
        self.result = ClientResult()
        self._seq = 0
        self.journal_path = journal
        self._journal: Any = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """End the run now: no more sends, no drain (a signal handler calls this)."""
        self._stop.set()

    def _note(self, lines: list[str]) -> None:
        """Append to the journal (callers check there is one before building lines)."""
        if lines:
            self._journal.write("".join(lines))
            self._journal.flush()

    def _rate_at(self, t: float) -> float:
        rate = 0.0
        for start, tps in self.schedule:
            if t >= start:
                rate = tps
        return rate

    async def run(self) -> ClientResult:
        # Fail fast if a node is unreachable at start; later failures (a crashed node)
        # only drop that target until it comes back.
        self._writers: dict[int, asyncio.StreamWriter | None] = {}
        if self.journal_path is not None:
            self._journal = open(self.journal_path, "w")  # noqa: SIM115 (closed below)
        first = await asyncio.gather(*(self._connect(h, p) for h, p in self.targets))
        tasks = [asyncio.create_task(self._keep(i, conn)) for i, conn in enumerate(first)]
        res = self.result
        res.started = t0 = time.time()
        owed = 0.0
        last = t0
        try:
            while (now := time.time()) - t0 < self.duration and not self._stop.is_set():
                owed += self._rate_at(now - t0) * (now - last)
                last = now
                count = int(owed)
                owed -= count
                if count:
                    self._send_batch(count)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.tick)
            res.ended = time.time()
            deadline = time.time() + self.drain
            while len(res.committed) + sum(res.rejected.values()) < len(res.submitted):
                if time.time() > deadline or self._stop.is_set():
                    break
                await asyncio.sleep(0.02)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._journal is not None:
                self._journal.close()
                self._journal = None
        return res

    def _send_batch(self, count: int) -> None:
        res = self.result
        batch = []
        for _ in range(count):
            self._seq += 1
            ts = time.time()
            tx = Transaction.create(
                self.key, self.client_id, f"{self.client_id}-{self._seq}", ts, self.payload
            )
            res.submitted[tx.id] = ts
            batch.append(tx.to_wire())
        if self._journal is not None:
            self._note([f"s,{tx['id']},{res.submitted[tx['id']]:.6f}\n" for tx in batch])
        frame = encode({"t": "txs", "txs": batch})
        for i, writer in self._writers.items():
            if (writer is None or writer.is_closing()
                    or writer.transport.get_write_buffer_size() > self.max_backlog):
                self.skipped[self._name(i)] += 1
            else:
                writer.write(frame)

    def _name(self, i: int) -> str:
        host, port = self.targets[i]
        return f"{host}:{port}"

    async def _keep(self, i: int, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        """Read acks and commit notices from target i; reconnect if it goes away."""
        host, port = self.targets[i]
        while True:
            reader, writer = conn
            tune_socket(writer)
            writer.write(encode({"t": "subscribe", "client": self.client_id}))
            self._writers[i] = writer
            try:
                await self._read(reader)
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self._writers[i] = None
                writer.close()
            while True:
                await asyncio.sleep(0.2)
                try:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                  CONNECT_TIMEOUT)
                    break
                except (OSError, TimeoutError):
                    continue

    async def _connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Nodes may still be starting (e.g. on Mininet hosts): retry for a while."""
        deadline = time.time() + self.connect_timeout
        while True:
            try:
                return await asyncio.open_connection(host, port)
            except OSError as exc:
                if time.time() > deadline:
                    raise OSError(f"cannot reach node {host}:{port}: {exc}") from exc
                await asyncio.sleep(0.1)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        res = self.result
        acked_bad: set[str] = set()
        while (msg := await read_frame(reader)) is not None:
            t = msg.get("t")
            if t == "committed":
                now = time.time()
                fresh = [i for i in msg["ids"] if i not in res.committed]
                for tx_id in fresh:
                    res.committed[tx_id] = now
                if self._journal is not None:
                    self._note([f"c,{i},{now:.6f}\n" for i in fresh])
            elif t == "tx_acks":
                for ack in msg["rejected"]:
                    # 'duplicate' from a second node only means another node has it.
                    if (
                        not ack["ok"]
                        and ack["reason"] != "duplicate"
                        and ack["id"] not in acked_bad
                    ):
                        acked_bad.add(ack["id"])
                        res.rejected[ack["reason"]] += 1
