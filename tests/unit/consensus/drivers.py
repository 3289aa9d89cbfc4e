"""One fault plan through three drivers of the same core: in memory, asyncio, twin.

All three run the validators' real blocks (`nodes.block.Block`), the validators'
authenticator (`nodes.auth.WireAuth`, with ed25519 or a fast keyed hash of the same
bytes) and the plan's delays, in virtual time:
- `run_memory`: the harness' heap (`harness.MemoryCluster`);
- `run_asyncio`: `nodes.driver.AsyncDriver` on a real asyncio event loop whose clock is
  virtual, with an in-memory transport that carries JSON frames (the wire codec both
  ways), real SQLite ledgers and vote tables, restarts through `restore_core`;
- `run_twin`: `twin.simnode.SimNode` on the twin's event kernel.
Each returns, per validator, the rows of what it committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import selectors
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodes.auth import WireAuth
from nodes.block import Block, BlockInvalid
from nodes.consensus import Committee, Core, CoreConfig, Schedule
from nodes.consensus.events import BatchReady, CommitInfo
from nodes.consensus.messages import Certificate
from nodes.crypto import KeyPair, Verifier
from nodes.driver import AsyncDriver, ledger_schedule, restore_core
from nodes.ledger import Ledger
from nodes.reconfig import ReconfigCommand
from nodes.wire import decode
from tests.unit.consensus.harness import CONFIG, CommitRow, MemoryCluster, row
from tests.unit.consensus.plan import BATCH_DELAY, FaultPlan
from twin.kernel import PRIO_WORLD, EventKernel
from twin.simnode import SimNode

GENESIS = "0" * 64


# ---- keys and blocks shared by the three -----------------------------------------------
class FastKey:
    """A keyed hash in place of ed25519 (same bytes signed, 64-byte signatures)."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.public_hex = hashlib.sha256(b"pub" + seed).hexdigest()

    def sign(self, data: bytes) -> str:
        return hashlib.sha512(self.seed + data).hexdigest()


class FastVerifier:
    def __init__(self, keys: Sequence[FastKey]) -> None:
        self._by_pub = {k.public_hex: k for k in keys}

    def verify(self, public_hex: str, signature_hex: object, data: bytes,
               remember: bool = True) -> bool:
        key = self._by_pub.get(public_hex)
        return key is not None and signature_hex == key.sign(data)


class Crypto:
    """Validator keys (deterministic), the twin's key, and who verifies."""

    def __init__(self, ids: Sequence[str], ed25519: bool) -> None:
        def seed(name: str) -> bytes:
            return hashlib.sha256(f"differential/{name}".encode()).digest()

        keys: list[Any]
        if ed25519:
            keys = [KeyPair.from_seed_hex(seed(i).hex()) for i in [*ids, "twin"]]
            self.verifier: Any = Verifier()
        else:
            keys = [FastKey(seed(i)) for i in [*ids, "twin"]]
            self.verifier = FastVerifier(keys)
        self.keys = dict(zip(ids, keys, strict=False))
        self.twin = keys[-1]
        self.pubs = {i: k.public_hex for i, k in self.keys.items()}

    def auth(self, me: str) -> WireAuth:
        return WireAuth(self.keys[me], self.pubs, self.verifier)


class ChainBlocks:
    """Empty signed blocks on a GENESIS root; the one at `switch_at` orders a switch."""

    def __init__(self, me: str, crypto: Crypto, plan: FaultPlan) -> None:
        self.me, self.crypto, self.plan = me, crypto, plan

    def build(self, height: int, parent: Any, protocol: str, now: float,
              prev_cert: Any = None) -> Block:
        cmds: tuple[ReconfigCommand, ...] = ()
        if height == self.plan.switch_at:
            cmds = (ReconfigCommand.create(self.crypto.twin, f"switch{height}",
                                           self.plan.other_protocol(), None, 0.0),)
        return Block.create(self.crypto.keys[self.me], height, parent or GENESIS, protocol,
                            self.me, now, (), cmds)

    def check(self, block: Block, parent: Any) -> str | None:
        if block.prev_hash != (parent or GENESIS):
            return "prev_hash is not our tip"
        try:
            block.check_signature(self.crypto.pubs, self.crypto.verifier)
        except BlockInvalid as exc:
            return str(exc)
        return None

    def switches(self, block: Block) -> Sequence[tuple[str, int | None]]:
        return [(c.protocol, c.activate_at) for c in block.reconfigs]

    def size(self, block: Block) -> int:
        return 1000

    def voters(self, block: Block) -> frozenset[str] | None:
        return None  # these blocks carry no certificate: plain round robin


