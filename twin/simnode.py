"""The twin's driver: one simulated validator running the consensus core on the kernel.

It maps the core's effects to the event kernel and the world's network model and
nothing else: a broadcast or send is a delivery scheduled after the world's delay for
that link and message (None: lost), a timer a kernel event (void after a failure), a
commit is handed to the world (then `Applied`), a sync answer our committed blocks,
a batch request a `BatchReady` at the world's pacing time. The rules are the
validators' own (`nodes.consensus`). A failure drops the core, as a crash does; a
recovery starts a new core from what the node kept: its tip and its votes.
"""

from __future__ import annotations

from typing import Any, Protocol

from nodes.consensus import Authenticator, Core, NullAuth
from nodes.consensus.events import (
    Applied,
    BatchReady,
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
from twin.kernel import PRIO_MSG, PRIO_TIMER, EventKernel


class SimWorld(Protocol):
    """What a simulated validator needs from the simulation around it."""

    kernel: EventKernel
    nodes: list[SimNode]

    def make_core(self, node: SimNode) -> Core:
        """A core for `node` from what it kept (tip, votes) and the agreed schedule."""
        ...

    def delay(self, src: Any, dst: Any, msg: Any) -> float | None:
        """Seconds until `msg` from src reaches dst (node ids); None if it is lost."""
        ...

    def peer(self, node_id: Any) -> SimNode: ...

    def batch_at(self, node: SimNode, height: int) -> float:
        """When `node`'s batch for a round-0 proposal at `height` is ready."""
        ...

    def on_commit(self, node: SimNode, block: Any, cert: Certificate, info: CommitInfo) -> None:
        ...

    def sync_blocks(self, node: SimNode, start: int,
                    limit: int) -> tuple[tuple[Any, Certificate], ...]:
        """`node`'s committed blocks [start, start + limit) with certificates."""
        ...

    def on_log(self, node: SimNode, kind: str, data: dict[str, Any]) -> None: ...


class SimNode:
    """One validator (or observer) of the simulated chain."""

    def __init__(self, world: SimWorld, idx: int, validator: bool) -> None:
        self.world = world
        self.idx = idx
        self.id: Any = idx
        """The core's name for this node (the index in the twin)."""
        self.name = f"n{idx}"
        self.validator = validator
        self.up = False
        self.epoch = 0
        """Bumped on failure and recovery: kernel events of an older epoch are void."""
        self.core: Core | None = None
        self.tip: Any = None
        """The last block this node committed (None before the first)."""
        self.tip_voters: frozenset[int] | None = None
        """Who voted in the certificate this node holds for its tip (its next block
        carries it)."""
        self.votes: list[tuple[Vote, Any]] = []
        """Its persisted votes since its last commit (what binds it after a restart)."""
        self.auth: Authenticator = NullAuth()
        """Signs the sync answers this node serves (the core signs everything else)."""

    @property
    def tip_height(self) -> int:
        return self.tip.height if self.tip is not None else 0

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Come up (first start or recovery): a fresh core from the node's own state."""
        self.up = True
        self.epoch += 1
        self.core = self.world.make_core(self)
        self.run(Start())

    def fail(self) -> None:
        self.up = False
        self.epoch += 1
        self.core = None

    def recover(self) -> None:
        if not self.up:
            self.start()

    # ---- kernel callbacks --------------------------------------------------------------
    def deliver(self, msg: Any) -> None:
        if self.core is not None:
            self.run(msg)

    def fire(self, epoch: int, event: Any) -> None:
        if epoch == self.epoch and self.core is not None:
            self.run(event)

    # ---- effects -----------------------------------------------------------------------
    def run(self, event: Any) -> None:
        """Run an event through the core and execute its effects (and follow-ups)."""
        core = self.core
        assert core is not None
        world = self.world
        kernel = world.kernel
        pending = [event]
        while pending:
            now = kernel.now
            for e in core.handle(pending.pop(0), now):
                t = type(e)
                if t is Broadcast:
                    self._broadcast(e.msg)
                elif t is StartTimer:
                    kernel.schedule(now + e.delay, PRIO_TIMER, self.fire, self.epoch,
                                    TimerFired(e.kind, e.height, e.round))
                elif t is PersistVote:
                    self.votes.append((e.vote, e.block))
                elif t is CancelTimer:
                    pass  # the core ignores timers it cancelled
                elif t is Commit:
                    self.tip = e.block
                    self.tip_voters = frozenset(v.validator for v in e.cert.votes)
                    self.votes = []
                    world.on_commit(self, e.block, e.cert, e.info)
                    pending.append(Applied(e.block.height))
                elif t is WantBatch:
                    kernel.schedule(max(now, world.batch_at(self, e.height)), PRIO_TIMER,
                                    self.fire, self.epoch, BatchReady(e.height))
                elif t is Send:
                    self._send(e.to, e.msg)
                elif t is RequestSync:
                    if e.to is None:
                        self._broadcast(e.msg)
                    else:
                        self._send(e.to, e.msg)
                elif t is ServeSync:
                    blocks = _within(world.sync_blocks(self, e.start, e.limit),
                                     core.blocks.size, e.max_bytes)
                    self._send(e.to, self._sync_response(blocks))
                elif t is Log:
                    world.on_log(self, e.kind, e.data)
                else:
                    raise TypeError(f"unknown effect {e!r}")

    def _sync_response(self, blocks: tuple[tuple[Any, Certificate], ...]) -> SyncResponse:
        resp = SyncResponse(self.id, blocks, self.tip_height, "",
                            tuple(b.digest for b, _ in blocks))
        sig = self.auth.sign(resp)
        return SyncResponse(self.id, blocks, self.tip_height, sig, resp.digests) if sig else resp

    def _broadcast(self, msg: Any) -> None:
        world = self.world
        now = world.kernel.now
        schedule = world.kernel.schedule
        delay = world.delay
        src = self.id
        for dst in world.nodes:
            if dst is not self:
                d = delay(src, dst.id, msg)
                if d is not None:
                    schedule(now + d, PRIO_MSG, dst.deliver, msg)

    def _send(self, to: Any, msg: Any) -> None:
        world = self.world
        d = world.delay(self.id, to, msg)
        if d is not None:
            world.kernel.schedule(world.kernel.now + d, PRIO_MSG, world.peer(to).deliver, msg)


def _within(blocks: tuple[tuple[Any, Certificate], ...], size: Any,
            max_bytes: int) -> tuple[tuple[Any, Certificate], ...]:
    """The leading blocks within `max_bytes` (the first always), as the ledger serves."""
    total = 0
    for i, (block, _) in enumerate(blocks):
        total += size(block)
        if i and total > max_bytes:
            return blocks[:i]
    return blocks
