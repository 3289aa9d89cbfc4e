"""Honest commits under each attack of issue 18, at 50 TPS: rate, latency, memory, bytes.

    python benchmarks/nodes_attacks.py                       # every attack, 20 s each
    python benchmarks/nodes_attacks.py --attacks old_votes,conn_flood --seconds 30

Four validator processes on localhost (`python -m nodes node`), the honest workload
client (client0, 50 TPS of 200 B) in this process, and each attack in its own process
(this script with `attack NAME ...`), one after the other with a quiet phase before
each. Per phase: committed tx/s of the honest client (by commit time), its p50/p95
latency (by submit time), blocks/s, each validator's peak RSS, the bytes the attacker
sent (what left its process) and the amplification: what came back to it plus the
sync answers the validators sent beyond their quiet rate (a reflection to a third
party), over what it sent. The target: >= 80% of the quiet phase's committed rate under every
attack, memory bounded, amplification <= 1.

Attacks (each a finding of issue 18; no keys unless named):
- old_votes: forged prepares for old heights, each a different height (reflection).
- sync_replay: one captured, signed sync request of v1, replayed (holds v1's frame, not
  its key).
- future_big: forged proposals ~200 KB each for heights just ahead (buffer in bytes).
- future_tiny: forged votes for heights and rounds ahead, to two validators.
- unsigned_prepares: forged prepares for the current height, many rounds (round state).
- big_frames: 8 connections, each claiming a 60 MB frame and sending it slowly.
- conn_flood: 2,000 idle connections to one validator.
- bad_frames: undecodable frames (5,000-digit integer, 100k-deep nesting, bad `from`),
  each on a new connection.
- tx_flood: client1 (a registered client, its own key) sends 8,000 transactions of 16 KB
  to one validator as fast as it can, with 1,000 of bad timestamps among them.
- stale_switch: a year-old switch command signed by the twin's key, replayed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nodes.auth import signed_bytes
from nodes.block import Block
from nodes.client import WorkloadClient
from nodes.consensus.messages import SyncRequest
from nodes.crypto import KeyPair
from nodes.genesis import write_genesis
from nodes.reconfig import ReconfigCommand
from nodes.transport import encode
from nodes.tx import Transaction
from nodes.wire import encode as wire_encode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodes_soak import rss_mb  # noqa: E402
from nodes_throughput import ROOT, TIMING, free_ports, stop_all  # noqa: E402

ATTACKS = ("old_votes", "sync_replay", "future_big", "future_tiny", "unsigned_prepares",
           "big_frames", "conn_flood", "bad_frames", "tx_flood", "stale_switch")
FORGED = "00" * 64


# ---- the attacker (its own process) ------------------------------------------------------
class Wire:
    """One connection that counts what it sends and drains (and counts) what comes back."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    async def open(self, port: int) -> asyncio.StreamWriter:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        asyncio.get_running_loop().create_task(self._drain(r))
        return w

    async def _drain(self, r: asyncio.StreamReader) -> None:
        try:
            while data := await r.read(65536):
                self.received += len(data)
        except (OSError, ConnectionError):
            pass

    async def flood(self, port: int, frame: Callable[[int], bytes], rate: float,
                    seconds: float) -> None:
        """`rate` frames per second (frame(i) makes the i-th) for `seconds`."""
        w = await self.open(port)
        t0 = time.monotonic()
        i = 0
        while (elapsed := time.monotonic() - t0) < seconds:
            while i < rate * elapsed and w.transport.get_write_buffer_size() < 1 << 22:
                data = frame(i)
                w.write(data)
                self.sent += len(data)
                i += 1
            try:
                await asyncio.wait_for(w.drain(), 1.0)
            except (OSError, ConnectionError):
                w = await self.open(port)  # closed on us: come back
            except TimeoutError:
                pass
            await asyncio.sleep(0.01)
        self.sent -= w.transport.get_write_buffer_size()  # never left this process
        w.close()