def ids_of(plan: FaultPlan) -> list[str]:
    return [f"v{i}" for i in range(plan.n)]


def fresh(plan: FaultPlan) -> FaultPlan:
    """The same plan with its per-message counters reset (one per driver run)."""
    return FaultPlan(plan.seed, plan.n, plan.protocol, plan.duration, plan.gst, plan.drop,
                     plan.slow, plan.partition, plan.crash, plan.switch_at)


# ---- 1: in memory -----------------------------------------------------------------------
def run_memory(plan: FaultPlan, ed25519: bool = False,
               config: CoreConfig = CONFIG) -> dict[str, list[CommitRow]]:
    plan = fresh(plan)
    ids = ids_of(plan)
    crypto = Crypto(ids, ed25519)
    c = MemoryCluster(plan, ids, blocks=lambda me: ChainBlocks(me, crypto, plan),
                      auth=crypto.auth, config=config)
    return c.run().commits


# ---- 2: asyncio --------------------------------------------------------------------------
class _VirtualSelector(selectors.SelectSelector):
    """Polls real file descriptors without waiting; a wait moves the virtual clock to the
    loop's next timer instead."""

    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if not events and timeout is not None and timeout > 0:
            self.loop._vtime = self.loop._scheduled[0]._when  # type: ignore[attr-defined]
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A real asyncio loop whose `time()` is virtual: timers fire in order, instantly."""

    def __init__(self) -> None:
        self._vtime = 0.0
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._vtime


class _Hooks:
    def __init__(self, run: AsyncRun, me: str) -> None:
        self.run, self.me = run, me

    def record(self, block: Block, cert: Certificate, info: CommitInfo,
               block_bytes: int) -> None:
        self.run.commits[self.me].append(row(block, info))

    def committed(self, block: Block, cert: Certificate, record: Any) -> None:
        pass

    def want_batch(self, height: int) -> None:
        driver = self.run.drivers[self.me]
        assert driver is not None
        self.run.loop.call_later(BATCH_DELAY, driver.feed, BatchReady(height))

    def log(self, kind: str, data: Any) -> None:
        pass


class _Wire:
    """The transport double: frames through JSON, delayed or lost as the plan says."""

    def __init__(self, run: AsyncRun, me: str) -> None:
        self.run, self.me = run, me

    def send(self, peer: str, msg: dict[str, Any], frame: bytes | None = None) -> None:
        run = self.run
        d = run.plan.delay(run.ids.index(self.me), run.ids.index(peer), decode(msg),
                           run.loop.time())
        if d is not None:
            run.loop.call_later(d, run.deliver, peer, json.loads(json.dumps(msg)))

    def broadcast(self, msg: dict[str, Any]) -> None:
        for peer in self.run.ids:
            if peer != self.me:
                self.send(peer, msg)

    def pending(self, peer: str) -> int:
        return 0  # the plan's delays model the links; nothing queues here


class AsyncRun:
    def __init__(self, plan: FaultPlan, folder: Path, ed25519: bool,
                 config: CoreConfig) -> None:
        self.plan, self.folder, self.config = plan, folder, config
        self.ids = ids_of(plan)
        self.crypto = Crypto(self.ids, ed25519)
        self.loop = VirtualTimeLoop()
        self.drivers: dict[str, AsyncDriver | None] = dict.fromkeys(self.ids)
        self.commits: dict[str, list[CommitRow]] = {i: [] for i in self.ids}

    def start(self, me: str) -> None:
        ledger = Ledger(self.folder / me / "ledger.sqlite", GENESIS)
        blocks = ChainBlocks(me, self.crypto, self.plan)
        auth = self.crypto.auth(me)
        schedule = ledger_schedule(ledger, self.plan.protocol, self.config, blocks)
        core = restore_core(me, self.ids, self.config, auth, blocks, ledger, schedule)
        driver = AsyncDriver(me, core, _Wire(self, me), ledger, auth, _Hooks(self, me),
                             loop=self.loop, clock=self.loop.time, flush_in_thread=False)
        self.drivers[me] = driver
        driver.start()

    def crash(self, me: str) -> None:
        driver = self.drivers[me]
        assert driver is not None
        driver.stop()
        driver.ledger.close()
        self.drivers[me] = None

    def deliver(self, me: str, frame: dict[str, Any]) -> None:
        driver = self.drivers[me]
        if driver is not None:
            driver.on_frame(frame)

    async def main(self) -> None:
        for me in self.ids:
            self.start(me)
        c = self.plan.crash
        if c is not None:
            self.loop.call_at(c[1], self.crash, self.ids[c[0]])
            if c[2] is not None:
                self.loop.call_at(c[2], self.start, self.ids[c[0]])
        await asyncio.sleep(self.plan.duration)
        for driver in self.drivers.values():
            if driver is not None:
                driver.stop()
                driver.ledger.close()


def run_asyncio(plan: FaultPlan, ed25519: bool = False,
                config: CoreConfig = CONFIG) -> dict[str, list[CommitRow]]:
    with tempfile.TemporaryDirectory(prefix="differential-") as tmp:
        run = AsyncRun(fresh(plan), Path(tmp), ed25519, config)
        try:
            run.loop.run_until_complete(run.main())
        finally:
            run.loop.close()
        return run.commits


# ---- 3: the twin's driver ------------------------------------------------------------------
class TwinWorld:
    """A `twin.simnode.SimWorld` whose network is the plan."""

    def __init__(self, plan: FaultPlan, ed25519: bool, config: CoreConfig) -> None:
        self.plan, self.config = plan, config
        self.ids = ids_of(plan)
        self.crypto = Crypto(self.ids, ed25519)
        self.kernel = EventKernel()
        self.nodes: list[SimNode] = []
        for i, me in enumerate(self.ids):
            node = SimNode(self, i, True)
            node.id = me
            node.auth = self.crypto.auth(me)
            self.nodes.append(node)
        self.chains: dict[str, list[tuple[Block, Certificate]]] = {i: [] for i in self.ids}
        self.commits: dict[str, list[CommitRow]] = {i: [] for i in self.ids}

    def make_core(self, node: SimNode) -> Core:
        me = node.id
        blocks = ChainBlocks(me, self.crypto, self.plan)
        chain = self.chains[me]
        schedule = Schedule.from_chain(self.plan.protocol, self.config.reconfig_delay,
                                       ((b.height, blocks.switches(b)) for b, _ in chain))
        tip = node.tip
        return Core(me, Committee(self.ids, node.auth), self.config, blocks, schedule,
                    node.tip_height, tip.digest if tip is not None else None, node.votes)

    def delay(self, src: Any, dst: Any, msg: Any) -> float | None:
        return self.plan.delay(self.ids.index(src), self.ids.index(dst), msg, self.kernel.now)

    def peer(self, node_id: Any) -> SimNode:
        return self.nodes[self.ids.index(node_id)]

    def batch_at(self, node: SimNode, height: int) -> float:
        return self.kernel.now + BATCH_DELAY

    def on_commit(self, node: SimNode, block: Any, cert: Certificate, info: CommitInfo) -> None:
        self.chains[node.id].append((block, cert))
        self.commits[node.id].append(row(block, info))

    def sync_blocks(self, node: SimNode, start: int,
                    limit: int) -> tuple[tuple[Any, Certificate], ...]:
        return tuple(self.chains[node.id][start - 1:start - 1 + limit])

    def on_log(self, node: SimNode, kind: str, data: dict[str, Any]) -> None:
        pass


def run_twin(plan: FaultPlan, ed25519: bool = False,
             config: CoreConfig = CONFIG) -> dict[str, list[CommitRow]]:
    world = TwinWorld(fresh(plan), ed25519, config)
    k = world.kernel
    for node in world.nodes:
        k.schedule(0.0, PRIO_WORLD, node.start)
    c = world.plan.crash
    if c is not None:
        k.schedule(c[1], PRIO_WORLD, world.nodes[c[0]].fail)
        if c[2] is not None:
            k.schedule(c[2], PRIO_WORLD, world.nodes[c[0]].start)
    k.run_until(world.plan.duration)
    return world.commits


DRIVERS = {"memory": run_memory, "asyncio": run_asyncio, "twin": run_twin}
