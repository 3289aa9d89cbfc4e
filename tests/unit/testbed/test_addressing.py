"""Addresses and static routes come from the topology graph, without root."""

from testbed import addressing
from testbed.config import PROJECT_ROOT, load_topology


def test_dumbbell_segments_and_routes():
    topo = load_topology(PROJECT_ROOT / "topologies" / "dumbbell.yaml")
    plan = addressing.plan(topo)
    # Left switch segment holds s1, s2 and mb's first interface; right one mb, r1, r2.
    assert plan.host_ips["s1"] == ["10.0.1.1"]
    assert plan.host_ips["mb"] == ["10.0.1.3", "10.0.2.1"]
    assert plan.host_ips["r2"] == ["10.0.2.3"]
    assert plan.intf("bottleneck", "mb").name == "mb-eth1"
    assert plan.routes["s1"] == [("10.0.2.0/24", "10.0.1.3")]
    assert plan.routes["r1"] == [("10.0.1.0/24", "10.0.2.1")]
    assert plan.routes["mb"] == []


def test_chain_of_middleboxes_routes_via_first_hop():
    topo = load_topology(PROJECT_ROOT / "topologies" / "abn_paper.yaml")
    plan = addressing.plan(topo)
    subnets = set(plan.segments.values())
    for host in topo.hosts:
        own = {addressing.subnet(i.segment) for i in plan.intfs_of(host)}
        routed = {s for s, _ in plan.routes[host]}
        assert own | routed == subnets, host  # every host reaches every segment
        assert not own & routed
    # e1 reaches the receivers' segment via mb1, its only router.
    mb1_left = plan.intf("swa-mb1", "mb1").ip
    assert all(via == mb1_left for _, via in plan.routes["e1"])
    # mb2 sends towards the receivers over the bottleneck, to mb3.
    to_e3 = addressing.subnet(plan.intf("mb4-swb", "mb4").segment)
    assert dict(plan.routes["mb2"])[to_e3] == plan.intf("bottleneck", "mb3").ip


def test_endpoints_do_not_route_for_others():
    from testbed.topology_schema import Topology

    topo = Topology.model_validate({
        "name": "t", "hosts": {"a": {}, "b": {}, "c": {}},
        "links": [{"ends": ["a", "b"]}, {"ends": ["b", "c"]}]})
    plan = addressing.plan(topo)
    assert plan.routes["a"] == []  # b is an endpoint: no transit through it
    topo.hosts["b"].forward = True
    plan = addressing.plan(topo)
    assert plan.routes["a"] == [(addressing.subnet(2), plan.intf("a-b", "b").ip)]
    topo.hosts["b"].forward = None
    topo.hosts["b"].role = "router"  # routers forward by default, as middleboxes do
    assert addressing.plan(topo).routes["a"] == plan.routes["a"]


def test_mininet_topo_graph_without_root():
    import pytest

    pytest.importorskip("mininet.topo", reason="needs Debian's mininet importable")
    from testbed.network import build_topo

    topo = load_topology(PROJECT_ROOT / "topologies" / "dumbbell.yaml")
    t = build_topo(topo, addressing.plan(topo))
    assert sorted(t.hosts()) == ["mb", "r1", "r2", "s1", "s2"]
    assert sorted(t.switches()) == ["swl", "swr"]
    info = t.linkInfo("mb", "swr")
    assert info["intfName1"] == "mb-eth1" and info["params1"] == {"ip": "10.0.2.1/24"}
