"""Asyncio TCP transport: length-prefixed JSON frames between peers and clients.

Each node dials every peer once and keeps that connection for its outgoing messages;
what arrives on accepted connections goes to one handler, with a reply channel for
clients. A `delay` hook (src, dst, msg) -> seconds lets tests delay and reorder
messages, or inject link latency, without touching consensus code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_FRAME = 64 * 1024 * 1024
READ_LIMIT = 1024 * 1024
_LEN = struct.Struct(">I")

DelayFn = Callable[[str, str, dict[str, Any]], float | None]


class FrameError(ValueError):
    """A peer sent something that is not a frame of JSON object."""


def encode(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Next message, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    body = await reader.readexactly(size)
    try:
        msg = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FrameError(f"frame is not JSON: {exc}") from exc
    if not isinstance(msg, dict):
        raise FrameError("frame is not a JSON object")
    return msg


class Connection:
    """The reply side of an accepted connection (clients get acks here)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.closed = False

    def send(self, msg: dict[str, Any]) -> None:
        if self.closed or self.writer.is_closing():
            self.closed = True
            return
        self.writer.write(encode(msg))


Handler = Callable[[dict[str, Any], Connection], Awaitable[None] | None]


class _PeerLink:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100_000)
        self.task: asyncio.Task[None] | None = None


class Transport:
    def __init__(
        self,
        node_id: str,
        peers: dict[str, tuple[str, int]],
        handler: Handler,
        delay: DelayFn | None = None,
    ) -> None:
        self.node_id = node_id
        self.handler = handler
        self.delay = delay
        self.links = {pid: _PeerLink(h, p) for pid, (h, p) in peers.items() if pid != node_id}
        self.frame_errors = 0
        self.dropped = 0
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._handler_tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        # A small read buffer limit gives TCP backpressure to clients that outpace us.
        self._server = await asyncio.start_server(self._serve, host, port, limit=READ_LIMIT)
        for link in self.links.values():
            link.task = asyncio.create_task(self._pump(link))

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._closing = True
        for link in self.links.values():
            if link.task:
                link.task.cancel()
        if self._server:
            self._server.close()
        for w in list(self._conns):
            w.close()
        for link in self.links.values():
            if link.task:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await link.task
        if self._server:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    # ---- sending -------------------------------------------------------------------
    def send(self, peer: str, msg: dict[str, Any], frame: bytes | None = None) -> None:
        link = self.links.get(peer)
        if link is None:
            return
        data = frame if frame is not None else encode(msg)
        d = self.delay(self.node_id, peer, msg) if self.delay else None
        if d is None:
            self._enqueue(link, data)
        else:
            asyncio.get_running_loop().call_later(max(d, 0.0), self._enqueue, link, data)

    def broadcast(self, msg: dict[str, Any]) -> None:
        frame = encode(msg)
        for peer in self.links:
            self.send(peer, msg, frame)

    def _enqueue(self, link: _PeerLink, data: bytes) -> None:
        if self._closing:
            return
        try:
            link.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _pump(self, link: _PeerLink) -> None:
        backoff = 0.05
        while not self._closing:
            try:
                _, writer = await asyncio.open_connection(link.host, link.port)
            except OSError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            try:
                while True:
                    data = await link.queue.get()
                    writer.write(data)
                    while not link.queue.empty():
                        writer.write(link.queue.get_nowait())
                    await writer.drain()
            except (OSError, ConnectionError):
                self.dropped += 1
            finally:
                writer.close()

    # ---- receiving -----------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        conn = Connection(writer)
        try:
            while True:
                try:
                    msg = await read_frame(reader)
                except FrameError as exc:
                    self.frame_errors += 1
                    log.warning("%s: dropping connection: %s", self.node_id, exc)
                    break
                if msg is None:
                    break
                result = self.handler(msg, conn)
                if result is not None:
                    await result
                if writer.transport.get_write_buffer_size() > 1_000_000:
                    await writer.drain()
                # readexactly() does not yield while data is buffered: without this a
                # backlog of client frames would starve timers and peer connections.
                await asyncio.sleep(0)
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.closed = True
            self._conns.discard(writer)
            writer.close()
