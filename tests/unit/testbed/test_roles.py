"""The roles' lifecycle without a network: which roles a run gets, in which order, and
where the manifest keeps what each collected."""

from __future__ import annotations

from pathlib import Path

from testbed import roles
from testbed.experiment_schema import Experiment
from testbed.topology_schema import Topology

TOPO = Topology.model_validate({
    "name": "t", "hosts": {"h1": {}, "h2": {},
                           "mb": {"role": "middlebox",
                                  "abn": {"link": "path", "capacity": "10mbit"}}},
    "links": [{"name": "left", "ends": ["h1", "mb"]},
              {"name": "path", "ends": ["mb", "h2"], "bw": "20mbit"}]})


def _exp(**kw: object) -> Experiment:
    return Experiment.model_validate({"name": "x", "topology": "t.yaml", **kw})


def test_roles_come_in_start_order_and_only_when_asked_for(tmp_path: Path) -> None:
    everything = _exp(
        captures=[{"host": "h1"}], chain={"validators": ["h1", "h2"]},
        processes=[{"name": "s", "kind": "iperf3_server", "host": "h2"},
                   {"name": "c", "kind": "iperf3_client", "host": "h1", "server": "h2",
                    "congestion": "abn"}])
    built = roles.build(TOPO, everything, tmp_path)
    assert [r.name for r in built] == ["captures", "abn_sender", "validators", "abn:mb"]
    # the validators start as the roles before them want (the ABN sender's cgroup)
    assert [r.name for r in built[2].wrappers] == ["captures", "abn_sender"]  # type: ignore[attr-defined]
    assert [r.name for r in roles.build(TOPO, _exp(), tmp_path)] == ["abn:mb"]


def test_validators_with_abn_bring_the_abn_sender(tmp_path: Path) -> None:
    chain = _exp(chain={"validators": ["h1", "h2"], "congestion": "abn"})
    assert [r.name for r in roles.build(TOPO, chain, tmp_path)] == [
        "abn_sender", "validators", "abn:mb"]
    plain = _exp(chain={"validators": ["h1", "h2"], "congestion": "bbr"})
    assert "abn_sender" not in [r.name for r in roles.build(TOPO, plain, tmp_path)]


def test_collect_keeps_keyed_roles_at_their_key_and_the_others_by_name(tmp_path: Path) -> None:
    class Keyed:
        name, manifest_key = "captures", "captures"

        def collect(self) -> list[str]:
            return ["a.pcap"]

    class Plain:
        name = "abn:mb"

        def collect(self) -> dict[str, int]:
            return {"periods": 3}

    out = roles.collect([Keyed(), Plain()])  # type: ignore[list-item]
    assert out == {"captures": ["a.pcap"], "roles": {"abn:mb": {"periods": 3}}}
    assert roles.collect([]) == {}
    assert roles.chain_runtime([Plain()]) is None  # type: ignore[list-item]
