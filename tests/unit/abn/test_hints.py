"""Flow declarations: what the shim accepts, what it refuses, and that a refusal
changes nothing."""

from __future__ import annotations

import json
import socket

import pytest

from abn.flows import FlowKey, FlowTable
from abn.hints import (
    MAX_DATAGRAM,
    DeclarationListener,
    encode_declaration,
    parse_declaration,
)

GOOD = {"sport": 40312, "dst": "10.0.5.2", "dport": 6100, "size": 65536, "deadline_ms": 500}


def test_round_trip_takes_the_source_address_from_the_datagram() -> None:
    d = parse_declaration(encode_declaration(40312, "10.0.5.2", 6100, 65536, 0.5), "10.0.1.1")
    assert d.key == FlowKey("10.0.1.1", 40312, "10.0.5.2", 6100)
    assert (d.size_bytes, d.deadline_s) == (65536, 0.5)
    assert d.deadline_slots(0.1) == 5
    assert d.deadline_slots(0.3) == 1  # rounded down, at least one slot
    assert parse_declaration(json.dumps({**GOOD, "deadline_ms": 50}).encode(),
                             "h").deadline_slots(0.1) == 1


@pytest.mark.parametrize("change, words", [
    ({"sport": 0}, "'sport'"), ({"dport": 70000}, "'dport'"), ({"sport": True}, "'sport'"),
    ({"dst": "10.0.0"}, "'dst'"), ({"dst": None}, "'dst'"), ({"size": 0}, "'size'"),
    ({"size": -5}, "'size'"), ({"size": 1.5}, "'size'"), ({"deadline_ms": 0}, "'deadline_ms'"),
    ({"deadline_ms": float("nan")}, "'deadline_ms'"), ({"deadline_ms": "1"}, "'deadline_ms'"),
    ({"deadline_ms": 1e12}, "'deadline_ms'"), ({"extra": 1}, "unknown fields"),
])
def test_bad_fields_are_refused_by_name(change: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_declaration(json.dumps({**GOOD, **change}).encode(), "10.0.1.1")


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[1, 2]", b"{", b"x" * (MAX_DATAGRAM + 1),
                                  b"9" * 5000])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="declaration"):
        parse_declaration(data, "10.0.1.1")


def test_listener_registers_good_and_counts_bad_without_answering() -> None:
    listener = DeclarationListener(0, bind="127.0.0.1", max_per_period=3)
    port = listener.sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.bind(("127.0.0.1", 0))
        tx.sendto(b"not json", ("127.0.0.1", port))
        for sport in (1001, 1002, 1003):
            tx.sendto(encode_declaration(sport, "10.0.5.2", 6100, 1000, 0.2),
                      ("127.0.0.1", port))
        tx.settimeout(0.2)
        first = listener.drain()  # bounded per period: 3 datagrams, one of them bad
        second = listener.drain()
        with pytest.raises(TimeoutError):
            tx.recvfrom(100)  # never a reply
    listener.close()
    assert [d.key.sport for d in first + second] == [1001, 1002, 1003]
    assert len(first) == 2 and listener.refused == 1 and "not JSON" in listener.last_error
    table = FlowTable()
    for d in first + second:
        table.register(d.key, 0.0, d.size_bytes, d.deadline_slots(0.1))
    assert [v.slots_left for v in table.views()] == [2, 2, 2]
