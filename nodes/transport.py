"""Asyncio TCP transport: length-prefixed JSON frames between peers and clients.

Each node dials every peer once and keeps that connection for its outgoing messages;
what arrives on accepted connections goes to one handler, with a reply channel for
clients. A `delay` hook (src, dst, msg) -> seconds lets tests delay and reorder
messages, or inject link latency, without touching consensus code.

Sending to a slow or unreachable peer never delays the others and never builds a
backlog of stale messages (issue 17: a validator behind a 3 Mbit/s link received votes
33 s late, queued in its peers' socket buffers):
- each peer has two lanes, each its own queue and its own connection: frames up to
  `SMALL_FRAME` (votes, round changes without a block, hints) on the control lane, the
  bigger ones (proposals, round changes carrying a block, sync answers) on the bulk
  lane, so a vote never waits behind a block on a slow or congested path (issue 17: a
  chain behind two Cubic flows stalled for 20 s with votes queued behind 1.5 MB
  proposals). Nothing depends on the order between lanes: the core counts votes that
  arrive before their proposal;
- each lane's queue is bounded in bytes (`max_queue_bytes`, oldest dropped
  first: consensus supersedes old messages) and in age (a frame waiting longer than
  `max_age` is dropped unsent: the protocol re-sends what still matters);
- the kernel holds at most `NOTSENT_LOWAT` unsent bytes per connection
  (TCP_NOTSENT_LOWAT), so the backlog stays in the queue where it can be dropped;
- a connection whose data goes unacknowledged for `USER_TIMEOUT_MS` (TCP_USER_TIMEOUT:
  the peer's host is down or cut off) is closed and redialled, each dial bounded by
  `CONNECT_TIMEOUT`, so a healed peer is reached within about a second instead of after
  TCP's exponential retransmission back-off.

What arrives is bounded before it is believed (issue 18): at most `max_conns`
connections (`max_conns_per_ip` from one address), a frame no longer than `max_frame`
(the largest legal message), unfinished frames above `SMALL_FRAME` together within
`max_inflight` bytes (a quarter of it per address), a started frame finished within
`FRAME_TIMEOUT` and a connection that sends nothing for `IDLE_TIMEOUT` closed; the
decoder refuses huge integers, NaN and nesting past the recursion limit; one bad frame
closes its connection, and a peer's misbehaviour is logged once per `LOG_EVERY` seconds,
not once per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_FRAME = 16 * 1024 * 1024
"""The largest legal message with room to spare: a proposal or sync answer carries one
block of at most `max_block_bytes` (4 MB), whose payloads travel hex-encoded."""
MAX_INFLIGHT = 64 * 1024 * 1024
SMALL_FRAME = 64 * 1024
"""Frames up to this size (every vote, round change without a block, client batch) do
not count against the in-flight budget, so a peer holding the budget with unfinished
big frames cannot stop votes; memory stays within the budget + MAX_CONNS x this."""
MAX_CONNS = 512
MAX_CONNS_PER_IP = 128
FRAME_TIMEOUT = 30.0
IDLE_TIMEOUT = 300.0
LOG_EVERY = 10.0
READ_LIMIT = 1024 * 1024
_LEN = struct.Struct(">I")
NOTSENT_LOWAT = 64 * 1024
USER_TIMEOUT_MS = 5000
CONNECT_TIMEOUT = 1.0
WRITE_CHUNK = 64 * 1024
"""Frames handed to the socket per drain (the rest stays in the droppable queue)."""

DelayFn = Callable[[str, str, dict[str, Any]], float | None]


class FrameError(ValueError):
    """A peer sent something that is not a frame of JSON object."""


def decode_body(body: bytes) -> dict[str, Any]:
    """A frame's JSON object, strictly: no integers past Python's 4,300 digits, no
    NaN or Infinity, nesting within the interpreter's recursion limit (json's C scanner
    raises RecursionError, caught here: a 100k-deep array costs one error, not a task)."""
    try:
        msg = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digits, NaN
        raise FrameError(f"frame is not valid JSON: {str(exc)[:120]}") from exc
    if not isinstance(msg, dict):
        raise FrameError("frame is not a JSON object")
    return msg


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number we accept")


def encode(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Next message, or None at a clean end of stream (the client's reader; validators
    read through `Transport._read_frame`, which adds the in-flight and time bounds)."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    return decode_body(await reader.readexactly(size))


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


def tune_socket(writer: asyncio.StreamWriter, user_timeout_ms: int = USER_TIMEOUT_MS,
                congestion: str | None = None) -> None:
    """Small unsent backlog in the kernel; give up on a peer that acknowledges nothing;
    the congestion control asked for (checked at start by `check_congestion`)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
        if congestion:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())


def check_congestion(name: str) -> None:
    """Raise ValueError naming `name` if this namespace cannot give a socket it."""
    with socket.socket() as s:
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        except OSError as exc:
            avail = "?"
            with contextlib.suppress(OSError):
                avail = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text()
            raise ValueError(f"tcp_congestion {name!r} is not available here ({exc.strerror}); "
                             f"available: {avail.strip()}") from exc


