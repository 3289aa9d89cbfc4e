"""A validator node: transport, mempool, ledger, the consensus core's driver, clients,
telemetry.

Peers and clients use the same listening port. Peer messages are signed by validator
keys; anything from an unknown or wrongly signed sender, or malformed, is counted in
`counters` and logged as a 'reject' telemetry event, never raised. Consensus and state
transfer run in `nodes.consensus` (rules) through `nodes.driver` (I/O); the node adds
what is its own: the pool and when it is worth a block, block content and its checks
(`NodeBlocks`), sensor records, clients and the twin's switch commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nodes.auth import WireAuth
from nodes.block import Block, BlockInvalid
from nodes.config import Genesis, NodeConfig, load_genesis
from nodes.consensus import PROTOCOLS, Committee, Core, Schedule, certificate_problem
from nodes.consensus.events import BatchReady, CommitInfo
from nodes.consensus.messages import Certificate
from nodes.crypto import KeyPair, Verifier
from nodes.driver import AsyncDriver, core_config, restore_core
from nodes.ledger import Ledger, LedgerError
from nodes.mempool import Mempool, reconfig_key
from nodes.reconfig import ReconfigCommand
from nodes.sensor import BlockSensorRecord, RoundChange, VoteTiming
from nodes.telemetry import Telemetry
from nodes.transport import Connection, DelayFn, Transport, check_congestion
from nodes.tx import Transaction, TxRejected
from nodes.wire import (
    CONSENSUS_KINDS,
    SYNC_KINDS,
    cert_from_wire,
    cert_to_wire,
    cert_voters,
    message_bytes,
)

log = logging.getLogger(__name__)

COUNTED = {"stale_proposal": "stale_proposals", "reproposal": "reproposals"}
"""Core logs that only bump a counter (the rest also go to telemetry)."""
REJECT_RECORD_EVERY = 0.1
"""Seconds between two telemetry records of refused input of one kind (all counted)."""
TRAFFIC_PERIOD = 2.0
"""Seconds between two telemetry records of bytes sent and received by message type."""


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
        tcp_congestion: str | None = None,
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
        self.validators = [v.id for v in genesis.validators]
        addr = {v.id: (v.host, v.port) for v in genesis.validators}
        addr.update(peers or {})
        self.listen = listen or addr[node_id]
        self.counters: Counter[str] = Counter()
        self.mempool = Mempool(mempool_capacity)
        self.ledger = Ledger(Path(data_dir) / "ledger.sqlite", genesis.hash())
        self.telemetry = Telemetry(node_id, telemetry_path, twin_endpoint, log_votes=True)
        if tcp_congestion:
            check_congestion(tcp_congestion)  # a clear error now, not failed connections
        self.transport = Transport(node_id, addr, self._on_frame, delay,
                                   congestion=tcp_congestion)
        self.auth = WireAuth(key, self.validator_keys, self.verifier)
        self.committee = Committee(self.validators, self.auth)
        self.blocks = NodeBlocks(self)
        self._subscribers: dict[str, set[Connection]] = {}
        self._content = asyncio.Event()
        self._batch_task: asyncio.Task[None] | None = None
        self._traffic_task: asyncio.Task[None] | None = None
        self._reject_log: dict[str, tuple[float, int]] = {}
        self.last_commit_at = 0.0
        self._record: BlockSensorRecord | None = None
        config = core_config(genesis.timing)
        schedule = self._recover(config)
        core = restore_core(self.id, self.validators, config, self.auth, self.blocks,
                            self.ledger, schedule)
        self.driver = AsyncDriver(self.id, core, self.transport, self.ledger, self.auth, self)

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
            cfg.tcp_congestion,
        )

    def _recover(self, config: Any) -> Schedule:
        """Rebuild in-memory state (duplicate ids, protocol schedule) from the ledger,
        checking every stored block as a syncing peer would (issue 18: a block whose
        stored signature was altered loaded without complaint and was served): its hash,
        its proposer's signature, its link to the one before and its certificate."""
        schedule = Schedule(self.genesis.protocol, config.reconfig_delay)
        prev = self.genesis.hash()
        for block, _ in self._checked_blocks():
            if block.prev_hash != prev:
                raise LedgerError(f"{self.ledger.path}: block {block.height} does not extend "
                                  "the block before it")
            prev = block.hash
            self.mempool.remove_committed(block.txs, (r.id for r in block.reconfigs),
                                          block.proposed_at)
            schedule.on_commit(block.height, self.blocks.switches(block))
        self.tip_cert, self.tip_record = self.ledger.tip_extras()
        if self.ledger.height:
            log.info("%s recovered %d blocks", self.id, self.ledger.height)
        return schedule

    @property
    def core(self) -> Core:
        return self.driver.core

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        await self.transport.start(*self.listen)
        self.telemetry.start()
        self.telemetry.event("start", height=self.ledger.height, listen=list(self.listen))
        if self.ledger.lost is not None:
            first, last = self.ledger.lost
            log.warning("%s: %s lost blocks %d-%d that an earlier run had made durable (cut "
                        "or damaged write-ahead log); fetching them from peers", self.id,
                        self.ledger.path, first, last)
            self.telemetry.event("ledger_rollback", first=first, last=last,
                                 path=str(self.ledger.path))
        self.driver.start()
        self._traffic_task = asyncio.get_running_loop().create_task(self._traffic())

    async def _traffic(self, every: float = TRAFFIC_PERIOD) -> None:
        """Every `every` s, the bytes sent and received by message type since the last
        record (telemetry 'traffic'): what a thin link was busy with."""
        last: Counter[tuple[str, str]] = Counter()
        while True:
            await asyncio.sleep(every)
            now = Counter(self.transport.traffic)
            delta = {f"{d}:{t}": n for (d, t), n in (now - last).items()}
            last = now
            if delta:
                self.telemetry.event("traffic", period_s=every, bytes=delta)

    async def stop(self) -> None:
        if self._traffic_task is not None:
            self._traffic_task.cancel()
        self.driver.stop()
        await self.driver.drain()
        if self._batch_task:
            self._batch_task.cancel()
        await self.transport.close()
        # What the send queues dropped for slow or cut-off peers, for the run's record.
        self.telemetry.event("transport", peers=self.transport.queue_stats())
        await self.telemetry.close()
        self.ledger.close()

    def protocol_at(self, height: int) -> str:
        return self.core.protocol_at(height)

    def _checked_blocks(self) -> Any:
        try:
            for block, cert in self.ledger.iter_certified():
                block.check_signature(self.validator_keys, self.verifier)
                problem = certificate_problem(self.committee, cert)
                if problem is None and (cert.height != block.height or cert.digest != block.hash):
                    problem = "certificate is for another block"
                if problem is not None:
                    raise BlockInvalid(problem)
                yield block, cert
        except BlockInvalid as exc:
            raise LedgerError(f"{self.ledger.path}: a stored block is not valid: {exc}; "
                              "restore the ledger from a peer or start on a fresh "
                              "data_dir") from exc

    # ---- the driver's hooks ----------------------------------------------------------
    def want_batch(self, height: int) -> None:
        """The core wants a round-0 proposal at `height`: propose once the pool has work
        (after `block_period`), or an empty block after `empty_block_period`."""
        if self._batch_task:
            self._batch_task.cancel()
        self._batch_task = asyncio.get_running_loop().create_task(self._batch(height))

    async def _batch(self, height: int) -> None:
        await self.wait_for_block_content(time.time())
        self._batch_task = None
        self.driver.feed(BatchReady(height))

    def record(self, block: Block, cert: Certificate, info: CommitInfo,
               block_bytes: int) -> dict[str, Any]:
        at = info.committed_at
        rec = BlockSensorRecord(
            height=block.height,
            round=info.round,
            protocol=block.protocol,
            proposer=block.proposer,
            recorder=self.id,
            proposed_at=block.proposed_at,
            proposal_received_at=info.proposal_received_at,
            committed_at=at,
            tx_count=len(block.txs),
            tx_bytes=block.tx_bytes,
            block_bytes=block_bytes,
            tx_first_submit=min((tx.ts for tx in block.txs), default=None),
            tx_latency_sum=sum(at - tx.ts for tx in block.txs),
            fast_path=info.fast_path,
            votes=tuple(VoteTiming(str(v), p, t) for v, p, t in info.votes),  # type: ignore[arg-type]
            round_changes=tuple(RoundChange(r, t, why) for r, t, why in info.round_changes),
            silent=tuple(str(v) for v in info.silent),
            validators=tuple(self.validators),
            cert_voters=tuple(sorted(cert_voters(block.prev_cert) or ())),
            synced=info.synced,
        )
        self._record = rec
        return rec.to_dict()

    def committed(self, block: Block, cert: Certificate, record: dict[str, Any] | None) -> None:
        self.tip_cert, self.tip_record = cert_to_wire(cert), record
        self.mempool.remove_committed(block.txs, (r.id for r in block.reconfigs),
                                      block.proposed_at)
        self.last_commit_at = time.time()
        self.counters["blocks"] += 1
        self.counters["txs"] += len(block.txs)
        rec = self._record
        if rec is not None and rec.height == block.height:
            if rec.synced:
                self.counters["synced_blocks"] += 1
            self.telemetry.block(rec)
            self._notify_clients(block, rec.committed_at)

    def log(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind == "reject":
            self.reject(str(data["what"]), str(data["detail"]))
        elif kind in COUNTED:
            self.counters[COUNTED[kind]] += 1
        elif kind == "dropped":  # recorded too (rate-limited): why a laggard waited
            self.counters["dropped_messages"] += 1
            reason = str(data.get("reason", ""))
            self._record_limited("dropped", reason, reason=reason, peer=str(data.get("from")))
        else:
            if kind == "equivocation":
                self.counters["equivocations"] += 1
            self.telemetry.event(kind, **data)

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

    def build_block(self, height: int, protocol: str | None = None,
                    now: float | None = None, prev_cert: Certificate | None = None) -> Block:
        """`prev_cert`: the core's certificate of our tip with the late COMMITs (who was
        heard from: the next height's proposer pool); else the one we committed with."""
        t = self.genesis.timing
        at = time.time() if now is None else now
        return Block.create(
            self.key,
            height,
            self.ledger.tip_hash,
            protocol or self.protocol_at(height),
            self.id,
            at,
            self.mempool.take(t.max_block_txs, t.max_block_bytes, at),
            self.mempool.take_reconfigs(),
            cert_to_wire(prev_cert) if prev_cert is not None else self.tip_cert,
            self.tip_record,
        )

    def validate_block(self, block: Block) -> None:
        """What a block's content must satisfy before a vote or append (the core checks
        height, proposer and protocol); raises BlockInvalid."""
        h = self.ledger.height + 1
        if block.height != h:
            raise BlockInvalid(f"height {block.height}, expected {h}")
        if block.prev_hash != self.ledger.tip_hash:
            raise BlockInvalid("prev_hash is not our tip")
        block.check_signature(self.validator_keys, self.verifier)
        if h == 1:
            if block.prev_cert is not None:
                raise BlockInvalid("block 1 cannot carry a previous certificate")
        else:
            cert = cert_from_wire(block.prev_cert)
            if cert.height != h - 1 or cert.digest != self.ledger.tip_hash:
                raise BlockInvalid("prev_cert is not for our tip")
            problem = certificate_problem(self.committee, cert)
            if problem is not None:
                raise BlockInvalid(problem)
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
            if tx.uid in seen or tx.uid in self.mempool.committed_ids:
                raise BlockInvalid(f"duplicate transaction '{tx.id}' of {tx.client}")
            seen.add(tx.uid)
            try:  # against the block's own time: the same verdict on every validator, now
                tx.check_time(block.proposed_at, "the block's time")  # or at a later sync
            except TxRejected as exc:
                raise BlockInvalid(f"transaction '{tx.id}': {exc}") from exc
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
            try:  # freshness against the block (the same verdict on every validator)
                cmd.check_fresh(self.genesis.chain_id, block.proposed_at, "the block's time",
                                block.height)
                cmd.check(self.genesis.twin_pubkey, self.verifier, set(PROTOCOLS))
            except TxRejected as exc:
                raise BlockInvalid(f"reconfig '{cmd.id}': {exc}") from exc

    # ---- commit --------------------------------------------------------------------
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

    # ---- intake --------------------------------------------------------------------
    def reject(self, kind: str, detail: str) -> None:
        """Count every refusal; record at most one per kind per REJECT_RECORD_EVERY s (a
        flood of bad messages must not become a flood of log: issue 18)."""
        self.counters[f"rejected_{kind}"] += 1
        self._record_limited("reject", kind, what=kind, detail=detail[:300])

    def _record_limited(self, event: str, key: str, **fields: Any) -> None:
        """A telemetry `event` at most once per REJECT_RECORD_EVERY s per `key`, with the
        number not recorded since."""
        now = time.monotonic()
        slot = f"{event}:{key}"
        last, skipped = self._reject_log.get(slot, (float("-inf"), 0))
        if now - last < REJECT_RECORD_EVERY:
            self._reject_log[slot] = (last, skipped + 1)
            return
        self._reject_log[slot] = (now, 0)
        self.telemetry.event(event, **fields, not_recorded=skipped)

    def _on_frame(self, msg: dict[str, Any], conn: Connection) -> None:
        t = msg.get("t")
        try:
            if t in CONSENSUS_KINDS or t in SYNC_KINDS:
                self.driver.on_frame(msg)
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

    def _tx_ack(self, wire: object) -> dict[str, Any]:
        tx_id = wire.get("id") if isinstance(wire, dict) else None
        try:
            full = self.mempool.full()
            if full is not None:  # refuse before paying to verify
                raise TxRejected("mempool_full", full)
            tx = Transaction.from_wire(wire)
            if self.mempool.is_known(tx.uid):  # refuse before paying to verify
                raise TxRejected("duplicate", f"tx '{tx.id}' was already received")
            tx.check_time(time.time(), "this validator's clock")
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
            cmd.check_fresh(self.genesis.chain_id, time.time(), "this validator's clock",
                            self.ledger.height + 1)
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
            "round": self.core.round,
            "protocol": self.protocol_at(self.ledger.height + 1),
            "mempool": len(self.mempool),
            "counters": dict(self.counters),
            "peers": self.transport.queue_stats(),
        }


class NodeBlocks:
    """The core's `BlockRules` for a validator: blocks from the pool, checked against the
    ledger, the pool's verified transactions and the twin's key."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def build(self, height: int, parent: Any, protocol: str, now: float,
              prev_cert: Certificate | None = None) -> Block:
        return self.node.build_block(height, protocol, now, prev_cert)

    def check(self, block: Block, parent: Any) -> str | None:
        try:
            self.node.validate_block(block)
        except BlockInvalid as exc:
            return str(exc)
        return None

    def switches(self, block: Block) -> Sequence[tuple[str, int | None]]:
        return [(cmd.protocol, cmd.activate_at) for cmd in block.reconfigs]

    def size(self, block: Block) -> int:
        """An estimate (the wire form of a transaction adds ~200 bytes to its payload)."""
        return 1000 + block.tx_bytes + 200 * len(block.txs)

    def voters(self, block: Block) -> frozenset[str] | None:
        return cert_voters(block.prev_cert)
