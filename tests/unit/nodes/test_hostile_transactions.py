"""Hostile transactions (issue 18): ids are a client's own, timestamps are checked,
the pool is bounded in bytes, and the committed-id set does not grow for ever."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from nodes.config import load_genesis
from nodes.crypto import KeyPair
from nodes.genesis import write_genesis
from nodes.mempool import CommittedSet, Mempool
from nodes.tx import TX_FUTURE, TX_PAST, Transaction, TxRejected
from tests.unit.nodes.cluster import FAST_TIMING, Cluster, free_ports


def test_a_client_cannot_take_another_clients_ids_first(tmp_path: Path) -> None:
    """Before: ids were global, so client1 could submit 'client0-1' first and client0's
    own transaction was refused as a duplicate (censored)."""
    write_genesis(tmp_path, 4, clients=2, ports=free_ports(4), timing=FAST_TIMING)
    genesis = load_genesis(tmp_path / "genesis.yaml")

    async def body() -> tuple[dict, set[str]]:
        cluster = Cluster(tmp_path, genesis)
        try:
            await cluster.start()
            k0 = KeyPair.load(tmp_path / "keys" / "client0.key")
            k1 = KeyPair.load(tmp_path / "keys" / "client1.key")
            now = time.time()
            squat = Transaction.create(k1, "client1", "client0-1", now, b"squat")
            mine = Transaction.create(k0, "client0", "client0-1", now, b"mine")
            for n in cluster.nodes.values():  # each producer keeps its own pool
                n._tx_ack(squat.to_wire())
                ack = n._tx_ack(mine.to_wire())
            node = cluster.nodes["v0"]
            await cluster.wait_height(node.ledger.height + 5, 10)
            committed = {(tx.client, tx.id) for b in node.ledger.iter_blocks() for tx in b.txs}
            return ack, committed
        finally:
            await cluster.stop()

    ack, committed = asyncio.run(asyncio.wait_for(body(), 60))
    assert ack["ok"] is not False, ack
    assert {("client0", "client0-1"), ("client1", "client0-1")} <= committed


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), -1.0, 1e300, "past", "future"])
def test_timestamps_outside_the_window_are_refused_at_intake(tmp_path: Path, ts) -> None:
    """Before: NaN, inf, 1e300 and negative times were committed (and reached the sensor
    records as NaN, which is not JSON)."""
    write_genesis(tmp_path, 1, ports=free_ports(1), timing=FAST_TIMING)
    genesis = load_genesis(tmp_path / "genesis.yaml")
    key = KeyPair.load(tmp_path / "keys" / "client0.key")
    now = time.time()
    value = {"past": now - TX_PAST - 5, "future": now + TX_FUTURE + 5}.get(ts, ts)

    async def body() -> dict:
        cluster = Cluster(tmp_path, genesis)
        try:
            await cluster.start()
            wire = Transaction.create(key, "client0", "x", float(value), b"p").to_wire()
            return cluster.nodes["v0"]._tx_ack(wire)
        finally:
            await cluster.stop()

    ack = asyncio.run(asyncio.wait_for(body(), 30))
    assert ack["ok"] is False and ack["reason"] in ("malformed", "bad_timestamp"), ack


def test_the_pool_is_bounded_in_bytes() -> None:
    """Before: the pool capped transactions, not bytes (8,000 x 16 KB: +145 MB)."""
    key = KeyPair.generate()
    pool = Mempool(capacity=100_000, max_bytes=1_000_000)
    now = time.time()
    refused = 0
    for i in range(100):
        tx = Transaction.create(key, "c", f"t{i}", now, b"x" * 16_384)
        try:
            pool.add(tx)
        except TxRejected as exc:
            assert exc.reason == "mempool_full"
            refused += 1
    assert pool.bytes <= 1_000_000 and len(pool) == 61 and refused == 39
    pool.remove_committed(pool.take(10, 10**9))
    assert pool.bytes == 51 * 16_384


def test_the_committed_set_forgets_what_no_block_can_repeat() -> None:
    """Before: every committed id was kept for good (memory grew ~5.5 MB/min)."""
    s = CommittedSet()
    for i in range(10_000):  # 100 tx/s for 100 s
        s.add(f"c\x1ft{i}", 1000.0 + i / 100)
    s.add("\x00reconfig:x")  # no timestamp: kept
    s.forget_before(1000.0 + 100 + TX_PAST + TX_FUTURE - 30)  # block time, 30 s later
    assert len(s) == 3_001  # the last 30 s of ids and the reconfig
    assert "c\x1ft9999" in s and "c\x1ft0" not in s and "\x00reconfig:x" in s


@pytest.mark.parametrize("case", ["a year old", "past height", "other chain"])
def test_stale_or_foreign_switch_commands_are_refused(tmp_path: Path, case: str) -> None:
    """Before: a switch issued a year earlier for a past height was accepted and applied
    within ~7 blocks, and its signature did not cover the chain id."""
    from nodes.reconfig import ReconfigCommand

    write_genesis(tmp_path, 4, ports=free_ports(4), timing=FAST_TIMING)
    genesis = load_genesis(tmp_path / "genesis.yaml")
    twin = KeyPair.load(tmp_path / "keys" / "twin.key")

    async def body() -> tuple[dict, list[str]]:
        cluster = Cluster(tmp_path, genesis)
        try:
            await cluster.start()
            await cluster.wait_height(5, 10)
            now = time.time()
            cmd = {"a year old": lambda: ReconfigCommand.create(
                       twin, "s", "bigfoot", None, now - 365 * 86400),
                   "past height": lambda: ReconfigCommand.create(twin, "s", "bigfoot", 2, now),
                   "other chain": lambda: ReconfigCommand.create(
                       twin, "s", "bigfoot", None, now, "another-chain")}[case]()
            ack = cluster.nodes["v0"]._reconfig_ack(cmd.to_wire())
            node = cluster.nodes["v0"]
            await cluster.wait_height(node.ledger.height + 8, 15)
            return ack, [b.protocol for b in node.ledger.iter_blocks()]
        finally:
            await cluster.stop()

    ack, protocols = asyncio.run(asyncio.wait_for(body(), 60))
    assert ack["ok"] is False and ack["reason"] in ("stale", "wrong_chain"), ack
    assert set(protocols) == {"pbft"}


def _ledger_after_a_run(tmp_path: Path) -> tuple[Path, object]:
    write_genesis(tmp_path, 4, ports=free_ports(4), timing=FAST_TIMING)
    genesis = load_genesis(tmp_path / "genesis.yaml")

    async def body() -> None:
        cluster = Cluster(tmp_path, genesis)
        try:
            await cluster.start()
            cluster.submit(20)
            await cluster.wait_height(8, 15)
        finally:
            await cluster.stop()

    asyncio.run(asyncio.wait_for(body(), 60))
    return tmp_path / "data" / "v0" / "ledger.sqlite", genesis


def _start_v0(tmp_path: Path, genesis: object) -> None:
    from nodes.node import Node

    Node("v0", genesis, KeyPair.load(tmp_path / "keys" / "v0.key"), tmp_path / "data" / "v0")


def test_a_ledger_with_an_altered_block_signature_does_not_load(tmp_path: Path) -> None:
    """Before: it loaded without complaint and would have been served to syncing peers."""
    import json
    import sqlite3

    from nodes.ledger import LedgerError

    path, genesis = _ledger_after_a_run(tmp_path)
    con = sqlite3.connect(path)
    raw = json.loads(con.execute("SELECT block FROM blocks WHERE height=5").fetchone()[0])
    raw["sig"] = ("0" if raw["sig"][0] != "0" else "1") + raw["sig"][1:]
    con.execute("UPDATE blocks SET block=? WHERE height=5", (json.dumps(raw),))
    con.commit()
    con.close()
    with pytest.raises(LedgerError) as info:
        _start_v0(tmp_path, genesis)
    assert str(path) in str(info.value) and "block 5" in str(info.value)


def test_a_damaged_ledger_file_is_named_in_a_clear_error(tmp_path: Path) -> None:
    """Before: a raw sqlite3 traceback with no path."""
    from nodes.ledger import LedgerError

    path, genesis = _ledger_after_a_run(tmp_path)
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    data[:100] = b"\xff" * 100  # the SQLite header
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError) as info:
        _start_v0(tmp_path, genesis)
    assert str(path) in str(info.value) and "not a readable ledger" in str(info.value)


def test_a_cut_write_ahead_log_is_reported_not_silent(tmp_path: Path) -> None:
    """Before: a cut WAL rolled the ledger back 1-7 blocks with no message."""
    import shutil

    from nodes.ledger import Ledger

    write_genesis(tmp_path, 4, ports=free_ports(4), timing=FAST_TIMING)
    genesis = load_genesis(tmp_path / "genesis.yaml")
    copy = tmp_path / "copy"
    copy.mkdir()
    src = tmp_path / "data" / "v0" / "ledger.sqlite"

    async def body() -> int:
        cluster = Cluster(tmp_path, genesis)
        try:
            await cluster.start()
            await cluster.wait_height(10, 15)
            h = cluster.nodes["v0"].ledger.durable_height
            for suffix in ("", "-wal", ".durable"):  # a copy taken while it runs
                shutil.copy(f"{src}{suffix}", copy / f"ledger.sqlite{suffix}")
            return h
        finally:
            await cluster.stop()

    asyncio.run(asyncio.wait_for(body(), 60))
    wal = copy / "ledger.sqlite-wal"
    wal.write_bytes(wal.read_bytes()[: wal.stat().st_size // 2])  # the cut
    ledger = Ledger(copy / "ledger.sqlite", genesis.hash())
    try:
        claimed = int((copy / "ledger.sqlite.durable").read_text())
        assert ledger.height < claimed, "the cut lost nothing: the test did not cut"
        assert ledger.lost == (ledger.height + 1, claimed)
    finally:
        ledger.close()