class PeerQueue:
    """Frames waiting for one peer, bounded in bytes and age (oldest dropped first)."""

    def __init__(self, max_bytes: int, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes, self.max_age, self.clock = max_bytes, max_age, clock
        self._frames: deque[tuple[float, bytes]] = deque()
        self.bytes = 0
        self.dropped_full = 0
        self.dropped_stale = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, data: bytes) -> None:
        if len(data) > self.max_bytes:
            self.dropped_full += 1
            return
        self._frames.append((self.clock(), data))
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            self.bytes -= len(self._frames.popleft()[1])
            self.dropped_full += 1
        self._ready.set()

    def take(self, limit: int) -> list[bytes]:
        """Fresh frames from the head, up to `limit` bytes (at least one frame)."""
        cutoff = self.clock() - self.max_age
        out: list[bytes] = []
        size = 0
        while self._frames and (not out or size + len(self._frames[0][1]) <= limit):
            at, data = self._frames.popleft()
            self.bytes -= len(data)
            if at < cutoff:
                self.dropped_stale += 1
                continue
            out.append(data)
            size += len(data)
        if not self._frames:
            self._ready.clear()
        return out

    async def wait(self) -> None:
        await self._ready.wait()

    def wake(self) -> None:
        """Wake the pump without a frame (its connection went away)."""
        self._ready.set()


CONTROL_QUEUE_BYTES = 1024 * 1024
"""The control lane's queue bound (thousands of votes: more is a backlog to drop)."""


class _PeerLink:
    """One lane to one peer: its queue, its connection's pump task, its dials."""

    def __init__(self, host: str, port: int, queue: PeerQueue) -> None:
        self.host = host
        self.port = port
        self.queue = queue
        self.task: asyncio.Task[None] | None = None
        self.connects = 0
        self.peer_closed = False


class _Peer:
    def __init__(self, host: str, port: int, max_bulk: int, max_age: float) -> None:
        self.control = _PeerLink(host, port, PeerQueue(min(CONTROL_QUEUE_BYTES, max_bulk),
                                                       max_age))
        self.bulk = _PeerLink(host, port, PeerQueue(max_bulk, max_age))
        self.lanes = (self.control, self.bulk)

    def lane(self, data: bytes) -> _PeerLink:
        return self.control if len(data) <= SMALL_FRAME else self.bulk


