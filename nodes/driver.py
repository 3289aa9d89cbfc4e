"""The validators' driver: the consensus core on an asyncio loop, TCP and SQLite.

It maps the core's effects to I/O and feeds back what happens, nothing else: a
broadcast or send becomes a frame to the transport (`nodes.wire`), a timer a
`loop.call_later`, a commit a ledger append whose fsync runs in a worker thread (then,
once it is on disk, the node's `committed` hook and `Applied`: the loop keeps sending
and timing while the disk works), a persisted
vote a row in the vote table, a sync answer our blocks read from the ledger. What the
node around it decides (when its pool is worth a block, what the sensor record says,
telemetry) comes in through `Hooks`. No consensus rule lives here: quorum, timeouts,
locks and commit rules are `nodes.consensus`'.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from nodes.block import Block
from nodes.consensus import Committee, Core, CoreConfig, Schedule, Timeouts
from nodes.consensus.events import (
    Applied,
    Broadcast,
    CancelTimer,
    Commit,
    CommitInfo,
    Log,
    PersistVote,
    RequestSync,
    Send,
    ServeSync,
    Start,
    StartTimer,
    TimerFired,
    WantBatch,
)
from nodes.consensus.messages import Certificate, SyncResponse, Vote
from nodes.consensus.ports import Authenticator, BlockRules
from nodes.ledger import Ledger, encode_block
from nodes.transport import encode as encode_frame
from nodes.wire import DecodeError, decode, encode

log = logging.getLogger(__name__)


class Hooks(Protocol):
    def record(self, block: Block, cert: Certificate, info: CommitInfo,
               block_bytes: int) -> dict[str, Any] | None:
        """The sensor record stored with the block (None: none)."""
        ...

    def committed(self, block: Block, cert: Certificate, record: dict[str, Any] | None) -> None:
        """After the block is durable: pools, clients, telemetry."""
        ...

    def want_batch(self, height: int) -> None:
        """Call `driver.feed(BatchReady(height))` once there is something to propose."""
        ...

    def log(self, kind: str, data: Mapping[str, Any]) -> None: ...


class PeerSender(Protocol):
    def send(self, peer: str, msg: dict[str, Any], frame: bytes | None = None) -> None: ...

    def broadcast(self, msg: dict[str, Any]) -> None: ...

    def pending(self, peer: str) -> int:
        """Bytes queued for `peer` and not yet handed to its socket."""
        ...


SERVE_BACKLOG = 64 * 1024
"""A sync request is not served while this much is already queued for the asker: our
link to it is the bottleneck, the answer would wait behind it and add to the queue; it
gives up and asks a faster peer."""

SERVE_BUDGET = 4 * 1024 * 1024
"""Bytes of sync answers per second one asker may draw from us (a token bucket of
`SERVE_BURST`, charged with each answer's encoded size): an authenticated but faulty
validator can make us send at most this, plus one answer, per second. 4 MiB/s is what
the core's own pacing (an answer per `sync_interval / 4`, 256 KB each) already allows
an honest laggard, so catch-up is not slowed (issue 18)."""
SERVE_BURST = 1024 * 1024


def core_config(timing: Any, log_votes: bool = True) -> CoreConfig:
    """The core's settings from a genesis `Timing`."""
    return CoreConfig(
        timeouts=Timeouts(timing.round_timeout, timing.round_backoff, timing.max_round_timeout,
                          timing.fast_path_timeout),
        reconfig_delay=timing.reconfig_delay, log_votes=log_votes)


def ledger_schedule(ledger: Ledger, initial: str, config: CoreConfig,
                    blocks: BlockRules) -> Schedule:
    """The protocol schedule the committed chain in the ledger orders."""
    return Schedule.from_chain(initial, config.reconfig_delay,
                               ((b.height, blocks.switches(b)) for b in ledger.iter_blocks()))


def restore_core(me: str, validators: Iterable[str], config: CoreConfig, auth: Authenticator,
                 blocks: BlockRules, ledger: Ledger, schedule: Schedule) -> Core:
    """A core that resumes from what the ledger holds: its tip and this validator's
    votes at the next height (`schedule`: from `ledger_schedule`)."""
    height = ledger.height + 1
    votes = [(Vote(phase, height, r, me, digest, sig),
              Block.from_wire(json.loads(bj)) if bj else None)
             for r, phase, digest, sig, bj in ledger.load_votes(height)]
    tip = ledger.get(ledger.height) if ledger.height else None
    return Core(me, Committee(list(validators), auth), config, blocks, schedule,
                ledger.height, ledger.tip_hash if ledger.height else None, votes,
                blocks.voters(tip[0]) if tip is not None else None)


class AsyncDriver:
    def __init__(self, me: str, core: Core, transport: PeerSender, ledger: Ledger,
                 auth: Authenticator, hooks: Hooks,
                 loop: asyncio.AbstractEventLoop | None = None,
                 clock: Callable[[], float] = time.time,
                 flush_in_thread: bool = True) -> None:
        """`flush_in_thread=False`: fsync on the loop, and `Applied` at once (a loop with
        a virtual clock must not see a thread's wall time pass)."""
        self.me = me
        self.core = core
        self.transport = transport
        self.ledger = ledger
        self.auth = auth
        self.hooks = hooks
        self.clock = clock
        self.flush_in_thread = flush_in_thread
        self._loop = loop
        self._timers: dict[tuple[str, int, int], asyncio.TimerHandle] = {}
        self._encoded: tuple[str, str] | None = None
        self._flushing: asyncio.Task[None] | None = None
        self.stopped = False
        self._serve_tokens: dict[str, tuple[float, float]] = {}
        """Per asker: (bytes it may still draw, when that was computed)."""

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self.feed(Start())

    def stop(self) -> None:
        self.stopped = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    async def drain(self) -> None:
        """Wait for the block being written (after `stop`, before closing the ledger)."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)

    # ---- events into the core ----------------------------------------------------------
    def on_frame(self, msg: Mapping[str, Any]) -> None:
        """A consensus or sync frame from a peer."""
        try:
            typed = decode(msg, self.ledger.height)
        except DecodeError as exc:
            self.hooks.log("reject", {"what": exc.kind, "detail": exc.detail})
            return
        self.feed(typed)

    def feed(self, event: Any) -> None:
        """Run an event through the core and execute the effects (and their follow-ups)."""
        if self.stopped:
            return
        pending = deque([event])
        while pending:
            for effect in self.core.handle(pending.popleft(), self.clock()):
                follow = self._execute(effect)
                if follow is not None:
                    pending.append(follow)

    # ---- effects -----------------------------------------------------------------------
    def _execute(self, eff: Any) -> Any:
        t = type(eff)
        if t is Broadcast:
            self.transport.broadcast(encode(eff.msg, self.clock()))
        elif t is Send:
            self.transport.send(eff.to, encode(eff.msg, self.clock()))
        elif t is StartTimer:
            key = (eff.kind, eff.height, eff.round)
            assert self._loop is not None, "start() first"
            self._timers[key] = self._loop.call_later(eff.delay, self._fire, key)
        elif t is CancelTimer:
            handle = self._timers.pop((eff.kind, eff.height, eff.round), None)
            if handle is not None:
                handle.cancel()
        elif t is Commit:
            return self._commit(eff.block, eff.cert, eff.info)
        elif t is PersistVote:
            v = eff.vote
            bj = self.encoded_block(eff.block) if eff.block is not None else None
            self.ledger.save_vote(v.height, v.round, v.phase, v.digest, v.sig, bj)
        elif t is RequestSync:
            msg = encode(eff.msg)
            if eff.to is None:
                self.transport.broadcast(msg)
            else:
                self.transport.send(eff.to, msg)
        elif t is ServeSync:
            self._serve(eff.to, eff.start, eff.limit, eff.max_bytes)
        elif t is WantBatch:
            self.hooks.want_batch(eff.height)
        elif t is Log:
            self.hooks.log(eff.kind, eff.data)
        else:
            raise TypeError(f"unknown effect {eff!r}")
        return None

    def _fire(self, key: tuple[str, int, int]) -> None:
        self._timers.pop(key, None)
        self.feed(TimerFired(*key))

    def encoded_block(self, block: Block) -> str:
        """The block's stored JSON, encoded once per block (prepare vote and ledger)."""
        if self._encoded is None or self._encoded[0] != block.hash:
            self._encoded = (block.hash, encode_block(block))
        return self._encoded[1]

    def _commit(self, block: Block, cert: Certificate, info: CommitInfo) -> Applied | None:
        encoded = self.encoded_block(block)
        record = self.hooks.record(block, cert, info, len(encoded))
        if not self.flush_in_thread:
            self.ledger.append(block, cert, record, encoded)
            self.hooks.committed(block, cert, record)
            return Applied(block.height)
        self.ledger.append(block, cert, record, encoded, sync=False)
        assert self._loop is not None, "start() first"
        self._flushing = self._loop.create_task(self._durable(block, cert, record))
        return None

    async def _durable(self, block: Block, cert: Certificate,
                       record: dict[str, Any] | None) -> None:
        assert self._loop is not None
        try:
            await self._loop.run_in_executor(None, self.ledger.flush)
        except OSError as exc:  # the disk failed us: announce nothing, stay at this height
            self.hooks.log("error", {"what": "ledger flush", "detail": repr(exc)})
            return
        self.ledger.mark_durable(block.height)
        try:
            self.hooks.committed(block, cert, record)
            self.feed(Applied(block.height))
        except Exception:  # as for a frame: logged, never a silent dead task
            log.exception("%s: error after committing block %d", self.me, block.height)
            raise

    def _serve(self, peer: str, start: int, limit: int, max_bytes: int) -> None:
        if limit > 0 and self.transport.pending(peer) > SERVE_BACKLOG:
            self.hooks.log("dropped", {"reason": "sync answer: link to asker busy",
                                       "from": peer})
            return
        now = self.clock()
        tokens, then = self._serve_tokens.get(peer, (SERVE_BURST, now))
        tokens = min(SERVE_BURST, tokens + max(0.0, now - then) * SERVE_BUDGET)
        if limit > 0 and tokens <= 0:
            self._serve_tokens[peer] = (tokens, now)
            self.hooks.log("dropped", {"reason": "sync answer: asker's byte budget spent",
                                       "from": peer})
            return
        rows = self.ledger.get_raw(start, limit, max_bytes) if limit > 0 else []
        tip = self.ledger.durable_height
        digests = tuple(str(b["hash"]) for b, _ in rows)
        msg: dict[str, Any] = {"t": "sync_resp", "from": self.me,
                               "blocks": [[b, c] for b, c in rows], "tip": tip}
        msg["sig"] = self.auth.sign(SyncResponse(self.me, (), tip, "", digests))
        frame = encode_frame(msg)
        self._serve_tokens[peer] = (tokens - len(frame), now)  # may go below 0 once
        self.transport.send(peer, msg, frame)
