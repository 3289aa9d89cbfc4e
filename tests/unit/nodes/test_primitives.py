"""Keys, transactions, reconfig commands, blocks, certificates, mempool, ledger."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from nodes.auth import WireAuth
from nodes.block import Block, BlockInvalid, seal_bytes
from nodes.consensus import Committee, certificate_problem, quorum_size
from nodes.consensus.messages import Certificate, CertVote
from nodes.crypto import KeyPair, Verifier
from nodes.ledger import Ledger, LedgerError
from nodes.mempool import Mempool
from nodes.reconfig import ReconfigCommand
from nodes.tx import Transaction, TxRejected


def test_key_file_roundtrip_and_bad_files(tmp_path: Path) -> None:
    key = KeyPair.generate()
    key.save(tmp_path / "k.key")
    assert KeyPair.load(tmp_path / "k.key").public_hex == key.public_hex
    assert (tmp_path / "k.key").stat().st_mode & 0o077 == 0
    (tmp_path / "bad.key").write_text("zz")
    with pytest.raises(ValueError, match="bad.key"):
        KeyPair.load(tmp_path / "bad.key")


def test_verifier_never_raises_on_garbage() -> None:
    v = Verifier()
    key = KeyPair.generate()
    sig = key.sign(b"m")
    assert v.verify(key.public_hex, sig, b"m")
    assert not v.verify(key.public_hex, sig, b"other")
    assert not v.verify("nothex", sig, b"m")
    assert not v.verify(key.public_hex, "00" * 10, b"m")
    assert not v.verify(key.public_hex, None, b"m")
    assert not v.verify(key.public_hex, "zz" * 64, b"m")


def test_transaction_rejections_have_reasons() -> None:
    key, other = KeyPair.generate(), KeyPair.generate()
    clients = {"c": key.public_hex}
    v = Verifier()
    tx = Transaction.create(key, "c", "t1", time.time(), b"abc")
    tx.check(clients, v, max_size=10)
    parsed = Transaction.from_wire(tx.to_wire())
    assert parsed == tx
    cases = {
        "oversized": lambda: tx.check(clients, v, max_size=2),
        "unknown_client": lambda: Transaction.create(key, "x", "t", 1.0, b"").check(clients, v, 9),
        "bad_signature": lambda: Transaction.create(other, "c", "t", 1.0, b"").check(clients, v, 9),
        "malformed": lambda: Transaction.from_wire({**tx.to_wire(), "ts": "now"}),
    }
    for reason, fn in cases.items():
        with pytest.raises(TxRejected) as info:
            fn()
        assert info.value.reason == reason
    tampered = dataclasses.replace(tx, payload=b"abd")
    with pytest.raises(TxRejected, match="bad_signature"):
        tampered.check(clients, v, 10)
    for bad in ([], {"id": "x"}, {**tx.to_wire(), "extra": 1}, {**tx.to_wire(), "payload": "q"}):
        with pytest.raises(TxRejected, match="malformed"):
            Transaction.from_wire(bad)


def test_mempool_orders_by_arrival_and_rejects_duplicates() -> None:
    key = KeyPair.generate()
    pool = Mempool(capacity=3)
    txs = [Transaction.create(key, "c", f"t{i}", float(i), b"x" * 10) for i in range(4)]
    for tx in txs[:3]:
        pool.add(tx)
    with pytest.raises(TxRejected, match="mempool_full"):
        pool.add(txs[3])
    with pytest.raises(TxRejected, match="duplicate"):
        pool.add(txs[0])
    assert [t.id for t in pool.take(2, 10**6)] == ["t0", "t1"]
    assert [t.id for t in pool.take(10, 25)] == ["t0", "t1"]
    pool.remove_committed([txs[0]])
    with pytest.raises(TxRejected, match="duplicate"):
        pool.add(txs[0])  # already committed
    assert [t.id for t in pool.take(10, 10**6)] == ["t1", "t2"]


def test_reconfig_command_checks() -> None:
    twin, other = KeyPair.generate(), KeyPair.generate()
    v = Verifier()
    cmd = ReconfigCommand.create(twin, "s1", "bigfoot", None, 1.0)
    cmd.check(twin.public_hex, v, {"pbft", "bigfoot"})
    assert ReconfigCommand.from_wire(cmd.to_wire()) == cmd
    with pytest.raises(TxRejected, match="bad_signature"):
        ReconfigCommand.create(other, "s1", "bigfoot", None, 1.0).check(
            twin.public_hex, v, {"bigfoot"}
        )
    with pytest.raises(TxRejected, match="unknown_protocol"):
        ReconfigCommand.create(twin, "s", "raft", None, 1.0).check(twin.public_hex, v, {"pbft"})
    with pytest.raises(TxRejected, match="malformed"):
        ReconfigCommand.from_wire({**cmd.to_wire(), "activate_at": -3})
    assert cmd.effective_height(10, 2) == 12
    assert ReconfigCommand.create(twin, "s", "pbft", 50, 1.0).effective_height(10, 2) == 50


def _chain_block(key: KeyPair, height: int, prev: str, txs: tuple = ()) -> Block:
    return Block.create(key, height, prev, "pbft", "v0", time.time(), list(txs))


def test_block_hash_signature_and_tamper_detection() -> None:
    key, client = KeyPair.generate(), KeyPair.generate()
    tx = Transaction.create(client, "c", "t1", 1.0, b"hello")
    block = _chain_block(key, 1, "g", (tx,))
    v = Verifier()
    again = Block.from_wire(block.to_wire())
    assert again.hash == block.hash
    again.check_signature({"v0": key.public_hex}, v)
    with pytest.raises(BlockInvalid, match="not signed"):
        again.check_signature({"v0": KeyPair.generate().public_hex}, v)
    wire = block.to_wire()
    wire["header"]["prev_hash"] = "other"
    with pytest.raises(BlockInvalid, match="hash does not match"):
        Block.from_wire(wire)
    wire = block.to_wire()
    wire["txs"][0]["payload"] = b"HELLO".hex()
    with pytest.raises(BlockInvalid, match="tx_root"):
        Block.from_wire(wire)


def test_certificate_needs_quorum_or_unanimous_prepares() -> None:
    keys = {f"v{i}": KeyPair.generate() for i in range(4)}
    pubs = {k: v.public_hex for k, v in keys.items()}
    assert [quorum_size(n) for n in (1, 4, 5, 6, 7, 10)] == [1, 3, 4, 4, 5, 7]
    committee = Committee(sorted(keys), WireAuth(keys["v0"], pubs, Verifier()))

    def votes(phase: str, who: list[str], h: int = 3) -> tuple[CertVote, ...]:
        return tuple(CertVote(w, phase, keys[w].sign(seal_bytes(phase, h, 0, "abc")))
                     for w in who)

    assert certificate_problem(
        committee, Certificate(3, 0, "abc", votes("commit", ["v0", "v1", "v2"]))) is None
    assert certificate_problem(
        committee, Certificate(3, 0, "abc", votes("prepare", ["v0", "v1", "v2", "v3"]))) is None
    bad = [
        votes("commit", ["v0", "v1"]),
        votes("commit", ["v0", "v1", "v1"]),
        votes("prepare", ["v0", "v1", "v2"]),
        votes("commit", ["v0", "v1", "v2"], h=4),
    ]
    for vs in bad:
        assert certificate_problem(committee, Certificate(3, 0, "abc", vs)) is not None


def test_ledger_appends_only_and_survives_reopen(tmp_path: Path) -> None:
    key = KeyPair.generate()
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path, "g" * 64)
    b1 = _chain_block(key, 1, "g" * 64)
    cert = Certificate(1, 0, b1.hash, ())
    ledger.append(b1, cert, {"x": 1})
    with pytest.raises(LedgerError, match="expected 2"):
        ledger.append(b1, cert, None)
    b2_wrong = _chain_block(key, 2, "f" * 64)
    with pytest.raises(LedgerError, match="does not extend"):
        ledger.append(b2_wrong, Certificate(2, 0, b2_wrong.hash, ()), None)
    ledger.close()
    again = Ledger(path, "g" * 64)
    assert again.height == 1 and again.tip_hash == b1.hash
    got = again.get(1)
    assert got is not None and got[0].hash == b1.hash
    again.close()
    with pytest.raises(LedgerError, match="fresh data_dir"):
        Ledger(path, "h" * 64)


def test_mempool_remembers_only_identical_verified_transactions() -> None:
    key = KeyPair.generate()
    pool = Mempool(capacity=10, verified_cache=2)
    txs = [Transaction.create(key, "c", f"t{i}", float(i), b"x") for i in range(3)]
    for tx in txs:
        pool.remember_verified(tx)
    assert not pool.was_verified(txs[0])  # evicted: the cache is bounded
    assert pool.was_verified(txs[2]) and not pool.is_known(txs[2].uid)
    resigned = Transaction.create(KeyPair.generate(), "c", "t2", 2.0, b"x")
    assert not pool.was_verified(resigned)  # same id, other signature: verify it
    pool.remove_committed([txs[2]])
    assert pool.is_known(txs[2].uid) and not pool.was_verified(txs[2])
