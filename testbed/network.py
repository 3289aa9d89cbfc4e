"""Build a topology on Mininet and keep its shaping under control at run time.

`YamlTopo` is a side-effect-free Mininet Topo (as in Mininet's own examples); `Network`
instantiates it with plain veth links (not TCLink, which caps rates at 1000 Mbit/s),
assigns addresses and routes from testbed.addressing, and shapes each link direction
through testbed.shaping. Every command it runs is logged, and `stop()` undoes
everything in a fixed order (delay lines, iptables rules, qdiscs, then Mininet).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from testbed import shaping, sysctls
from testbed.addressing import Plan
from testbed.addressing import plan as make_plan
from testbed.errors import EmulationError
from testbed.shaping import Backend, Cmd, Direction
from testbed.topology_schema import Shaping, Topology

log = logging.getLogger("chaintwin.network")

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"


def _mininet():  # type: ignore[no-untyped-def]
    try:
        from mininet.link import Link
        from mininet.net import Mininet
        from mininet.node import Host, OVSSwitch
        from mininet.nodelib import LinuxBridge
        from mininet.topo import Topo
    except ImportError as exc:
        raise EmulationError(
            f"mininet is not importable ({exc}); run ./setup.sh and use .venv/bin/chaintwin"
        ) from exc
    return Mininet, Topo, Host, Link, LinuxBridge, OVSSwitch


def build_topo(topo: Topology, plan: Plan) -> Any:
    """A Mininet Topo with our interface names and addresses (no root needed)."""
    _, Topo, _, _, LinuxBridge, OVSSwitch = _mininet()

    class YamlTopo(Topo):  # type: ignore[misc, valid-type]
        def build(self) -> None:
            for name in topo.hosts:
                self.addHost(name, ip=None)
            for i, (name, spec) in enumerate(topo.switches.items()):
                kind = spec.kind or topo.switch
                dpid = f"{i + 1:016x}"  # our switch names are not Mininet's s1, s2...
                if kind == "bridge":
                    self.addSwitch(name, cls=LinuxBridge, dpid=dpid)
                else:
                    self.addSwitch(name, cls=OVSSwitch, datapath="user",
                                   failMode="standalone", dpid=dpid)
            for link in topo.links:
                a, b = link.ends
                ia, ib = plan.intf(link.link_name, a), plan.intf(link.link_name, b)
                self.addLink(
                    a, b, intfName1=ia.name, intfName2=ib.name,
                    params1={"ip": f"{ia.ip}/24"} if ia.ip else {},
                    params2={"ip": f"{ib.ip}/24"} if ib.ip else {},
                )

    return YamlTopo()


@dataclass
class DelayLineProc:
    """The one delay-line process of a run and the files it writes."""

    proc: subprocess.Popen[bytes]
    config_path: Path
    stats_path: Path
    periods_path: Path
    log_path: Path
    lanes: dict[str, Direction]


@dataclass
class Network:
    topo: Topology
    backend: Backend
    run_dir: Path
    seed: int = 1
    extra_delay_links: set[str] = field(default_factory=set)
    plan: Plan = field(init=False)
    directions: list[Direction] = field(init=False)
    net: Any = None
    delay_lines: DelayLineProc | None = None
    commands: list[dict[str, Any]] = field(default_factory=list)
    offload: dict[str, Any] = field(default_factory=dict)
    """Which CPUs run the delay line and which take the packets' receive processing."""
    _queued: list[Direction] = field(default_factory=list)
    """Directions whose NFQUEUE rule is installed (removed again in stop())."""
    _partition: list[Cmd] = field(default_factory=list)
    """The partition's DROP rules (as installed; heal() and stop() delete them)."""

    def __post_init__(self) -> None:
        self.plan = make_plan(self.topo)
        self.directions = shaping.directions(self.topo, self.plan, self.extra_delay_links)

    # -- running commands -------------------------------------------------------------
    def node(self, name: str) -> Any:
        return self.net[name]

    def run(self, cmd: Cmd, check: bool = True) -> str:
        node = self.node(cmd.node)
        out = node.cmd(cmd.shell() + "; echo __rc=$?")
        text, _, rc = out.rpartition("__rc=")
        code = int(rc.strip() or 1)
        self.commands.append({"node": cmd.node, "cmd": cmd.shell(), "rc": code})
        if code != 0 and check:
            raise EmulationError(f"on {cmd.node}: `{cmd.shell()}` failed ({code}): {text.strip()}")
        return text

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        Mininet, _, Host, Link, LinuxBridge, _ = _mininet()
        if any((s.kind or self.topo.switch) == "ovs-user" for s in self.topo.switches.values()):
            _ensure_ovs()
        self.net = Mininet(topo=build_topo(self.topo, self.plan), host=Host, link=Link,
                           switch=LinuxBridge, controller=None, build=False,
                           autoSetMacs=False, cleanup=False, waitConnected=False)
        self.net.build()
        self.net.start()
        self._configure_hosts()
        for d in self.directions:
            for cmd in shaping.setup_cmds(d, self.backend):
                self.run(cmd)
        if self.backend == "userspace" and any(d.queue_num for d in self.directions):
            self.offload = self._steer_receive_processing()
            self._start_delay_lines([d for d in self.directions if d.queue_num])

    def _configure_hosts(self) -> None:
        uses_ovs = any((s.kind or self.topo.switch) == "ovs-user"
                       for s in self.topo.switches.values())
        for name, spec in self.topo.hosts.items():
            h = self.node(name)
            h.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                  "net.ipv6.conf.default.disable_ipv6=1")
            h.cmd(f"sysctl -qw net.ipv4.ip_forward={1 if spec.forwards else 0}")
            h.cmd("sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0")
            # Windows must fit the BDP of 2 Gbit/s x 200 ms (50 MB); the ABN paper raised
            # tcp_wmem the same way. These sysctls are per network namespace.
            h.cmd("sysctl -qw net.ipv4.tcp_rmem='4096 131072 268435456' "
                  "net.ipv4.tcp_wmem='4096 16384 268435456'")
            # Packets held in a delay line on a sender's own egress still count against
            # TCP small queues; let them not throttle the sender.
            h.cmd("sysctl -qw net.ipv4.tcp_limit_output_bytes=268435456")
            if spec.sysctls:  # the experiment's own settings, after the defaults above
                self.run(Cmd(name, sysctls.argv({k: str(v) for k, v in spec.sysctls.items()})))
            for subnet, via in self.plan.routes.get(name, []):
                self.run(Cmd(name, ("ip", "route", "replace", subnet, "via", via)))
            if uses_ovs:
                for intf in self.plan.intfs_of(name):
                    h.cmd(f"ethtool -K {intf.name} tx off >/dev/null 2>&1")

    def _steer_receive_processing(self) -> dict[str, Any]:
        """Keep the delay line's CPU for releasing packets on time.

        A verdict runs the released packet's path downstream inside the delay line's
        thread (HTB, veth, and, at bh-enable, the receiver's whole stack: TCP, its ACK,
        the sender's reply); a burst of releases then makes the packets due meanwhile
        late by milliseconds (the quickstart: 2.8% of packets > 1 ms late on an idle
        host). With RPS on every interface of the topology pointing at the other CPUs,
        veth only queues the packet to another CPU's backlog and the release returns
        (quickstart: 0.4%). Interfaces in host namespaces are set from a private mount
        namespace with that namespace's sysfs; switch ports live in the root namespace.
        Nothing outlives the run: the interfaces go with the network.
        """
        ncpu = os.cpu_count() or 1
        if ncpu < 2:
            return {"delay_line_cpus": [], "rps_mask": None, "reason": "one CPU"}
        line_cpus = [0] if ncpu < 4 else [0, 1]
        mask = format(sum(1 << c for c in range(ncpu) if c not in line_cpus), "x")
        # A fresh sysfs in a private mount namespace shows this network namespace's
        # devices; it is mounted on a temporary directory (over /sys it can collide with
        # the one already there) and goes away with the mount namespace.
        script = ('d=$(mktemp -d) && mount -t sysfs sysfs "$d" && n=0 && for i in {intfs}; '
                  'do for f in "$d"/class/net/$i/queues/rx-*/rps_cpus; do echo {mask} > "$f" '
                  '&& n=$((n+1)); done; done; umount "$d"; rmdir "$d"; echo "rps:$n"')
        count = 0
        for name in self.topo.hosts:
            intfs = [i.name for i in self.plan.intfs_of(name)]
            if intfs:
                out = self.run(Cmd(name, ("unshare", "-m", "sh", "-c",
                                          script.format(intfs=" ".join(intfs), mask=mask))))
                done = int(out.rpartition("rps:")[2].split()[0] or 0) if "rps:" in out else 0
                if done < len(intfs):
                    # No RPS here (a kernel without CONFIG_RPS, no sysfs): the delay line
                    # still works, with one unpinned thread per core; the manifest says so.
                    log.warning("RPS could not be set on %s (%d of %d interfaces): %s",
                                name, done, len(intfs), out.strip()[-200:])
                    return {"delay_line_cpus": [], "rps_mask": None,
                            "reason": f"RPS unavailable on {name}: {out.strip()[-200:]}"}
                count += done
        for link in self.topo.links:
            for end in link.ends:
                if end in self.topo.switches:
                    intf = self.plan.intf(link.link_name, end).name
                    for f in Path(f"/sys/class/net/{intf}/queues").glob("rx-*/rps_cpus"):
                        try:
                            f.write_text(mask)
                            count += 1
                        except OSError as exc:
                            log.warning("RPS on switch port %s: %s", intf, exc)
        return {"delay_line_cpus": line_cpus, "rps_mask": mask, "interfaces": count}

    def _start_delay_lines(self, dirs: list[Direction]) -> None:
        """One process serves every delayed direction (a lane each, in its own namespace);
        the NFQUEUE rules go in once it has bound every queue."""
        folder = self.run_dir / "linkemu"
        folder.mkdir(parents=True, exist_ok=True)
        lanes: list[dict[str, object]] = []
        for d in dirs:
            site = self.node(d.delay_line_site()[0])
            lanes.append(shaping.lane_spec(d, self.seed + d.queue_num * 7919 + len(lanes),
                                           f"/proc/{site.pid}/ns/net"))
        config = folder / "lanes.json"
        config.write_text(json.dumps({"lanes": lanes,
                                      "cpus": self.offload.get("delay_line_cpus", [])},
                                     indent=1))
        stats, periods, log_path = (folder / "stats.json", folder / "periods.jsonl",
                                    folder / "linkemu.log")
        argv = shaping.delay_lines_argv(str(config), str(stats), str(periods))
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=str(_project_root()),
                                    start_new_session=True)
        self.delay_lines = DelayLineProc(proc, config, stats, periods, log_path,
                                         {d.key: d for d in dirs})
        wait_ready(proc, log_path, 20, "the delay-line process")
        for d in dirs:
            self.run(shaping.delay_line_rule(d))
            self._queued.append(d)

    def check_delay_lines(self) -> None:
        dl = self.delay_lines
        if dl is not None and dl.proc.poll() is not None:
            raise EmulationError(f"the delay-line process exited ({dl.proc.returncode}): "
                                 f"{dl.log_path.read_text(errors='replace')[-500:]}")

    def set_link(self, link: str, change: Shaping) -> list[str]:
        """Change a link's shaping at run time; returns what was done."""
        done = []
        new_dirs = []
        for d in self.directions:
            if d.link != link:
                new_dirs.append(d)
                continue
            new = d.shaping.merged(change)
            for cmd in shaping.change_cmds(d, new, self.backend):
                self.run(cmd)
                done.append(cmd.shell())
            dl = self.delay_lines
            if self.backend == "userspace" and dl is not None and d.key in dl.lanes:
                msg = json.dumps({"link": d.key, **shaping.emulator_config(new)})
                assert dl.proc.stdin is not None
                dl.proc.stdin.write(msg.encode() + b"\n")
                dl.proc.stdin.flush()
                done.append(f"delay line <- {msg}")
            elif self.backend == "userspace" and new.needs_delay_line:
                raise EmulationError(f"{d.key}: no delay line was started for this link")
            new_dirs.append(replace(d, shaping=new))
        self.directions = new_dirs
        return done

    def set_link_state(self, link: str, up: bool) -> None:
        spec = self.topo.link(link)
        for end in spec.ends:
            intf = self.plan.intf(link, end).name
            self.run(Cmd(end, ("ip", "link", "set", intf, "up" if up else "down")))
        if up:
            self._restore_routes(spec.ends)

    def set_host_state(self, host: str, up: bool) -> None:
        for intf in self.plan.intfs_of(host):
            self.run(Cmd(host, ("ip", "link", "set", intf.name, "up" if up else "down")))
        if up:
            self._restore_routes((host,))

    def partition(self, groups: list[list[str]]) -> list[str]:
        """Hosts in different groups stop hearing each other: in each host's namespace,
        iptables drops what it sends to and receives from the other groups' addresses
        (silently, as a cut cable: TCP sees no reset). Returns the rules installed."""
        if self._partition:
            raise EmulationError("a partition is in place already; heal it first")
        for i, group in enumerate(groups):
            others = [ip for j, g in enumerate(groups) if j != i for h in g
                      for ip in self.plan.host_ips.get(h, [])]
            for host in group:
                for ip in others:
                    for rule in (("OUTPUT", "-d", ip), ("INPUT", "-s", ip)):
                        cmd = Cmd(host, ("iptables", "-w", "-I", rule[0], rule[1], rule[2],
                                         "-j", "DROP"))
                        self.run(cmd)
                        self._partition.append(cmd)
        return [c.shell() for c in self._partition]

    def heal(self) -> int:
        """Remove the partition's rules; returns how many."""
        n = 0
        while self._partition:
            cmd = self._partition.pop()
            argv = tuple("-D" if a == "-I" else a for a in cmd.argv)
            self.run(Cmd(cmd.node, argv), check=False)
            n += 1
        return n

    def _restore_routes(self, nodes: tuple[str, ...] | list[str]) -> None:
        """Routes through an interface vanish when it goes down; put them back."""
        for name in nodes:
            for subnet, via in self.plan.routes.get(name, []):
                self.run(Cmd(name, ("ip", "route", "replace", subnet, "via", via)), check=False)

    def delay_line_stats(self) -> dict[str, Any]:
        """What the delay-line process wrote at exit: {"links": {direction: ...}, cpu...}."""
        dl = self.delay_lines
        if dl is None:
            return {}
        if not dl.stats_path.exists():
            return {"error": f"no {dl.stats_path.name}: the delay-line process wrote no "
                             f"counters (exit code {dl.proc.returncode})"}
        try:
            data: dict[str, Any] = json.loads(dl.stats_path.read_text())
        except ValueError as exc:
            return {"error": f"unreadable {dl.stats_path.name}: {exc}"}
        return data

    def stop(self) -> None:
        """Tear down in a fixed order; every step runs even if an earlier one fails.

        NFQUEUE rules go first, so no packet is queued to a delay line that is gone; then
        the delay-line process releases what it holds and exits; then qdiscs, Mininet.
        """
        if self.net is not None:
            try:
                self.heal()
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                log.warning("removing the partition's rules: %s", exc)
            for d in reversed(self._queued):
                try:
                    self.run(shaping.delay_line_rule(d, "-D"), check=False)
                except Exception as exc:  # noqa: BLE001 - teardown must go on
                    log.warning("removing the NFQUEUE rule of %s: %s", d.key, exc)
        if self.delay_lines is not None:
            _stop_process(self.delay_lines.proc, close_stdin=True)
        if self.net is not None:
            for d in self.directions:
                try:
                    if d.shaping.bw_bps is not None or d.shaping.needs_delay_line:
                        self.run(Cmd(d.src, ("tc", "qdisc", "del", "dev", d.src_intf, "root")),
                                 check=False)
                except Exception as exc:  # noqa: BLE001
                    log.warning("removing qdisc on %s: %s", d.src_intf, exc)
            try:
                self.net.stop()
            finally:
                self.net = None


