"""Typed genesis and node configuration (pydantic, extra fields forbidden).

Genesis is shared by every node: the validator set with public keys and addresses,
the registered clients, the twin's key, the initial protocol, and the consensus
timing every node must agree on. A node's own config says who it is and where its
key, data and telemetry live.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nodes.consensus import RULES
from nodes.crypto import sha256_hex
from nodes.strict_yaml import load_strict


class ConfigError(ValueError):
    """A config file is missing or invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidatorEntry(_Strict):
    id: str = Field(min_length=1, description="Validator name, e.g. 'v0'.")
    pubkey: str = Field(pattern=r"^[0-9a-f]{64}$", description="Ed25519 public key, hex.")
    host: str = Field(description="Address peers connect to (10.x.y.z in Mininet).")
    port: int = Field(ge=1, le=65535)


class ClientEntry(_Strict):
    id: str = Field(min_length=1)
    pubkey: str = Field(pattern=r"^[0-9a-f]{64}$")


class Timing(_Strict):
    round_timeout: float = Field(default=1.0, gt=0, description="Round-0 timeout, seconds.")
    round_backoff: float = Field(default=1.5, ge=1.0, description="Timeout factor per extra round.")
    max_round_timeout: float = Field(
        default=4.0,
        gt=0,
        description="Cap: timers never grow past this (unlike Besu's unbounded back-off).",
    )
    fast_path_timeout: float = Field(
        default=0.2,
        gt=0,
        description="BigFoot waits this long for PREPARE from all n before the slow path.",
    )
    block_period: float = Field(default=0.0, ge=0, description="Minimum time between blocks.")
    empty_block_period: float = Field(
        default=0.5,
        gt=0,
        description="A proposer with an empty pool proposes an empty block after this.",
    )
    max_block_txs: int = Field(default=2000, ge=1)
    max_block_bytes: int = Field(default=4_000_000, ge=1)
    max_tx_bytes: int = Field(default=16_384, ge=0, description="Largest accepted payload.")
    reconfig_delay: int = Field(
        default=2, ge=1, description="Blocks between a switch's commit and effect."
    )

    @model_validator(mode="after")
    def _cap_above_base(self) -> Timing:
        if self.max_round_timeout < self.round_timeout:
            raise ValueError("max_round_timeout must be >= round_timeout")
        if self.empty_block_period >= self.round_timeout:
            raise ValueError("empty_block_period must be < round_timeout (idle proposers time out)")
        return self


class Genesis(_Strict):
    chain_id: str = "chaintwin"
    protocol: str = Field(default="pbft", description="Initial protocol (a registered one).")
    validators: list[ValidatorEntry] = Field(min_length=1)
    clients: list[ClientEntry] = Field(default_factory=list)
    twin_pubkey: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    timing: Timing = Field(default_factory=Timing)

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, name: str) -> str:
        if name not in RULES:
            raise ValueError(f"unknown protocol {name!r}; known {sorted(RULES)}")
        return name

    @model_validator(mode="after")
    def _unique_ids(self) -> Genesis:
        ids = [v.id for v in self.validators]
        if len(set(ids)) != len(ids):
            raise ValueError(f"validator ids must be unique, got {ids}")
        cids = [c.id for c in self.clients]
        if len(set(cids)) != len(cids):
            raise ValueError(f"client ids must be unique, got {cids}")
        return self

    def hash(self) -> str:
        return sha256_hex(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode())

    def validator_keys(self) -> dict[str, str]:
        return {v.id: v.pubkey for v in self.validators}

    def client_keys(self) -> dict[str, str]:
        return {c.id: c.pubkey for c in self.clients}


class NodeConfig(_Strict):
    id: str = Field(description="This node's validator id in genesis.")
    genesis: Path
    key_file: Path
    data_dir: Path = Field(description="Ledger lives here (ledger.sqlite).")
    listen_host: str | None = Field(
        default=None, description="Default: this validator's genesis host."
    )
    listen_port: int | None = Field(default=None, ge=1, le=65535)
    peers: dict[str, str] = Field(
        default_factory=dict, description="Override peer addresses: id -> 'host:port'."
    )
    telemetry: Path | None = Field(default=None, description="JSON-lines telemetry file.")
    mempool_capacity: int = Field(
        default=50_000, ge=1, description="Pool size; beyond it clients get 'mempool_full'."
    )
    twin_endpoint: str | None = Field(
        default=None, pattern=r"^[^:]+:\d+$", description="'host:port'."
    )
    tcp_congestion: str | None = Field(
        default=None, pattern=r"^[a-z0-9_]{1,15}$",
        description="Congestion control of this node's TCP sockets (TCP_CONGESTION), e.g. "
        "'bbr' or 'abn'; default: its network namespace's.",
    )


def _load_mapping(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        data = load_strict(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _format(path: Path, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return f"{path}: " + "; ".join(parts)


def load_genesis(path: Path) -> Genesis:
    try:
        return Genesis.model_validate(_load_mapping(path))
    except ValidationError as exc:
        raise ConfigError(_format(path, exc)) from exc


def load_node_config(path: Path) -> NodeConfig:
    data = _load_mapping(path)
    base = Path(path).parent
    try:
        cfg = NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(path, exc)) from exc
    # Relative paths are relative to the config file, so a folder can be moved whole.
    fixes = {}
    for name in ("genesis", "key_file", "data_dir", "telemetry"):
        value = getattr(cfg, name)
        if value is not None and not value.is_absolute():
            fixes[name] = base / value
    return cfg.model_copy(update=fixes)
