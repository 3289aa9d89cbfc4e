"""A target that stops reading does not stop the workload (issue 17).

In Mininet a validator cut off for 20 s stopped the whole load: the client waited for
that validator's socket to drain after every batch, so no transaction reached the
others until the end of the run. Here the fifth target accepts the connection and never
reads (a host that is down looks the same from the client's side): the other four must
keep getting, and committing, every transaction, the skipped batches are counted, and
the backlog held for the silent target stays small (before, it was every batch since the
cut, megabytes in the kernel's socket buffer, all delivered stale after a heal).
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from pathlib import Path

from nodes.client import WorkloadClient
from nodes.crypto import KeyPair
from tests.unit.nodes.cluster import Cluster, make_genesis

TPS, SECONDS, PAYLOAD = 100, 4.0, 8000


def _backlog(client: WorkloadClient, i: int) -> int:
    """Bytes held for target i: the client's own buffer plus the kernel's send queue."""
    writer = client._writers.get(i)
    if writer is None:
        return -1
    sock = writer.get_extra_info("socket")
    outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    return writer.transport.get_write_buffer_size() + outq


async def _black_hole() -> tuple[asyncio.base_events.Server, int, list[socket.socket]]:
    """A server that accepts and never reads, with a tiny receive buffer."""
    held: list[socket.socket] = []
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lsock.bind(("127.0.0.1", 0))

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer.get_extra_info("socket"))
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hold, sock=lsock)
    return server, lsock.getsockname()[1], held


def test_a_target_that_stops_reading_does_not_stop_the_load(tmp_path: Path) -> None:
    backlog: list[int] = []

    async def body() -> WorkloadClient:
        genesis = make_genesis(tmp_path, 4, "pbft")
        cluster = Cluster(tmp_path, genesis)
        server, port, _ = await _black_hole()
        try:
            await cluster.start()
            targets = [(v.host, v.port) for v in genesis.validators] + [("127.0.0.1", port)]
            client = WorkloadClient("client0", KeyPair.load(tmp_path / "keys" / "client0.key"),
                                    targets, [(0.0, TPS)], SECONDS, PAYLOAD, drain=3.0,
                                    max_backlog=64 * 1024)
            run = asyncio.create_task(client.run())
            await asyncio.sleep(SECONDS - 0.3)
            backlog.append(_backlog(client, len(targets) - 1))
            await run
            return client
        finally:
            server.close()
            await cluster.stop()

    client = asyncio.run(asyncio.wait_for(body(), 60))
    res = client.result
    assert len(res.submitted) >= 0.9 * TPS * SECONDS, len(res.submitted)
    assert len(res.committed) >= 0.95 * len(res.submitted), (len(res.committed),
                                                              len(res.submitted))
    assert 0 <= backlog[0] < 512 * 1024, f"{backlog[0]} bytes held for a silent target"
    assert client.skipped[f"127.0.0.1:{client.targets[-1][1]}"] > 0, client.skipped
    assert all(k.endswith(str(client.targets[-1][1])) for k in client.skipped), client.skipped