class Transport:
    def __init__(
        self,
        node_id: str,
        peers: dict[str, tuple[str, int]],
        handler: Handler,
        delay: DelayFn | None = None,
        max_queue_bytes: int = 8 * 1024 * 1024,
        max_age: float = 10.0,
        max_frame: int = MAX_FRAME,
        max_inflight: int = MAX_INFLIGHT,
        max_conns: int = MAX_CONNS,
        max_conns_per_ip: int = MAX_CONNS_PER_IP,
        congestion: str | None = None,
    ) -> None:
        """`max_age`: seconds a frame may wait for its peer (several round timeouts)."""
        self.node_id = node_id
        self.congestion = congestion
        """TCP_CONGESTION of every socket (None: the namespace's default)."""
        self.handler = handler
        self.delay = delay
        self.links = {pid: _Peer(h, p, max_queue_bytes, max_age)
                      for pid, (h, p) in peers.items() if pid != node_id}
        self.frame_errors = 0
        self.dropped = 0
        self.traffic: Counter[tuple[str, str]] = Counter()
        """Bytes by ("in"|"out", message type): what a node's links carry."""
        self.max_frame, self.max_inflight = max_frame, max_inflight
        self.max_conns, self.max_conns_per_ip = max_conns, max_conns_per_ip
        self.refused = Counter[str]()
        """Connections and frames refused, by reason."""
        self._inflight = 0
        self._inflight_ip: Counter[str] = Counter()
        self._per_ip: Counter[str] = Counter()
        self._logged: dict[tuple[str, str], float] = {}
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._handler_tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        # A small read buffer limit gives TCP backpressure to clients that outpace us.
        self._server = await asyncio.start_server(self._serve, host, port, limit=READ_LIMIT)
        for peer in self.links.values():
            for lane in peer.lanes:
                lane.task = asyncio.create_task(self._pump(lane))

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._closing = True
        lanes = [lane for peer in self.links.values() for lane in peer.lanes]
        for link in lanes:
            if link.task:
                link.task.cancel()
        if self._server:
            self._server.close()
        for w in list(self._conns):
            w.close()
        for link in lanes:
            if link.task:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await link.task
        if self._server:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    # ---- sending -------------------------------------------------------------------
    def send(self, peer: str, msg: dict[str, Any], frame: bytes | None = None) -> None:
        to = self.links.get(peer)
        if to is None:
            return
        data = frame if frame is not None else encode(msg)
        link = to.lane(data)
        self.traffic[("out", str(msg.get("t")))] += len(data)
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
        if not self._closing:
            link.queue.put(data)

    def pending(self, peer: str) -> int:
        """Bytes queued for `peer` (both lanes), not yet handed to its sockets."""
        to = self.links.get(peer)
        return sum(lane.queue.bytes for lane in to.lanes) if to is not None else 0

    def queue_stats(self) -> dict[str, dict[str, int]]:
        """Per peer: frames and bytes waiting, frames dropped (full, stale), dials, summed
        over both lanes; `control_dropped` is the control lane's share of the drops."""
        out: dict[str, dict[str, int]] = {}
        for pid, to in self.links.items():
            qs = [lane.queue for lane in to.lanes]
            out[pid] = {"frames": sum(len(q) for q in qs), "bytes": sum(q.bytes for q in qs),
                        "dropped_full": sum(q.dropped_full for q in qs),
                        "dropped_stale": sum(q.dropped_stale for q in qs),
                        "control_dropped": (to.control.queue.dropped_full
                                            + to.control.queue.dropped_stale),
                        "connects": sum(lane.connects for lane in to.lanes)}
        return out

    async def _pump(self, link: _PeerLink) -> None:
        backoff = 0.05
        while not self._closing:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(link.host, link.port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            link.connects += 1
            link.peer_closed = False
            tune_socket(writer, congestion=self.congestion)
            watch = asyncio.create_task(self._watch_close(reader, link))
            try:
                while True:
                    await link.queue.wait()
                    if link.peer_closed:
                        break
                    for data in link.queue.take(WRITE_CHUNK):
                        writer.write(data)
                    await writer.drain()
            except (OSError, ConnectionError):
                self.dropped += 1
            finally:
                watch.cancel()
                writer.close()

    @staticmethod
    async def _watch_close(reader: asyncio.StreamReader, link: _PeerLink) -> None:
        """Notice at once that the peer closed this connection (its process died or
        restarted), not at the next write: TCP takes that write into the kernel and then
        loses it, and on an idle lane (sync answers) that write is the one the restarted
        peer is waiting for (issue 17: a restarted validator stayed 220 heights behind,
        each peer's first sync answer to it lost on a connection to its dead process)."""
        with contextlib.suppress(OSError, ConnectionError):
            while await reader.read(65536):
                pass  # peers never answer on this connection; ignore what is not EOF
        link.peer_closed = True
        link.queue.wake()

    # ---- receiving -----------------------------------------------------------------
    def warn(self, peer: str, what: str, detail: str) -> None:
        """Log a peer's misbehaviour at most once per LOG_EVERY seconds per (peer, what)."""
        key = (peer, what)
        now = time.monotonic()
        if now - self._logged.get(key, float("-inf")) < LOG_EVERY:
            return
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged[key] = now
        log.warning("%s: %s from %s: %s (further ones for %.0f s not logged)", self.node_id,
                    what, peer, detail, LOG_EVERY)

    async def _read_frame(self, reader: asyncio.StreamReader,
                          peer: str) -> tuple[dict[str, Any], int] | None:
        """One frame, within the size, in-flight and time bounds (None: clean end)."""
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):  # a timer handle, not a task per read
                head = await reader.readexactly(4)
        except asyncio.IncompleteReadError:
            return None
        except TimeoutError:
            self.refused["idle"] += 1
            return None
        (size,) = _LEN.unpack(head)
        if size > self.max_frame:
            self.refused["frame too big"] += 1
            raise FrameError(f"frame of {size} bytes exceeds {self.max_frame}")
        counted = size if size > SMALL_FRAME else 0
        if counted and (self._inflight + size > self.max_inflight
                        or self._inflight_ip[peer] + size > self.max_inflight // 4):
            self.refused["in-flight budget"] += 1
            raise FrameError(f"frame of {size} bytes: {self._inflight} bytes of unfinished "
                             f"frames already, {self._inflight_ip[peer]} from this address "
                             f"(budget {self.max_inflight}, a quarter per address)")
        self._inflight += counted
        self._inflight_ip[peer] += counted
        try:
            async with asyncio.timeout(FRAME_TIMEOUT):
                body = await reader.readexactly(size)
        except TimeoutError:
            self.refused["slow frame"] += 1
            raise FrameError(f"frame of {size} bytes not finished in {FRAME_TIMEOUT:g} s") \
                from None
        finally:
            self._inflight -= counted
            self._inflight_ip[peer] -= counted
            if self._inflight_ip[peer] <= 0:
                del self._inflight_ip[peer]
        return decode_body(body), size + 4

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        ip = str(addr[0]) if isinstance(addr, tuple) and addr else "?"
        if len(self._conns) >= self.max_conns or self._per_ip[ip] >= self.max_conns_per_ip:
            self.refused["too many connections"] += 1
            self.warn(ip, "connection refused", f"{len(self._conns)} open, "
                      f"{self._per_ip[ip]} from this address")
            writer.close()
            return
        self._conns.add(writer)
        self._per_ip[ip] += 1
        tune_socket(writer, congestion=self.congestion)
        conn = Connection(writer)
        try:
            while True:
                try:
                    got = await self._read_frame(reader, ip)
                except FrameError as exc:
                    self.frame_errors += 1
                    self.warn(ip, "bad frame, connection closed", str(exc))
                    break
                if got is None:
                    break
                msg = got[0]
                self.traffic[("in", str(msg.get("t")))] += got[1]
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
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
            writer.close()
