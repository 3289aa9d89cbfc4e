"""A validator's TCP sockets use the congestion control its config names (the ABN live
experiment runs validators with `abn`), and an unknown one is refused at start."""

from __future__ import annotations

import asyncio
import socket

import pytest

from nodes.transport import check_congestion, tune_socket


def test_an_unavailable_congestion_control_is_named_at_start() -> None:
    check_congestion("reno")  # always built in
    with pytest.raises(ValueError, match="'nosuchcc' is not available here.*available: "):
        check_congestion("nosuchcc")


def test_tuned_sockets_use_the_configured_congestion_control() -> None:
    async def body() -> bytes:
        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, w = await asyncio.open_connection("127.0.0.1", port)
        tune_socket(w, congestion="reno")
        name = w.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                     socket.TCP_CONGESTION, 16)
        w.close()
        server.close()
        return name.rstrip(b"\0")

    assert asyncio.run(body()) == b"reno"
