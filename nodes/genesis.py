"""Write a genesis file, key files and per-node configs for n validators into a folder.

Layout written (all paths in node configs are relative to the folder):
    genesis.yaml               validator set, clients, twin key, protocol, timing
    keys/v0.key ...            validator seeds (hex, mode 0600)
    keys/client0.key ...       client seeds
    keys/twin.key              the twin's key (signs protocol switches)
    node-v0.yaml ...           `python -m nodes node --config node-v0.yaml`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nodes.config import ClientEntry, Genesis, Timing, ValidatorEntry
from nodes.crypto import KeyPair


def write_genesis(
    folder: Path,
    n: int,
    hosts: list[str] | None = None,
    base_port: int = 7000,
    clients: int = 1,
    protocol: str = "pbft",
    timing: dict[str, Any] | None = None,
    twin_endpoint: str | None = None,
    ports: list[int] | None = None,
) -> Genesis:
    """Create keys and configs; raises ValueError on inconsistent arguments."""
    if n < 1:
        raise ValueError(f"need at least one validator, got n={n}")
    if ports is not None and len(ports) != n:
        raise ValueError(f"ports lists {len(ports)} ports for n={n} validators")
    if hosts is not None and len(hosts) not in (1, n):
        raise ValueError(f"--hosts lists {len(hosts)} addresses; give 1 or n={n}")
    folder = Path(folder)
    (folder / "keys").mkdir(parents=True, exist_ok=True)
    hosts = hosts or ["127.0.0.1"]
    validators = []
    for i in range(n):
        key = KeyPair.generate()
        key.save(folder / "keys" / f"v{i}.key")
        host = hosts[i] if len(hosts) == n else hosts[0]
        # One shared host needs distinct ports; one host per node can reuse the port.
        port = base_port + i if len(hosts) == 1 else base_port
        if ports is not None:
            port = ports[i]
        validators.append(ValidatorEntry(id=f"v{i}", pubkey=key.public_hex, host=host, port=port))
    client_entries = []
    for i in range(clients):
        key = KeyPair.generate()
        key.save(folder / "keys" / f"client{i}.key")
        client_entries.append(ClientEntry(id=f"client{i}", pubkey=key.public_hex))
    twin = KeyPair.generate()
    twin.save(folder / "keys" / "twin.key")
    genesis = Genesis(
        protocol=protocol,
        validators=validators,
        clients=client_entries,
        twin_pubkey=twin.public_hex,
        timing=Timing(**(timing or {})),
    )
    (folder / "genesis.yaml").write_text(
        yaml.safe_dump(genesis.model_dump(mode="json"), sort_keys=False)
    )
    for v in validators:
        cfg: dict[str, Any] = {
            "id": v.id,
            "genesis": "genesis.yaml",
            "key_file": f"keys/{v.id}.key",
            "data_dir": f"data/{v.id}",
            "telemetry": f"telemetry/{v.id}.jsonl",
        }
        if twin_endpoint:
            cfg["twin_endpoint"] = twin_endpoint
        (folder / f"node-{v.id}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return genesis
