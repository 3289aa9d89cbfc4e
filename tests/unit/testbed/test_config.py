"""Bad YAML gets an error naming the file, the field path and what was expected."""

from pathlib import Path

import pytest
import yaml

from testbed import config
from testbed.config import PROJECT_ROOT
from testbed.errors import ConfigError

TOPO = {
    "name": "t",
    "hosts": {"a": {}, "mb": {"role": "middlebox"}, "b": {}},
    "switches": {"sw": {}},
    "links": [{"ends": ["a", "sw"]}, {"ends": ["sw", "mb"]},
              {"name": "neck", "ends": ["mb", "b"], "bw": "10mbit", "delay": "5ms"}],
}


def write(tmp_path: Path, exp: dict, topo: dict | None = None) -> Path:
    (tmp_path / "topo.yaml").write_text(yaml.safe_dump(topo or TOPO))
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump({"name": "e", "topology": "topo.yaml", **exp}))
    return p


def error(tmp_path: Path, exp: dict, topo: dict | None = None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        config.load_experiment(write(tmp_path, exp, topo), overrides)
    return str(info.value)


@pytest.mark.smoke
def test_shipped_files_are_valid():
    topologies = sorted((PROJECT_ROOT / "topologies").rglob("*.yaml"))
    experiments = sorted((PROJECT_ROOT / "experiments").rglob("*.yaml"))
    assert topologies and experiments, "no shipped YAML found: wrong PROJECT_ROOT?"
    assert any(p.parent.name == "paper" for p in experiments)
    for path in topologies:
        config.load_topology(path)
    for path in experiments:
        config.load_experiment(path)


def test_unknown_field_names_path_and_file(tmp_path):
    msg = error(tmp_path, {"duration": 5, "procesess": []})
    assert "exp.yaml" in msg and "procesess" in msg and "Extra inputs" in msg


@pytest.mark.smoke
def test_bad_rate_names_link_field(tmp_path):
    msg = error(tmp_path, {"links": {"neck": {"bw": "fast"}}})
    assert "links.neck.bw" in msg and "expected a rate" in msg and "'fast'" in msg


def test_bad_process_field_names_index_and_kind(tmp_path):
    msg = error(tmp_path, {"processes": [
        {"name": "c", "kind": "iperf3_client", "host": "a", "server": "b", "port": 80}]})
    assert "processes[0].iperf3_client.port" in msg and "1024" in msg


def test_unknown_process_kind(tmp_path):
    msg = error(tmp_path, {"processes": [{"name": "c", "kind": "iperf2", "host": "a"}]})
    assert "processes[0]" in msg and "iperf3_client" in msg


def test_experiment_must_fit_topology(tmp_path):
    msg = error(tmp_path, {"links": {"nope": {"bw": 5}}, "processes": [
        {"name": "c", "kind": "iperf3_client", "host": "zz", "server": "b"}]})
    assert "links.nope: no such link" in msg
    assert "processes[0].host: unknown host 'zz'" in msg


def test_timeline_event_after_duration(tmp_path):
    msg = error(tmp_path, {"duration": 5, "timeline": [
        {"at": 9, "action": "link_down", "link": "neck"}]})
    assert "timeline[0]" in msg and "after the run's duration" in msg


def test_topology_errors(tmp_path):
    bad = {**TOPO, "links": [*TOPO["links"], {"ends": ["a", "ghost"]}]}
    assert "unknown node 'ghost'" in error(tmp_path, {}, bad)
    loop = {**TOPO, "links": [*TOPO["links"], {"ends": ["sw", "sw2"], "delay": "5ms"}],
            "switches": {"sw": {}, "sw2": {}}}
    assert "need a host at one end" in error(tmp_path, {}, loop)
    long = {**TOPO, "hosts": {**TOPO["hosts"], "averyverylongname": {}}}
    assert "at most 9 characters" in error(tmp_path, {}, long)


def test_yaml_syntax_error_names_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        config.load_experiment(p)


def test_overrides_apply_and_validate(tmp_path):
    p = write(tmp_path, {"duration": 10, "processes": [
        {"name": "c", "kind": "iperf3_client", "host": "a", "server": "b"}]})
    loaded = config.load_experiment(p, ["duration=5", "seed=3", "links.neck.bw=50mbit",
                                        "processes.c.congestion=bbr"])
    assert loaded.experiment.duration == 5 and loaded.experiment.seed == 3
    assert loaded.experiment.processes[0].congestion == "bbr"
    assert loaded.shaped_topology().link("neck").bw_bps == 50e6
    assert loaded.shaped_topology().link("neck").delay_s == pytest.approx(0.005)


@pytest.mark.smoke
def test_bad_override_path_and_value(tmp_path):
    p = write(tmp_path, {"processes": [{"name": "c", "kind": "ping", "host": "a", "target": "b"}]})
    with pytest.raises(ConfigError, match=r"links\.neck\.bandwidth: Extra inputs"):
        config.load_experiment(p, ["links.neck.bandwidth=5"])
    with pytest.raises(ConfigError, match=r"links\.neck\.bw: .*expected a rate"):
        config.load_experiment(p, ["links.neck.bw=quick"])
    with pytest.raises(ConfigError, match="duration: .*greater than 0"):
        config.load_experiment(p, ["duration=-1"])
    with pytest.raises(ConfigError, match="PATH=VALUE"):
        config.load_experiment(p, ["duration"])
    with pytest.raises(ConfigError, match="no list item named 'x'"):
        config.load_experiment(p, ["processes.x.port=5"])


# ---- issue 18: hostile or careless YAML -------------------------------------------------
def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    (tmp_path / "topo.yaml").write_text(
        "name: t\nhosts:\n  a: {}\n  b: {}\n  a: {role: middlebox}\n"
        "links:\n  - {ends: [a, b]}\n")
    p = tmp_path / "exp.yaml"
    p.write_text("name: e\ntopology: topo.yaml\n")
    with pytest.raises(ConfigError) as info:
        config.load_experiment(p)
    msg = str(info.value)
    assert "topo.yaml" in msg and "'a' is given twice" in msg and "line 3" in msg


def test_a_duplicate_field_in_an_experiment_is_refused(tmp_path):
    (tmp_path / "topo.yaml").write_text(yaml.safe_dump(TOPO))
    p = tmp_path / "exp.yaml"
    p.write_text("name: e\ntopology: topo.yaml\nduration: 5\nduration: 50\n")
    with pytest.raises(ConfigError) as info:
        config.load_experiment(p)
    assert "'duration' is given twice" in str(info.value)


@pytest.mark.parametrize("duration", [1e12, ".inf", ".nan"])
def test_absurd_durations_are_refused(tmp_path, duration):
    msg = error(tmp_path, {"duration": duration})
    assert "duration" in msg


def test_a_process_starting_after_the_run_is_refused(tmp_path):
    msg = error(tmp_path, {"duration": 38, "processes": [
        {"name": "p", "kind": "ping", "host": "a", "target": "b", "start": 100000}]})
    assert "processes[0] (p): start=100000" in msg and "38" in msg
