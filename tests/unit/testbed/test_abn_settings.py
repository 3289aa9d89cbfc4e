"""`abn:` on a topology host: bad settings are refused before anything starts."""

import pytest
from pydantic import ValidationError

from testbed.roles import abn_shim
from testbed.topology_schema import Topology


def topo(mb: dict, path_bw: str | None = "100mbit") -> dict:
    path = {"name": "path", "ends": ["mb", "h2"]} | ({"bw": path_bw} if path_bw else {})
    return {"name": "t", "hosts": {"h1": {}, "mb": mb, "h2": {}},
            "links": [{"name": "left", "ends": ["h1", "mb"]}, path]}


def error(mb: dict, **kw) -> str:
    with pytest.raises(ValidationError) as err:
        Topology.model_validate(topo(mb, **kw))
    return str(err.value)


def test_good_settings_make_one_shim_role(tmp_path):
    t = Topology.model_validate(topo({"role": "middlebox",
                                      "abn": {"link": "path", "capacity": "40mbit"}}))
    (role,) = abn_shim.build(t, tmp_path)
    argv = role.argv()
    assert role.name == "abn:mb" and "--iptables" in argv
    assert argv[argv.index("--capacity-bps") + 1] == "40000000"
    assert argv[argv.index("--queue") + 1] == str(abn_shim.QUEUE_BASE + 1)


def test_bad_settings_are_refused_with_a_reason():
    assert "does not forward" in error({"role": "endpoint",
                                        "abn": {"link": "path", "capacity": "40mbit"}})
    assert "above the rate of link path" in error(
        {"role": "middlebox", "abn": {"link": "path", "capacity": "200mbit"}})
    assert "is not a link of mb" in error(
        {"role": "router", "abn": {"link": "nowhere", "capacity": "40mbit"}})
    assert "average" in error(  # an unknown allocator: the known ones are named
        {"role": "middlebox", "abn": {"link": "path", "capacity": "40mbit", "allocator": "x"}})
    assert "positive" in error({"role": "middlebox", "abn": {"link": "path", "capacity": 0}})


def test_an_experiment_adds_or_removes_a_shim_and_is_checked_against_the_topology(tmp_path):
    import yaml

    from testbed import config
    from testbed.config import ConfigError

    (tmp_path / "topo.yaml").write_text(yaml.safe_dump(topo({"role": "middlebox"})))

    def load(abn):
        exp = {"name": "e", "topology": "topo.yaml", "duration": 5, "abn": abn}
        (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
        return config.load_experiment(tmp_path / "exp.yaml")

    shaped = load({"mb": {"link": "path", "capacity": "20mbit"}}).shaped_topology()
    assert shaped.hosts["mb"].abn is not None and shaped.hosts["mb"].abn.capacity == "20mbit"
    with pytest.raises(ConfigError, match="above the rate of link path"):
        load({"mb": {"link": "path", "capacity": "500mbit"}})
    with pytest.raises(ConfigError, match="abn.h9: unknown host"):
        load({"h9": {"link": "path", "capacity": "20mbit"}})
    with pytest.raises(ConfigError, match="does not forward"):
        load({"h1": {"link": "left", "capacity": "20mbit"}})
