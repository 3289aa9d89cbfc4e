"""Per-host sysctls: only known per-namespace keys, clear errors, experiment over topology."""

import pytest
import yaml

from testbed import config, sysctls
from testbed.config import ConfigError


def write(tmp_path, topo_hosts, exp_extra):
    topo = {"name": "t", "hosts": topo_hosts,
            "links": [{"name": "l", "ends": list(topo_hosts)[:2]}]}
    (tmp_path / "topo.yaml").write_text(yaml.safe_dump(topo))
    exp = {"name": "e", "topology": "topo.yaml", "duration": 5, **exp_extra}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    return tmp_path / "exp.yaml"


def test_experiment_sysctls_override_the_topology_per_host(tmp_path):
    path = write(tmp_path, {"h1": {"sysctls": {"net.ipv4.tcp_recovery": 1,
                                               "net.ipv4.tcp_reordering": 3}}, "h2": {}},
                 {"sysctls": {"h1": {"net.ipv4.tcp_recovery": 0},
                              "h2": {"net.ipv4.tcp_wmem": "4096 16384 268435456"}}})
    topo = config.load_experiment(path).shaped_topology()
    assert topo.hosts["h1"].sysctls == {"net.ipv4.tcp_recovery": "0",
                                        "net.ipv4.tcp_reordering": "3"}
    assert topo.hosts["h2"].sysctls == {"net.ipv4.tcp_wmem": "4096 16384 268435456"}
    assert sysctls.argv(topo.hosts["h1"].sysctls) == (
        "sysctl", "-q", "-w", "net.ipv4.tcp_recovery=0", "net.ipv4.tcp_reordering=3")


def test_a_typo_names_the_key_and_suggests_the_right_one(tmp_path):
    path = write(tmp_path, {"h1": {}, "h2": {}},
                 {"sysctls": {"h1": {"net.ipv4.tcp_recover": 0}}})
    with pytest.raises(ConfigError) as err:
        config.load_experiment(path)
    text = str(err.value)
    assert "net.ipv4.tcp_recover" in text and "did you mean net.ipv4.tcp_recovery" in text


def test_machine_wide_keys_and_odd_values_are_refused():
    with pytest.raises(ValueError, match="not per-host"):
        sysctls.check({"kernel.panic": 1}, "sysctls.h1")
    with pytest.raises(ValueError, match="plain number"):
        sysctls.check({"net.ipv4.tcp_wmem": "1; reboot"}, "sysctls.h1")
    with pytest.raises(ValueError, match="expected a number"):
        sysctls.check({"net.ipv4.tcp_sack": True}, "sysctls.h1")


def test_sysctls_for_an_unknown_host_are_an_error(tmp_path):
    path = write(tmp_path, {"h1": {}, "h2": {}},
                 {"sysctls": {"h9": {"net.ipv4.tcp_recovery": 0}}})
    with pytest.raises(ConfigError, match="sysctls.h9: unknown host"):
        config.load_experiment(path)
