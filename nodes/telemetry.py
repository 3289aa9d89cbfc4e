"""Node telemetry: JSON lines on disk, and the per-block sensor feed to the twin.

Every line is {"kind": ..., "t": wall time, "node": id, ...}. Kinds: 'block' (a
BlockSensorRecord under 'record'), 'vote', 'round_change', 'error', 'reject',
'switch', 'start', 'sync'. The twin endpoint gets the 'block' records only, one JSON
object per line over TCP; if it is down, records are counted as dropped, never queued
without bound and never allowed to stall consensus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any, TextIO

from nodes.sensor import BlockSensorRecord


class Telemetry:
    def __init__(
        self,
        node_id: str,
        path: Path | None,
        twin_endpoint: str | None = None,
        log_votes: bool = False,
    ) -> None:
        self.node_id = node_id
        self.log_votes = log_votes
        self._fh: TextIO | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self._twin = TwinStream(twin_endpoint) if twin_endpoint else None
        self.counts: dict[str, int] = {}

    def start(self) -> None:
        if self._twin:
            self._twin.start()

    def event(self, kind: str, **fields: Any) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "vote" and not self.log_votes:
            return
        if self._fh is not None:
            line = {"kind": kind, "t": time.time(), "node": self.node_id, **fields}
            self._fh.write(json.dumps(line, separators=(",", ":")) + "\n")

    def block(self, record: BlockSensorRecord) -> None:
        data = record.to_dict()
        self.event("block", record=data)
        if self._twin:
            self._twin.push(data)

    async def close(self) -> None:
        if self._twin:
            await self._twin.close()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def twin_dropped(self) -> int:
        return self._twin.dropped if self._twin else 0


class TwinStream:
    """Best-effort newline-delimited JSON stream to the twin, reconnecting as needed."""

    def __init__(self, endpoint: str, max_queue: int = 10_000) -> None:
        host, _, port = endpoint.rpartition(":")
        self.host, self.port = host, int(port)
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_queue)
        self.dropped = 0
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def push(self, record: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self) -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            try:
                while True:
                    line = await self.queue.get()
                    writer.write(line)
                    await writer.drain()
                    self.sent += 1
            except (OSError, ConnectionError):
                self.dropped += 1
            finally:
                writer.close()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
