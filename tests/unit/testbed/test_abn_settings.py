"""`abn:` on a topology host: bad settings are refused before anything starts."""

import pytest
from pydantic import ValidationError

from testbed.experiment_schema import Experiment
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
    exp = Experiment.model_validate({"name": "x", "topology": "t.yaml"})
    (role,) = abn_shim.build(t, exp, tmp_path)
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


def test_the_rates_figure_is_drawn_from_the_run_folder_only(tmp_path):
    import json

    from testbed import roles

    (tmp_path / "abn").mkdir()
    key = ["10.0.1.1", 40000, "10.0.2.2", 5201]
    lines = [json.dumps({"t": 100.0 + i * 0.1, "C_r_bps": 39e6,
                         "flows": [{"key": key, "rate_bps": 19.5e6}]}) for i in range(20)]
    (tmp_path / "abn" / "mb.jsonl").write_text("\n".join(lines) + "\n{\"t\": 10")  # cut off
    man = {"timeline_t0_unix": 100.0,
           "roles": {"abn:mb": {"host": "mb", "records": "abn/mb.jsonl",
                                "settings": {"capacity": "40mbit", "period": 0.1,
                                             "allocator": "average"}}}}
    (fig,) = roles.analyse(tmp_path, man)
    assert fig.name == "abn_rates_mb.png" and fig.stat().st_size > 10_000


def test_the_shim_is_told_its_link_and_drains_its_queue_by_default(tmp_path):
    t = Topology.model_validate(topo({"role": "middlebox",
                                      "abn": {"link": "path", "capacity": "40mbit"}}))
    exp = Experiment.model_validate({"name": "x", "topology": "t.yaml"})
    (role,) = abn_shim.build(t, exp, tmp_path)
    argv = role.argv("mb-eth1")
    assert argv[argv.index("--link-intf") + 1] == "mb-eth1"
    assert argv[argv.index("--queue-drain") + 1] == "0.5"
    t0 = Topology.model_validate(topo({"role": "middlebox", "abn": {
        "link": "path", "capacity": "40mbit", "queue_drain": 0}}))
    (role0,) = abn_shim.build(t0, exp, tmp_path)
    assert "--queue-drain" not in role0.argv("mb-eth1")


def test_slim_clients_declare_only_to_a_shim_that_takes_declarations(tmp_path):
    import yaml

    from testbed import config, processes
    from testbed.addressing import plan as make_plan
    from testbed.config import ConfigError

    (tmp_path / "topo.yaml").write_text(yaml.safe_dump(topo({"role": "middlebox"})))
    slim = {"name": "slim", "kind": "slim_client", "host": "h1", "server": "h2",
            "size": 65536, "deadline": 0.5, "declare": "mb"}

    def load(abn, proc=slim):
        exp = {"name": "e", "topology": "topo.yaml", "duration": 5, "abn": abn,
               "processes": [{"name": "srv", "kind": "slim_server", "host": "h2"}, proc]}
        (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
        return config.load_experiment(tmp_path / "exp.yaml")

    with pytest.raises(ConfigError, match="declare: host 'mb' runs no ABN shim with a hints_port"):
        load({"mb": {"link": "path", "capacity": "20mbit"}})
    with pytest.raises(ConfigError, match="server: unknown host 'h7'"):
        load({}, {**slim, "server": "h7", "declare": None})
    loaded = load({"mb": {"link": "path", "capacity": "20mbit", "hints_port": 7400}})
    spec = loaded.experiment.processes[1]
    plan = make_plan(loaded.shaped_topology())
    argv = processes.argv_for(spec, plan, tmp_path, 5.0, None, 7400)
    assert argv[argv.index("--declare") + 1] == f"{plan.ip_of('mb')}:7400"
    assert argv[argv.index("--out") + 1] == str(tmp_path / "slim_slim.csv")
    assert processes.server_address(spec) == ("h2", 6100)
    (role,) = abn_shim.build(loaded.shaped_topology(), loaded.experiment, tmp_path)
    assert role.argv()[role.argv().index("--hints-port") + 1] == "7400"
