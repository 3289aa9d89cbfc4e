"""The blockchain on the emulated network: genesis, validators, clients, switch commands.

The testbed writes a fresh genesis (keys, validator set with the hosts' addresses) into
each run folder, starts one `python -m nodes node` per validator host, and turns chain
outputs into tables: per-transaction latency (commit time - submit time, as in the twin
paper) and per-block protocol, from the nodes' own telemetry.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.addressing import Plan
from testbed.experiment_schema import ChainClient, ChainSpec, Experiment, SwitchProtocol

LATENCY_CSV = "chain_latency.csv"
BLOCKS_CSV = "chain_blocks.csv"


@dataclass(frozen=True)
class ChainRuntime:
    spec: ChainSpec
    folder: Path
    addresses: dict[str, str]
    """validator host -> 'ip:port'."""
    client_index: dict[str, int]
    """chain_client process name -> client number in genesis."""

    def node_argv(self, i: int) -> list[str]:
        return [sys.executable, "-m", "nodes", "node", "--config",
                str(self.folder / f"node-v{i}.yaml"), "--log-level", self.spec.log_level]

    def client_argv(self, p: ChainClient, run_dir: Path) -> list[str]:
        i = self.client_index[p.name]
        argv = [sys.executable, "-m", "nodes", "client",
                "--genesis", str(self.folder / "genesis.yaml"),
                "--key", str(self.folder / "keys" / f"client{i}.key"), "--id", f"client{i}",
                "--duration", f"{p.duration:g}", "--size", str(p.size),
                "--drain", f"{p.drain:g}", "--out", str(run_dir / f"{p.name}_tx.csv")]
        argv += ["--tps", f"{p.tps:g}"] if p.tps is not None else ["--schedule", str(p.schedule)]
        if p.targets:
            argv += ["--targets", *[self.addresses[t] for t in p.targets]]
        return argv

    def switch_argv(self, ev: SwitchProtocol) -> list[str]:
        from nodes.config import load_genesis

        target = ev.target or self.spec.validators[0]
        argv = [sys.executable, "-m", "nodes", "reconfig",
                "--key", str(self.folder / "keys" / "twin.key"),
                "--target", self.addresses[target], "--protocol", ev.protocol,
                "--id", f"switch-{ev.at:g}-{ev.protocol}",
                "--chain-id", load_genesis(self.folder / "genesis.yaml").chain_id]
        if ev.height is not None:
            argv += ["--at", str(ev.height)]
        return argv


def prepare(exp: Experiment, plan: Plan, run_dir: Path) -> ChainRuntime:
    """Write genesis, keys and node configs for this run's validators."""
    from nodes.genesis import write_genesis

    spec = exp.chain
    assert spec is not None
    clients = [p.name for p in exp.processes if isinstance(p, ChainClient)]
    folder = run_dir / "chain"
    ips = [plan.ip_of(h) for h in spec.validators]
    write_genesis(folder, len(ips), ips, spec.port, max(1, len(clients)), spec.protocol,
                  dict(spec.timing))
    if spec.congestion is not None:
        for i in range(len(ips)):
            path = folder / f"node-v{i}.yaml"
            cfg = yaml.safe_load(path.read_text())
            path.write_text(yaml.safe_dump({**cfg, "tcp_congestion": spec.congestion},
                                           sort_keys=False))
    return ChainRuntime(spec, folder, {h: f"{ip}:{spec.port}" for h, ip in
                                       zip(spec.validators, ips, strict=True)},
                        {name: i for i, name in enumerate(clients)})


def ledger_check(folder: Path) -> dict[str, Any]:
    """Safety from the nodes' own ledgers: every chain is a prefix of every other.

    Reads each validator's SQLite ledger (table `blocks(height, hash)`) read-only after
    the run; reports heights, the common prefix, and any height where two differ.
    """
    chains = _ledger_rows(folder, "SELECT height, hash FROM blocks ORDER BY height")
    forks = []
    by_height: dict[int, dict[str, str]] = {}
    for vid, chain in chains.items():
        for h, digest in chain:
            by_height.setdefault(h, {})[vid] = digest
    for h in sorted(by_height):
        if len(set(by_height[h].values())) > 1:
            forks.append({"height": h, "hashes": by_height[h]})
    heights = {vid: (c[-1][0] if c else 0) for vid, c in chains.items()}
    gaps = {vid: [h for (h, _), i in zip(c, range(1, len(c) + 1), strict=True) if h != i][:5]
            for vid, c in chains.items()}
    return {"validators": len(chains), "heights": heights,
            "common_height": min(heights.values(), default=0),
            "consistent": not forks and not any(gaps.values()), "forks": forks[:10],
            "gaps": {k: v for k, v in gaps.items() if v}}


