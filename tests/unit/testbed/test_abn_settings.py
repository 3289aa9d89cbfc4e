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