async def _status(port: int) -> dict[str, Any]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(encode({"t": "status"}))
    (n,) = struct.unpack(">I", await r.readexactly(4))
    out = json.loads(await r.readexactly(n))
    w.close()
    return out


def _vote(h: int, r: int, sender: str = "v1") -> bytes:
    return encode({"t": "prepare", "from": sender, "h": h, "r": r,
                   "hash": random.randbytes(32).hex(), "sig": FORGED})


async def attack(name: str, folder: Path, ports: list[int], seconds: float) -> dict[str, int]:
    wire = Wire()
    first = await _status(ports[0])
    height = int(first["height"])
    if name == "old_votes":
        await wire.flood(ports[0], lambda i: _vote(1 + i % max(height - 2, 1), 0), 2000, seconds)
    elif name == "sync_replay":
        key = KeyPair.load(folder / "keys" / "v1.key")
        req = SyncRequest("v1", 1, time.time())
        frame = encode(wire_encode(SyncRequest("v1", 1, req.at, key.sign(signed_bytes(req)))))
        await wire.flood(ports[0], lambda i: frame, 2000, seconds)
    elif name == "future_big":
        mine = KeyPair.generate()
        txs = [Transaction.create(mine, "client0", f"x{i}", time.time(), random.randbytes(2000))
               for i in range(50)]
        blocks = {}
        for dh in (1, 2, 3):
            b = Block.create(mine, height + dh, random.randbytes(32).hex(), "pbft",
                             f"v{(height + dh) % 4}", time.time(), txs)
            blocks[dh] = b.to_wire()

        def proposal(i: int) -> bytes:
            dh = 1 + i % 3
            return encode({"t": "proposal", "from": f"v{(height + dh) % 4}", "h": height + dh,
                           "r": i // 3 % 100, "block": blocks[dh], "just": None,
                           "sent_at": time.time(), "sig": FORGED})
        await wire.flood(ports[0], proposal, 20, seconds)
    elif name == "future_tiny":
        await asyncio.gather(*(wire.flood(p, lambda i: _vote(height + 1 + i % 4, i // 4 % 100),
                                          2000, seconds) for p in ports[:2]))
    elif name == "unsigned_prepares":
        await wire.flood(ports[0], lambda i: _vote(height + 1, i % 100), 5000, seconds)
    elif name == "big_frames":
        async def one() -> None:
            w = await wire.open(ports[0])
            w.write(struct.pack(">I", 60_000_000))
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                w.write(b"{" * 100_000)
                wire.sent += 100_000
                try:
                    await asyncio.wait_for(w.drain(), 1.0)
                except (OSError, ConnectionError, TimeoutError):
                    return
                await asyncio.sleep(0.1)
        await asyncio.gather(*(one() for _ in range(8)))
    elif name == "conn_flood":
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
        held = []
        for _ in range(2000):
            try:
                held.append(await asyncio.wait_for(wire.open(ports[0]), 1.0))
            except (OSError, TimeoutError):
                await asyncio.sleep(0.01)
        await asyncio.sleep(seconds)
        for w in held:
            w.close()
    elif name == "bad_frames":
        bodies = [b'{"t": "prepare", "h": ' + b"9" * 5000 + b"}",
                  b"[" * 100_000 + b"]" * 100_000,
                  b'{"t": "prepare", "from": {"x": 1}, "h": 1, "r": 0, "hash": "ab", "sig": "00"}']
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            body = bodies[i % 3]
            try:
                w = await wire.open(ports[0])
                w.write(struct.pack(">I", len(body)) + body)
                wire.sent += 4 + len(body)
                await w.drain()
                w.close()
            except (OSError, ConnectionError):
                pass
            i += 1
            await asyncio.sleep(0.02)
    elif name == "tx_flood":
        key = KeyPair.load(folder / "keys" / "client1.key")
        now = time.time()
        bad = [float("nan"), float("inf"), 1e300, -1.0, now - 3600, now + 3600]
        batch = [Transaction.create(key, "client1", f"client0-{i}",
                                    bad[i % 6] if i % 8 == 0 else now, random.randbytes(16_384))
                 .to_wire() for i in range(8000)]
        frames = [encode({"t": "txs", "txs": batch[i:i + 10]}) for i in range(0, 8000, 10)]
        await wire.flood(ports[0], lambda i: frames[i % len(frames)], len(frames) / 8, seconds)
    elif name == "stale_switch":
        twin = KeyPair.load(folder / "keys" / "twin.key")
        cmd = ReconfigCommand.create(twin, "s", "bigfoot", None, time.time() - 365 * 86400)
        frame = encode({"t": "reconfig", "cmd": cmd.to_wire()})
        await wire.flood(ports[0], lambda i: frame, 200, seconds)
    else:
        raise SystemExit(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    await asyncio.sleep(0.5)
    last = (await _status(ports[0]))["counters"]
    moved = {k: v - first["counters"].get(k, 0) for k, v in last.items()
             if v != first["counters"].get(k, 0) and k not in ("txs", "blocks")}
    return {"sent": wire.sent, "received": wire.received, "v0_counters": moved}


# ---- the run: validators, honest client, phases ------------------------------------------
def _telemetry(folder: Path, n: int) -> tuple[list[float], list[tuple[float, int]]]:
    """From the validators' telemetry, read once: v0's block times, and every record of
    sync answers and hints sent (time, bytes): where a reflection to a third party would
    show."""
    blocks: list[float] = []
    sync_out: list[tuple[float, int]] = []
    for i in range(n):
        with open(folder / "telemetry" / f"v{i}.jsonl") as fh:
            for line in fh:
                if i == 0 and '"kind":"block"' in line:
                    blocks.append(json.loads(line)["t"])
                elif '"traffic"' in line:
                    rec = json.loads(line)
                    sync_out.append((rec["t"], rec["bytes"].get("out:sync_resp", 0)))
    return blocks, sync_out


async def _run(folder: Path, ports: list[int], pids: list[int], attacks: list[str],
               seconds: float, quiet: float, tps: float) -> list[dict[str, Any]]:
    total = len(attacks) * (seconds + quiet + 2) + quiet + 5
    client = WorkloadClient("client0", KeyPair.load(folder / "keys" / "client0.key"),
                            [("127.0.0.1", p) for p in ports], [(0.0, tps)], total,
                            payload_size=200, drain=3.0)
    run = asyncio.create_task(client.run())
    phases: list[dict[str, Any]] = []

    async def sample(until: float) -> list[float]:
        top = [0.0] * len(pids)
        while time.time() < until:
            rss = [rss_mb(p) for p in pids]
            top = [max(a, b) for a, b in zip(top, rss, strict=True)]
            await asyncio.sleep(0.5)
        return top

    await asyncio.sleep(3.0)  # warm-up
    for name in ["quiet", *attacks]:
        t0 = time.time()
        if name == "quiet":
            top = await sample(t0 + quiet)
            got: dict[str, int] = {"sent": 0, "received": 0}
        else:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "attack", name, str(folder),
                ",".join(map(str, ports)), str(seconds), stdout=subprocess.PIPE, cwd=ROOT)
            top = await sample(t0 + seconds)
            out, _ = await proc.communicate()
            got = json.loads(out.decode().strip().splitlines()[-1])
        t1 = time.time()
        phases.append({"attack": name, "t0": t0, "t1": t1, "rss_peak": top, **got})
        print(f"{name}: done ({t1 - t0:.0f} s)", flush=True)
        if name != "quiet":
            await asyncio.sleep(quiet)  # let the chain settle before the next one
    await run
    res = run.result()
    block_times, sync_out = _telemetry(folder, len(pids))
    for ph in phases:
        t0, t1 = ph["t0"], ph["t1"]
        ph["committed_tps"] = sum(1 for c in res.committed.values() if t0 < c <= t1) / (t1 - t0)
        lat = np.array([res.committed[i] - s for i, s in res.submitted.items()
                        if t0 < s <= t1 and i in res.committed])
        ph["p50_ms"] = float(np.percentile(lat, 50) * 1000) if lat.size else None
        ph["p95_ms"] = float(np.percentile(lat, 95) * 1000) if lat.size else None
        ph["uncommitted"] = sum(1 for i, s in res.submitted.items()
                                if t0 < s <= t1 and i not in res.committed)
        ph["blocks_s"] = sum(1 for t in block_times if t0 < t <= t1) / (t1 - t0)
        ph["out_bytes"] = sum(b for t, b in sync_out if t0 < t <= t1 + 2)
    return phases


def report(phases: list[dict[str, Any]]) -> bool:
    base = phases[0]
    base_out = base["out_bytes"] / (base["t1"] - base["t0"] + 2)
    ok = True
    print("\n| attack | committed tx/s | vs quiet | p50 / p95 ms | blocks/s | peak RSS MB "
          "(v0..v3) | attacker wrote MB | back to it + reflected, / sent |")
    print("|---|---|---|---|---|---|---|---|")
    for ph in phases:
        ratio = ph["committed_tps"] / max(base["committed_tps"], 1e-9)
        excess = max(ph["out_bytes"] - base_out * (ph["t1"] - ph["t0"] + 2), 0.0)
        amp = (ph["received"] + excess) / ph["sent"] if ph["sent"] else float("nan")
        fine = ratio >= 0.8 and ph["uncommitted"] == 0
        ok &= fine or ph is base
        p50, p95 = ph["p50_ms"], ph["p95_ms"]
        lat = f"{p50:.0f} / {p95:.0f}" if p50 is not None and p95 is not None else "-"
        print(f"| {ph['attack']} | {ph['committed_tps']:.1f} | {ratio:.2f}{'' if fine else ' (!)'} "
              f"| {lat} | {ph['blocks_s']:.1f} | "
              + " ".join(f"{x:.0f}" for x in ph["rss_peak"])
              + f" | {ph['sent'] / 1e6:.1f} | {amp:.2f} |")
    print("\nall attacks >= 0.8 of the quiet rate, nothing left uncommitted:", ok)
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["attack"]:
        name, folder, ports, seconds = argv[1], Path(argv[2]), argv[3], float(argv[4])
        got = asyncio.run(attack(name, folder, [int(p) for p in ports.split(",")], seconds))
        print(json.dumps(got))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--quiet", type=float, default=10)
    ap.add_argument("--tps", type=float, default=50)
    ap.add_argument("--json", type=Path, help="also write the phases here")
    a = ap.parse_args(argv)
    attacks = [x for x in a.attacks.split(",") if x]
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        ap.error(f"unknown attacks {sorted(unknown)}; known: {', '.join(ATTACKS)}")
    with tempfile.TemporaryDirectory(prefix="nodes-attacks-") as tmp:
        folder = Path(tmp)
        ports = free_ports(4)
        write_genesis(folder, 4, clients=2, ports=ports, timing=TIMING)
        procs = [subprocess.Popen([sys.executable, "-m", "nodes", "node", "--config",
                                   str(folder / f"node-v{i}.yaml")], cwd=ROOT,
                                  start_new_session=True, stderr=subprocess.DEVNULL)
                 for i in range(4)]
        try:
            time.sleep(1.0)
            phases = asyncio.run(_run(folder, ports, [p.pid for p in procs], attacks,
                                      a.seconds, a.quiet, a.tps))
        finally:
            stop_all(procs, 10.0)
    if a.json:
        a.json.write_text(json.dumps(phases, indent=1))
    return 0 if report(phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