def _ledger_rows(folder: Path, query: str) -> dict[str, list[Any]]:
    """validator -> rows of `query` over its SQLite ledger, opened read-only."""
    import sqlite3

    out: dict[str, list[Any]] = {}
    for db in sorted((folder / "data").glob("*/ledger.sqlite")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            out[db.parent.name] = con.execute(query).fetchall()
        finally:
            con.close()
    return out


def committed_tx_ids(folder: Path) -> set[str]:
    """Transaction ids in the longest validator ledger of the run (read-only)."""
    best = max(_ledger_rows(folder, "SELECT block FROM blocks ORDER BY height").values(),
               key=len, default=[])
    return {tx["id"] for (raw,) in best for tx in json.loads(raw).get("txs", [])}


def blocks(folder: Path, validator: str = "v0") -> list[dict[str, Any]]:
    """Committed blocks as one validator saw them: height, protocol, time, tx count."""
    path = folder / "telemetry" / f"{validator}.jsonl"
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill; the rest is still good
        if ev.get("kind") == "block":
            r = ev["record"]
            out.append({"height": r["height"], "protocol": r["protocol"],
                        "round": r["round"], "committed_at": r["committed_at"],
                        "tx_count": r["tx_count"], "fast_path": r.get("fast_path", False),
                        "silent": len(r.get("silent", ()))})
    return out


def write_tables(run_dir: Path, man: dict[str, Any]) -> list[str]:
    """chain_latency.csv (per transaction) and chain_blocks.csv (per block)."""
    t0 = float(man.get("timeline_t0_unix") or 0.0)
    made = []
    blks = blocks(run_dir / "chain")
    with open(run_dir / BLOCKS_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["height", "protocol", "round", "t_s", "tx_count", "fast_path", "silent"])
        for b in blks:
            w.writerow([b["height"], b["protocol"], b["round"], f"{b['committed_at'] - t0:.4f}",
                        b["tx_count"], int(b["fast_path"]), b["silent"]])
    made.append(BLOCKS_CSV)
    commits = sorted((b["committed_at"], b["protocol"]) for b in blks)
    rows = []
    for p in man["experiment"].get("processes", []):
        if p["kind"] != "chain_client":
            continue
        path = run_dir / f"{p['name']}_tx.csv"
        journal = run_dir / f"{p['name']}_tx.csv.journal"
        if not path.exists() and journal.exists():
            # The client was killed before writing its CSV: its journal has every
            # submission and commit it saw, so nothing measured is lost.
            from nodes.client import ClientResult

            ClientResult.from_journal(journal).write_csv(path)
        if not path.exists():
            continue
        for r in csv.DictReader(open(path)):
            sub = float(r["submit_time"])
            com = float(r["commit_time"]) if r["commit_time"] else None
            proto = _protocol_at(commits, com) if com is not None else ""
            rows.append([p["name"], r["tx_id"], f"{sub - t0:.4f}",
                         "" if com is None else f"{com - t0:.4f}",
                         "" if com is None else r["latency"], proto])
    with open(run_dir / LATENCY_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["client", "tx_id", "submit_s", "commit_s", "latency_s", "protocol"])
        w.writerows(rows)
    made.append(LATENCY_CSV)
    return made


def _protocol_at(commits: list[tuple[float, str]], t: float) -> str:
    """Protocol of the first block v0 committed at or after t (the tx's block)."""
    import bisect

    i = bisect.bisect_left(commits, (t - 1e-3, ""))
    return commits[i][1] if i < len(commits) else (commits[-1][1] if commits else "")
