"""Genesis writing, config validation errors, and the CLI entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nodes.cli import main
from nodes.client import parse_schedule
from nodes.config import ConfigError, load_genesis, load_node_config
from nodes.crypto import KeyPair


def test_genesis_command_writes_consistent_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "net"
    rc = main(
        [
            "genesis",
            "--out",
            str(out),
            "-n",
            "4",
            "--hosts",
            "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4",
            "--base-port",
            "30303",
            "--protocol",
            "bigfoot",
            "--timing",
            '{"round_timeout": 2.0}',
        ]
    )
    assert rc == 0
    g = load_genesis(out / "genesis.yaml")
    assert [v.host for v in g.validators] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert {v.port for v in g.validators} == {30303}
    assert g.protocol == "bigfoot" and g.timing.round_timeout == 2.0
    for v in g.validators:
        cfg = load_node_config(out / f"node-{v.id}.yaml")
        assert KeyPair.load(cfg.key_file).public_hex == v.pubkey
        assert cfg.genesis == out / "genesis.yaml"
    assert KeyPair.load(out / "keys" / "twin.key").public_hex == g.twin_pubkey
    assert KeyPair.load(out / "keys" / "client0.key").public_hex == g.clients[0].pubkey


def test_bad_configs_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["genesis", "--out", str(tmp_path), "-n", "4"])
    data = yaml.safe_load((tmp_path / "genesis.yaml").read_text())
    data["timing"]["round_timeout"] = -1
    data["validators"][0]["colour"] = "red"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_genesis(tmp_path / "bad.yaml")
    msg = str(info.value)
    assert "bad.yaml" in msg and "timing.round_timeout" in msg and "validators.0.colour" in msg
    (tmp_path / "node.yaml").write_text("id: v0\ngenesis: genesis.yaml\n")
    with pytest.raises(ConfigError, match="key_file"):
        load_node_config(tmp_path / "node.yaml")
    assert main(["node", "--config", str(tmp_path / "node.yaml")]) == 2
    assert "key_file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="empty_block_period"):
        data = yaml.safe_load((tmp_path / "genesis.yaml").read_text())
        data["timing"]["empty_block_period"] = 5.0
        (tmp_path / "g2.yaml").write_text(yaml.safe_dump(data))
        load_genesis(tmp_path / "g2.yaml")
    assert main(["genesis", "--out", str(tmp_path / "x"), "-n", "3", "--hosts", "a,b"]) == 2


def test_schedule_parsing() -> None:
    assert parse_schedule("0:100,10:500") == [(0.0, 100.0), (10.0, 500.0)]
    for bad in ("5:100", "0:1,0:2", "0:x", "0:-1"):
        with pytest.raises(ValueError):
            parse_schedule(bad)
    assert json.loads(json.dumps(parse_schedule("0:1")))  # plain data, loggable
