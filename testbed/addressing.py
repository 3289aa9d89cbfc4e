"""IP addressing and static routes, computed from the topology graph without root.

Each L2 segment (a set of switches joined by links, or a host-to-host link) is one
/24: 10.<s // 256>.<s % 256>.0/24 for segment s (numbered from 1). Hosts whose spec
forwards (middleboxes) route between their segments; every host gets a static route to
each segment it is not on, via the first forwarding host on a shortest path.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from testbed.topology_schema import Topology


@dataclass(frozen=True)
class Interface:
    node: str
    name: str
    """Interface name, '<node>-eth<index>'."""
    link: str
    segment: int
    ip: str | None
    """Address without prefix; None on switches."""


@dataclass
class Plan:
    """Everything the builder needs: interfaces per link end, addresses, routes."""

    interfaces: dict[tuple[str, str], Interface] = field(default_factory=dict)
    """(link name, node) -> interface at that end."""
    segments: dict[int, str] = field(default_factory=dict)
    """segment -> subnet 'a.b.c.0/24'."""
    routes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """host -> [(subnet, via ip)]."""
    host_ips: dict[str, list[str]] = field(default_factory=dict)

    def intf(self, link: str, node: str) -> Interface:
        return self.interfaces[(link, node)]

    def ip_of(self, host: str) -> str:
        return self.host_ips[host][0]

    def intfs_of(self, node: str) -> list[Interface]:
        return sorted((i for i in self.interfaces.values() if i.node == node),
                      key=lambda i: i.name)


def subnet(segment: int) -> str:
    if not 1 <= segment < 65536:
        raise ValueError(f"too many L2 segments ({segment}); at most 65535")
    return f"10.{segment // 256}.{segment % 256}.0/24"


def plan(topo: Topology) -> Plan:
    p = Plan()
    # Union-find over switches joined by switch-switch links -> segments.
    parent = {s: s for s in topo.switches}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for link in topo.links:
        a, b = link.ends
        if a in topo.switches and b in topo.switches:
            parent[find(a)] = find(b)

    seg_of_switch: dict[str, int] = {}
    next_seg = 1
    link_seg: dict[str, int] = {}
    for link in topo.links:
        a, b = link.ends
        sw = a if a in topo.switches else b if b in topo.switches else None
        if sw is not None:
            root = find(sw)
            if root not in seg_of_switch:
                seg_of_switch[root] = next_seg
                next_seg += 1
            link_seg[link.link_name] = seg_of_switch[root]
        else:
            link_seg[link.link_name] = next_seg
            next_seg += 1
    for seg in sorted(set(link_seg.values())):
        p.segments[seg] = subnet(seg)

    intf_index: dict[str, int] = {}
    host_counter: dict[int, int] = {}
    for link in topo.links:
        seg = link_seg[link.link_name]
        for node in link.ends:
            idx = intf_index.get(node, 0)
            intf_index[node] = idx + 1
            ip = None
            if node in topo.hosts:
                n = host_counter.get(seg, 0) + 1
                if n > 253:
                    raise ValueError(f"segment of link {link.link_name!r} has more than 253 hosts")
                host_counter[seg] = n
                ip = p.segments[seg].rsplit(".", 1)[0] + f".{n}"
                p.host_ips.setdefault(node, []).append(ip)
            p.interfaces[(link.link_name, node)] = Interface(
                node, f"{node}-eth{idx}", link.link_name, seg, ip
            )
    _routes(topo, p)
    return p


def _routes(topo: Topology, p: Plan) -> None:
    """Breadth-first search from each host over segments, transiting forwarding hosts."""
    host_segs: dict[str, list[tuple[int, str]]] = {}
    seg_hosts: dict[int, list[tuple[str, str]]] = {}
    for intf in p.interfaces.values():
        if intf.ip is None:
            continue
        host_segs.setdefault(intf.node, []).append((intf.segment, intf.ip))
        seg_hosts.setdefault(intf.segment, []).append((intf.node, intf.ip))
    for host in topo.hosts:
        own = {s for s, _ in host_segs.get(host, [])}
        via: dict[int, str] = {}
        queue: deque[tuple[int, str | None]] = deque((s, None) for s in sorted(own))
        seen = set(own)
        while queue:
            seg, first_hop = queue.popleft()
            for router, router_ip in seg_hosts.get(seg, []):
                if router == host or not topo.hosts[router].forwards:
                    continue
                hop = first_hop or router_ip
                for nseg, _ in host_segs[router]:
                    if nseg not in seen:
                        seen.add(nseg)
                        via[nseg] = hop
                        queue.append((nseg, hop))
        p.routes[host] = [(p.segments[s], via[s]) for s in sorted(via)]