def wait_ready(proc: subprocess.Popen[bytes] | None, log_path: Path, timeout: float,
               what: str) -> None:
    """Wait until a process we started writes 'ready' to its log; raise with the log's
    tail if it exits first or takes longer than `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while b"ready" not in log_path.read_bytes():
        if proc is None or proc.poll() is not None or time.monotonic() > deadline:
            raise EmulationError(f"{what} did not start: "
                                 f"{log_path.read_text(errors='replace')[-800:]}")
        time.sleep(0.02)


def popen(node: Any, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a process in a Mininet node's network namespace, in its own session.

    Mininet's own popen (`mnexec -a PID`) also joins the node shell's mount namespace,
    which resets the root directory: inside a chroot the process would escape it and
    run the outer machine's files. Entering only the network namespace avoids that
    and is all a host needs.
    """
    if not getattr(node, "inNamespace", True):  # switches live in the root namespace
        return node.popen(argv, mncmd=["mnexec", "-d"], **kwargs)
    return node.popen(argv, mncmd=["mnexec", "-d", "nsenter", f"--net=/proc/{node.pid}/ns/net"],
                      **kwargs)


def _stop_process(proc: subprocess.Popen[bytes], close_stdin: bool = False,
                  sig: int = signal.SIGTERM, grace: float = 3.0) -> int | None:
    """Stop a process and its group (Mininet's popen puts each in its own session)."""
    if close_stdin and proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:  # end of input is the polite stop; give it time to flush its stats
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    return proc.returncode


def _ensure_ovs() -> None:
    if subprocess.run(["ovs-vsctl", "--timeout=2", "show"], capture_output=True).returncode == 0:
        return
    if not Path(OVS_CTL).exists():
        raise EmulationError("switch kind 'ovs-user' needs Open vSwitch: apt-get install "
                             "openvswitch-switch")
    p = subprocess.run([OVS_CTL, "start", "--system-id=random"], capture_output=True, text=True)
    if p.returncode != 0:
        raise EmulationError(f"could not start Open vSwitch: {p.stderr.strip()}")


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent
