"""A validator node: transport, mempool, ledger, consensus engine, clients, telemetry.

Peers and clients use the same listening port. Peer messages are signed by validator
keys; anything from an unknown or wrongly signed sender, or malformed, is counted in
`counters` and logged as a 'reject' telemetry event, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from nodes.block import Block, BlockInvalid, Certificate
from nodes.config import Genesis, NodeConfig, load_genesis
from nodes.consensus import PROTOCOLS
from nodes.consensus.engine import Engine, message_bytes
from nodes.crypto import KeyPair, Verifier
from nodes.ledger import Ledger, encode_block
from nodes.mempool import Mempool, reconfig_key
from nodes.reconfig import ReconfigCommand
from nodes.sensor import BlockSensorRecord
from nodes.telemetry import Telemetry
from nodes.transport import Connection, DelayFn, Transport
from nodes.tx import Transaction, TxRejected

log = logging.getLogger(__name__)

SYNC_BATCH = 10
SYNC_INTERVAL = 0.25


class Node:
    def __init__(
        self,
        node_id: str,
        genesis: Genesis,
        key: KeyPair,
        data_dir: Path,
        listen: tuple[str, int] | None = None,
        peers: dict[str, tuple[str, int]] | None = None,
        telemetry_path: Path | None = None,
        twin_endpoint: str | None = None,
        delay: DelayFn | None = None,
        mempool_capacity: int = 50_000,
    ) -> None:
        entries = {v.id: v for v in genesis.validators}
        if node_id not in entries:
            raise ValueError(
                f"node id '{node_id}' is not a validator in genesis ({sorted(entries)})"
            )
        if entries[node_id].pubkey != key.public_hex:
            raise ValueError(f"key does not match genesis public key of '{node_id}'")
        self.id = node_id
        self.genesis = genesis
        self.key = key
        self.verifier = Verifier()
        self.validator_keys = genesis.validator_keys()
        self.client_keys = genesis.client_keys()
        addr = {v.id: (v.host, v.port) for v in genesis.validators}
        addr.update(peers or {})
        self.listen = listen or addr[node_id]
        self.counters: Counter[str] = Counter()
        self.mempool = Mempool(mempool_capacity)
        self.ledger = Ledger(Path(data_dir) / "ledger.sqlite", genesis.hash())
        self.telemetry = Telemetry(node_id, telemetry_path, twin_endpoint, log_votes=True)
        self.transport = Transport(node_id, addr, self._on_frame, delay)
        self._schedule: list[tuple[int, int, str]] = [(1, 0, genesis.protocol)]
        self._subscribers: dict[str, set[Connection]] = {}
        self._content = asyncio.Event()
        self._last_sync_req = 0.0
        self._last_help: dict[tuple[str, int], float] = {}
        self.last_commit_at = 0.0
        self._encoded: tuple[str, str] | None = None
        self._recover()
        self.engine = Engine(self)

    @classmethod
    def from_config(cls, cfg: NodeConfig, delay: DelayFn | None = None) -> Node:
        genesis = load_genesis(cfg.genesis)
        peers = {}
        for pid, hp in cfg.peers.items():
            host, _, port = hp.rpartition(":")
            peers[pid] = (host, int(port))
        listen = None
        if cfg.listen_host or cfg.listen_port:
            own = next((v for v in genesis.validators if v.id == cfg.id), None)
            listen = (
                cfg.listen_host or (own.host if own else "127.0.0.1"),
                cfg.listen_port or (own.port if own else 0),
            )
        return cls(
            cfg.id,
            genesis,
            KeyPair.load(cfg.key_file),
            cfg.data_dir,
            listen,
            peers,
            cfg.telemetry,
            cfg.twin_endpoint,
            delay,
            cfg.mempool_capacity,
        )

    def _recover(self) -> None:
        """Rebuild in-memory state (duplicate ids, protocol schedule) from the ledger."""
        for block in self.ledger.iter_blocks():
            self.mempool.remove_committed(
                (tx.id for tx in block.txs), (r.id for r in block.reconfigs)
            )
            self._apply_reconfigs(block)
        self.tip_cert, self.tip_record = self.ledger.tip_extras()
        if self.ledger.height:
            log.info("%s recovered %d blocks", self.id, self.ledger.height)

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        await self.transport.start(*self.listen)
        self.telemetry.start()
        self.telemetry.event("start", height=self.ledger.height, listen=list(self.listen))
        self.engine.start()
        if self.ledger.height:
            self.request_sync(None)

    async def stop(self) -> None:
        self.engine.stop()
        await self.transport.close()
        await self.telemetry.close()
        self.ledger.close()

    # ---- protocol schedule ---------------------------------------------------------
    def protocol_at(self, height: int) -> str:
        name = self._schedule[0][2]
        for start, _, proto in sorted(self._schedule):
            if start <= height:
                name = proto
        return name

    def _apply_reconfigs(self, block: Block) -> None:
        for i, cmd in enumerate(block.reconfigs):
            eff = cmd.effective_height(block.height, self.genesis.timing.reconfig_delay)
            self._schedule.append((eff, block.height * 1000 + i, cmd.protocol))

    # ---- block building and checking -----------------------------------------------
    async def wait_for_block_content(self, height_started: float) -> None:
        timing = self.genesis.timing
        while True:
            now = time.time()
            earliest = self.last_commit_at + timing.block_period
            has_work = len(self.mempool) > 0 or bool(self.mempool.take_reconfigs())
            if now >= earliest and (has_work or now >= height_started + timing.empty_block_period):
                return
            wait = (
                max(earliest - now, 0.0)
                if has_work
                else height_started + timing.empty_block_period - now
            )
            self._content.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._content.wait(), max(wait, 0.001))

    def build_block(self, height: int) -> Block:
        t = self.genesis.timing
        return Block.create(
            self.key,
            height,
            self.ledger.tip_hash,
            self.protocol_at(height),
            self.id,
            time.time(),
            self.mempool.take(t.max_block_txs, t.max_block_bytes),
            self.mempool.take_reconfigs(),
            self.tip_cert,
            self.tip_record,
        )

    def validate_block(self, block: Block) -> None:
        """Everything a validator checks before voting or appending; raises BlockInvalid."""
        h = self.ledger.height + 1
        if block.height != h:
            raise BlockInvalid(f"height {block.height}, expected {h}")
        if block.prev_hash != self.ledger.tip_hash:
            raise BlockInvalid("prev_hash is not our tip")
        if block.protocol != self.protocol_at(h):
            raise BlockInvalid(f"protocol '{block.protocol}', expected '{self.protocol_at(h)}'")
        block.check_signature(self.validator_keys, self.verifier)
        if h == 1:
            if block.prev_cert is not None:
                raise BlockInvalid("block 1 cannot carry a previous certificate")
        else:
            cert = Certificate.from_wire(block.prev_cert)
            if cert.height != h - 1 or cert.block_hash != self.ledger.tip_hash:
                raise BlockInvalid("prev_cert is not for our tip")
            cert.check(self.validator_keys, self.verifier)
        if block.prev_record is not None:
            try:
                rec = BlockSensorRecord.from_dict(block.prev_record)
            except (TypeError, ValueError) as exc:
                raise BlockInvalid(f"prev_record is not a sensor record: {exc}") from exc
            if rec.height != h - 1:
                raise BlockInvalid("prev_record is for another height")
        t = self.genesis.timing
        if len(block.txs) > t.max_block_txs or block.tx_bytes > t.max_block_bytes:
            raise BlockInvalid("block exceeds size limits")
        seen: set[str] = set()
        for tx in block.txs:
            if tx.id in seen or tx.id in self.mempool.committed_ids:
                raise BlockInvalid(f"duplicate transaction '{tx.id}'")
            seen.add(tx.id)
            if self.mempool.was_verified(tx):
                continue  # the same bytes passed `check` here (pool, or an earlier proposal)
            try:
                tx.check(self.client_keys, self.verifier, t.max_tx_bytes)
            except TxRejected as exc:
                raise BlockInvalid(f"transaction '{tx.id}': {exc}") from exc
            self.mempool.remember_verified(tx)
        for cmd in block.reconfigs:
            if reconfig_key(cmd.id) in self.mempool.committed_ids:
                raise BlockInvalid(f"duplicate reconfig '{cmd.id}'")
            try:
                cmd.check(self.genesis.twin_pubkey, self.verifier, set(PROTOCOLS))
            except TxRejected as exc:
                raise BlockInvalid(f"reconfig '{cmd.id}': {exc}") from exc

    # ---- commit --------------------------------------------------------------------
    def encoded_block(self, block: Block) -> str:
        """The block's stored JSON, encoded once per block (prepare vote and ledger)."""
        if self._encoded is None or self._encoded[0] != block.hash:
            self._encoded = (block.hash, encode_block(block))
        return self._encoded[1]

    def deliver(self, block: Block, cert: Certificate, record: BlockSensorRecord) -> None:
        encoded = self.encoded_block(block)
        record = dataclasses.replace(record, block_bytes=len(encoded))
        data = record.to_dict()
        self.ledger.append(block, cert, data, encoded)
        self.tip_cert, self.tip_record = cert.to_wire(), data
        self.mempool.remove_committed((tx.id for tx in block.txs), (r.id for r in block.reconfigs))
        self._apply_reconfigs(block)
        self.last_commit_at = time.time()
        self.counters["blocks"] += 1
        self.counters["txs"] += len(block.txs)
        self.telemetry.block(record)
        self._notify_clients(block, record.committed_at)

    def _notify_clients(self, block: Block, at: float) -> None:
        if not self._subscribers:
            return
        by_client: dict[str, list[str]] = {}
        for tx in block.txs:
            by_client.setdefault(tx.client, []).append(tx.id)
        if block.reconfigs:
            by_client.setdefault("twin", []).extend(r.id for r in block.reconfigs)
        for client, ids in by_client.items():
            conns = self._subscribers.get(client)
            if not conns:
                continue
            msg = {
                "t": "committed",
                "h": block.height,
                "at": at,
                "ids": ids,
                "protocol": block.protocol,
            }
            for conn in list(conns):
                if conn.closed:
                    conns.discard(conn)
                else:
                    conn.send(msg)

    # ---- state transfer ------------------------------------------------------------
    def request_sync(self, peer: str | None) -> None:
        now = time.time()
        if now - self._last_sync_req < SYNC_INTERVAL:
            return
        self._last_sync_req = now
        msg = {"t": "sync_req", "from": self.id, "start": self.ledger.height + 1}
        msg["sig"] = self.key.sign(message_bytes(msg))
        if peer is None:
            self.transport.broadcast(msg)
        else:
            self.transport.send(peer, msg)

    def help_lagging(self, peer: str, height: int) -> None:
        """A peer is still working on a height we committed: send it the blocks."""
        now = time.time()
        if now - self._last_help.get((peer, height), 0.0) < SYNC_INTERVAL:
            return
        if len(self._last_help) > 10_000:
            self._last_help.clear()
        self._last_help[(peer, height)] = now
        self._send_blocks(peer, height)

    def _send_blocks(self, peer: str, start: int) -> None:
        rows = self.ledger.get_raw(start, SYNC_BATCH)
        if not rows:
            return
        msg: dict[str, Any] = {
            "t": "sync_resp",
            "from": self.id,
            "blocks": [[b, c] for b, c in rows],
            "tip": self.ledger.height,
        }
        msg["sig"] = self.key.sign(sync_resp_bytes(msg))
        self.transport.send(peer, msg)

    def _on_sync_resp(self, msg: dict[str, Any]) -> None:
        blocks = msg.get("blocks")
        if not isinstance(blocks, list):
            self.reject("sync", "sync_resp without blocks")
            return
        added = 0
        for item in blocks:
            try:
                if int(item[0]["header"]["height"]) <= self.ledger.height:
                    continue  # already ours: skip parsing and rehashing it
                block = Block.from_wire(item[0])
                cert = Certificate.from_wire(item[1])
            except (BlockInvalid, TypeError, ValueError, IndexError, KeyError) as exc:
                self.reject("sync", f"bad block in sync_resp: {exc}")
                return
            if block.height <= self.ledger.height:
                continue
            try:
                self.validate_block(block)
                if cert.height != block.height or cert.block_hash != block.hash:
                    raise BlockInvalid("certificate is for another block")
                cert.check(self.validator_keys, self.verifier)
            except BlockInvalid as exc:
                self.reject("sync", f"block {block.height} from {msg.get('from')}: {exc}")
                return
            now = time.time()
            record = BlockSensorRecord(
                height=block.height,
                round=cert.round,
                protocol=block.protocol,
                proposer=block.proposer,
                recorder=self.id,
                proposed_at=block.proposed_at,
                proposal_received_at=now,
                committed_at=now,
                tx_count=len(block.txs),
                tx_bytes=block.tx_bytes,
                block_bytes=0,
                tx_first_submit=min((tx.ts for tx in block.txs), default=None),
                tx_latency_sum=sum(now - tx.ts for tx in block.txs),
                fast_path=all(v.phase == "prepare" for v in cert.votes),
                validators=tuple(self.engine.validators),
                synced=True,
            )
            self.deliver(block, cert, record)
            added += 1
        if added:
            self.counters["synced_blocks"] += added
            self.telemetry.event("sync", added=added, height=self.ledger.height)
            self.engine.on_synced()
            tip = msg.get("tip")
            if isinstance(tip, int) and tip > self.ledger.height:
                self._last_sync_req = 0.0
                self.request_sync(msg.get("from"))

    # ---- intake --------------------------------------------------------------------
    def reject(self, kind: str, detail: str) -> None:
        self.counters[f"rejected_{kind}"] += 1
        self.telemetry.event("reject", what=kind, detail=detail[:300])

    def _on_frame(self, msg: dict[str, Any], conn: Connection) -> None:
        t = msg.get("t")
        try:
            if t in ("proposal", "prepare", "commit", "rc"):
                self.engine.on_message(msg)
            elif t in ("sync_req", "sync_resp"):
                self._on_sync(msg)
            elif t == "tx":
                conn.send(self._tx_ack(msg.get("tx")))
            elif t == "txs":
                # Batch: acknowledge with a count plus the refusals and their reasons.
                txs = msg.get("txs")
                if not isinstance(txs, list):
                    conn.send({"t": "tx_acks", "ok": 0, "rejected": [], "error": "no list"})
                    return
                acks = [self._tx_ack(w) for w in txs]
                bad = [a for a in acks if not a["ok"]]
                conn.send({"t": "tx_acks", "ok": len(acks) - len(bad), "rejected": bad})
            elif t == "reconfig":
                ack = self._reconfig_ack(msg.get("cmd"))
                conn.send(ack)
                if ack["ok"]:  # every producer's pool gets it, so the next block carries it
                    fwd = {"t": "reconfig_fwd", "from": self.id, "cmd": msg["cmd"]}
                    fwd["sig"] = self.key.sign(message_bytes(fwd))
                    self.transport.broadcast(fwd)
            elif t == "reconfig_fwd":
                self._on_reconfig_fwd(msg)
            elif t == "subscribe" and isinstance(msg.get("client"), str):
                self._subscribers.setdefault(msg["client"], set()).add(conn)
            elif t == "status":
                conn.send(self.status())
            else:
                self.reject("message", f"unknown message type {t!r}")
        except Exception as exc:  # a bad message must never take the node down
            log.exception("%s: error handling %r", self.id, t)
            self.counters["errors"] += 1
            self.telemetry.event("error", what=str(t), detail=repr(exc)[:300])

    def _on_sync(self, msg: dict[str, Any]) -> None:
        sender = msg.get("from")
        pub = self.validator_keys.get(sender) if isinstance(sender, str) else None
        try:
            data = sync_resp_bytes(msg) if msg["t"] == "sync_resp" else message_bytes(msg)
        except (TypeError, KeyError, IndexError):
            data = b""
        if pub is None or not data or not self.verifier.verify(pub, msg.get("sig"), data):
            self.reject("sync", f"unsigned or unknown sync message from {sender!r}")
            return
        if msg["t"] == "sync_req":
            start = msg.get("start")
            if isinstance(start, int) and start >= 1:
                self._send_blocks(str(sender), start)
        else:
            self._on_sync_resp(msg)

    def _tx_ack(self, wire: object) -> dict[str, Any]:
        tx_id = wire.get("id") if isinstance(wire, dict) else None
        try:
            if len(self.mempool) >= self.mempool.capacity:  # refuse before paying to verify
                raise TxRejected("mempool_full", f"pool holds {self.mempool.capacity} transactions")
            tx = Transaction.from_wire(wire)
            if self.mempool.is_known(tx.id):  # refuse before paying to verify
                raise TxRejected("duplicate", f"tx '{tx.id}' was already received")
            if not self.mempool.was_verified(tx):  # else: checked when a proposal carried it
                tx.check(self.client_keys, self.verifier, self.genesis.timing.max_tx_bytes)
            self.mempool.add(tx)
        except TxRejected as exc:
            self.counters[f"tx_{exc.reason}"] += 1
            return {
                "t": "tx_ack",
                "id": tx_id,
                "ok": False,
                "reason": exc.reason,
                "detail": exc.detail,
            }
        self._content.set()
        return {"t": "tx_ack", "id": tx.id, "ok": True}

    def _on_reconfig_fwd(self, msg: dict[str, Any]) -> None:
        sender = msg.get("from")
        pub = self.validator_keys.get(sender) if isinstance(sender, str) else None
        if pub is None or not self.verifier.verify(pub, msg.get("sig"), message_bytes(msg)):
            self.reject("reconfig", f"unsigned or unknown reconfig forward from {sender!r}")
            return
        ack = self._reconfig_ack(msg.get("cmd"))
        if not ack["ok"] and ack["reason"] != "duplicate":
            self.reject("reconfig", f"forwarded by {sender}: {ack['reason']}")

    def _reconfig_ack(self, wire: object) -> dict[str, Any]:
        cmd_id = wire.get("id") if isinstance(wire, dict) else None
        try:
            cmd = ReconfigCommand.from_wire(wire)
            cmd.check(self.genesis.twin_pubkey, self.verifier, set(PROTOCOLS))
            self.mempool.add_reconfig(cmd)
        except TxRejected as exc:
            if exc.reason != "duplicate":
                self.reject("reconfig", str(exc))
            return {
                "t": "reconfig_ack",
                "id": cmd_id,
                "ok": False,
                "reason": exc.reason,
                "detail": exc.detail,
            }
        self._content.set()
        return {"t": "reconfig_ack", "id": cmd.id, "ok": True}

    def status(self) -> dict[str, Any]:
        return {
            "t": "status",
            "id": self.id,
            "height": self.ledger.height,
            "tip": self.ledger.tip_hash,
            "round": self.engine.round,
            "protocol": self.protocol_at(self.ledger.height + 1),
            "mempool": len(self.mempool),
            "counters": dict(self.counters),
        }


def sync_resp_bytes(msg: dict[str, Any]) -> bytes:
    """A state-transfer reply signs its block hashes only: the blocks themselves are
    self-authenticating (hash over header, tx_root over transactions, certificates), and
    canonicalising megabytes of JSON just to sign it would stall the event loop."""
    hashes = ",".join(str(item[0]["hash"]) for item in msg["blocks"])
    return f"sync_resp|{msg['from']}|{msg.get('tip')}|{hashes}".encode()
