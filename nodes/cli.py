"""Command line: `python -m nodes node|client|genesis|reconfig ...`.

`main(argv)` returns an exit code, so the testbed can mount it as `chaintwin node`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nodes.config import ConfigError, load_genesis, load_node_config
from nodes.consensus import RULES
from nodes.crypto import KeyPair
from nodes.genesis import write_genesis
from nodes.transport import encode, read_frame

if TYPE_CHECKING:
    from nodes.client import ClientResult, WorkloadClient


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not host:port")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodes", description="chaintwin blockchain node")
    sub = p.add_subparsers(dest="cmd", required=True)

    n = sub.add_parser("node", help="run a validator node")
    n.add_argument("--config", required=True, type=Path, help="node config YAML")
    n.add_argument("--log-level", default="WARNING")

    c = sub.add_parser("client", help="run the workload client")
    c.add_argument("--genesis", required=True, type=Path)
    c.add_argument("--key", required=True, type=Path, help="client key file")
    c.add_argument("--id", default="client0", help="client id in genesis")
    c.add_argument(
        "--targets",
        type=_addr,
        nargs="*",
        help="host:port of nodes (default: every validator in genesis)",
    )
    rate = c.add_mutually_exclusive_group(required=True)
    rate.add_argument("--tps", type=float, help="constant offered load")
    rate.add_argument("--schedule", help="'0:100,10:500' = from t seconds on, this tps")
    c.add_argument("--duration", type=float, required=True, help="seconds of sending")
    c.add_argument("--size", type=int, default=100, help="payload bytes per tx")
    c.add_argument("--drain", type=float, default=5.0, help="seconds to wait for commits")
    c.add_argument("--out", type=Path, help="per-transaction CSV")

    g = sub.add_parser("genesis", help="write genesis, keys and node configs")
    g.add_argument("--out", required=True, type=Path, help="folder to create")
    g.add_argument("-n", type=int, required=True, help="number of validators")
    g.add_argument("--hosts", help="comma-separated addresses: one shared, or one per node")
    g.add_argument("--base-port", type=int, default=7000)
    g.add_argument("--clients", type=int, default=1)
    g.add_argument("--protocol", default="pbft", choices=sorted(RULES))
    g.add_argument("--timing", default="{}", help="JSON overrides of genesis timing fields")
    g.add_argument("--twin-endpoint", help="host:port the nodes stream sensor records to")

    r = sub.add_parser("reconfig", help="send a twin-signed protocol switch to a node")
    r.add_argument("--key", required=True, type=Path, help="twin key file")
    r.add_argument("--target", required=True, type=_addr)
    r.add_argument("--protocol", required=True)
    r.add_argument("--at", type=int, default=None, help="activation height (default: asap)")
    r.add_argument("--id", default=None)
    r.add_argument("--chain-id", default="chaintwin", help="genesis chain_id (signed)")

    s = sub.add_parser("status", help="ask a node for its height, tip and counters")
    s.add_argument("--target", required=True, type=_addr)
    return p


async def _run_node(config: Path) -> int:
    from nodes.node import Node

    node = Node.from_config(load_node_config(config))
    await node.start()
    # What start-up made (modules, keys, the genesis) lives as long as the process:
    # keep it out of the collector's full passes, so a gen-2 pass scans only what
    # consensus allocated since (a pause here delays every vote of this validator).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()
    return 0


async def _run_client(client: WorkloadClient) -> ClientResult:
    """Run the workload; SIGTERM/SIGINT end it early and it still writes its results."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, client.stop)
    return await client.run()


async def _request(target: tuple[str, int], msg: dict) -> dict:
    reader, writer = await asyncio.open_connection(*target)
    writer.write(encode(msg))
    await writer.drain()
    reply = await asyncio.wait_for(read_frame(reader), 5.0)
    writer.close()
    return reply or {}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "node":
            logging.basicConfig(
                level=args.log_level.upper(),
                format="%(asctime)s %(name)s %(levelname)s %(message)s",
            )
            with contextlib.suppress(KeyboardInterrupt):
                return asyncio.run(_run_node(args.config))
            return 0
        if args.cmd == "genesis":
            hosts = args.hosts.split(",") if args.hosts else None
            write_genesis(
                args.out,
                args.n,
                hosts,
                args.base_port,
                args.clients,
                args.protocol,
                json.loads(args.timing),
                args.twin_endpoint,
            )
            print(f"wrote genesis, keys and node configs for {args.n} validators to {args.out}")
            return 0
        if args.cmd == "client":
            from nodes.client import WorkloadClient, parse_schedule

            genesis = load_genesis(args.genesis)
            targets = args.targets or [(v.host, v.port) for v in genesis.validators]
            schedule = parse_schedule(args.schedule) if args.schedule else [(0.0, args.tps)]
            client = WorkloadClient(
                args.id,
                KeyPair.load(args.key),
                targets,
                schedule,
                args.duration,
                args.size,
                drain=args.drain,
                journal=Path(f"{args.out}.journal") if args.out else None,
            )
            result = asyncio.run(_run_client(client))
            if args.out:
                result.write_csv(args.out)
            print(json.dumps({**result.summary(), "skipped_batches": dict(client.skipped)}))
            return 0
        if args.cmd == "reconfig":
            from nodes.reconfig import ReconfigCommand

            cmd = ReconfigCommand.create(
                KeyPair.load(args.key),
                args.id or f"switch-{time.time():.6f}",
                args.protocol,
                args.at,
                time.time(),
                args.chain_id,
            )
            reply = asyncio.run(_request(args.target, {"t": "reconfig", "cmd": cmd.to_wire()}))
            print(json.dumps(reply))
            return 0 if reply.get("ok") else 1
        if args.cmd == "status":
            print(json.dumps(asyncio.run(_request(args.target, {"t": "status"}))))
            return 0
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2
