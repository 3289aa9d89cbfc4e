"""Typed schema of experiment YAML files (experiments/*.yaml).

An experiment names a topology, overrides link shaping by link name, starts processes
on hosts, scripts a timeline of events and asks for packet captures. `mode: simulation`
experiments instead name a registered simulation job (see testbed.jobs) and its params.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from testbed.topology_schema import AbnSpec, Shaping, Strict

MAX_SECONDS = 7 * 24 * 3600.0
"""No time in an experiment may exceed a week (and .inf or 1e12 are refused: issue 18)."""
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]


class ProcessBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    host: str
    start: Seconds = 0.0
    """Seconds after the timeline starts."""
    stop: Seconds | None = None
    """Seconds after the timeline starts; default: runs until it exits or the run ends."""
    required: bool | None = None
    """If true, the run fails when the process exits non-zero. Default depends on kind."""

    def must_succeed(self) -> bool:
        return bool(self.required)


class Iperf3Server(ProcessBase):
    kind: Literal["iperf3_server"]
    port: int = Field(default=5201, ge=1024, le=65535)


class Iperf3Client(ProcessBase):
    kind: Literal["iperf3_client"]
    server: str
    """Host name of the iperf3 server."""
    port: int = Field(default=5201, ge=1024, le=65535)
    congestion: str = "cubic"
    """TCP congestion control (see `chaintwin doctor` for those available)."""
    duration: Seconds | None = None
    """Seconds of traffic; default: until the end of the run."""
    bitrate: str | None = None
    """iperf3 --bitrate (for example '50M'); default unlimited."""
    parallel: int = Field(default=1, ge=1, le=64)
    reverse: bool = False

    def must_succeed(self) -> bool:
        return True if self.required is None else self.required


class Ping(ProcessBase):
    kind: Literal["ping"]
    target: str
    """Host name to ping."""
    count: int = Field(default=10, ge=1)
    interval: Seconds = 0.2
    size: int = Field(default=56, ge=0, le=65000)

    def must_succeed(self) -> bool:
        return False if self.required is None else self.required


class Command(ProcessBase):
    kind: Literal["command"]
    command: str
    """Shell command; '{ip:HOST}' is replaced by HOST's first address, '{run_dir}' by the
    run folder."""


class SlimServer(ProcessBase):
    """The receiving end of slim flows (abn/slim.py)."""

    kind: Literal["slim_server"]
    port: int = Field(default=6100, ge=1024, le=65535)


class SlimClient(ProcessBase):
    """Slim flows (abn/slim.py): bursts of short transfers, each a new TCP connection with
    a deadline, completion times streamed to slim_<name>.csv in the run folder."""

    kind: Literal["slim_client"]
    server: str
    """Host name of the slim_server."""
    port: int = Field(default=6100, ge=1024, le=65535)
    size: int = Field(ge=1, le=1 << 32)
    """Bytes per transfer."""
    deadline: Annotated[float, Field(gt=0, le=3600)]
    """Seconds a transfer may take (connect to the server's answer)."""
    burst: int = Field(default=4, ge=1, le=256)
    """Transfers started together (4: the paper's PBFT validators)."""
    interval: Annotated[float, Field(gt=0)] = 1.0
    """Seconds between bursts."""
    count: int = Field(default=10, ge=1)
    """Bursts."""
    congestion: str | None = None
    """TCP congestion control of the transfers; default the host's."""
    declare: str | None = None
    """Host whose ABN shim takes flow declarations (its `abn.hints_port`): each transfer
    declares its size and deadline there first (abn/hints.py)."""

    def must_succeed(self) -> bool:
        return True if self.required is None else self.required


_NUM = r"\d+(\.\d+)?"
_SCHEDULE = rf"^{_NUM}:{_NUM}(,{_NUM}:{_NUM})*$"


class ChainClient(ProcessBase):
    """The blockchain workload client (nodes/client.py): signed transactions at a rate."""

    kind: Literal["chain_client"]
    tps: Annotated[float, Field(gt=0)] | None = None
    """Constant offered load, transactions per second."""
    schedule: str | None = Field(default=None, pattern=_SCHEDULE)
    """Load that changes over time: '0:50,10:200' = from t seconds on, this TPS."""
    duration: Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
    """Seconds of sending."""
    size: int = Field(default=100, ge=0)
    """Payload bytes per transaction."""
    drain: Seconds = 5.0
    """Seconds to wait for the last commits after sending."""
    targets: list[str] | None = None
    """Validator hosts to submit to; default all."""

    def must_succeed(self) -> bool:
        return True if self.required is None else self.required

    @model_validator(mode="after")
    def _one_rate(self) -> ChainClient:
        if (self.tps is None) == (self.schedule is None):
            raise ValueError("give exactly one of 'tps' and 'schedule'")
        return self


Process = Annotated[Iperf3Server | Iperf3Client | Ping | Command | ChainClient
                    | SlimServer | SlimClient,
                    Field(discriminator="kind")]


class ChainSpec(Strict):
    """A permissioned chain: one validator (nodes/) on each listed host."""

    validators: list[str] = Field(min_length=1)
    """Hosts that run a validator node, in validator order (v0, v1, ...)."""
    protocol: Literal["pbft", "bigfoot"] = "pbft"
    """Consensus protocol at genesis."""
    port: int = Field(default=7000, ge=1024, le=65535)
    timing: dict[str, Any] = {}
    """Overrides of the genesis timing (round_timeout, fast_path_timeout, ...; see
    nodes/config.py Timing), checked by the nodes' own schema."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    congestion: Literal["cubic", "bbr", "reno", "abn"] | None = None
    """Congestion control of the validators' sockets (default: the host's). `abn` runs
    them inside the ABN sender's cgroup, so they pace to the shim's notified rates."""


class LinkOverride(Shaping):
    """Shaping of a topology link as this experiment wants it."""

    direction: Literal["both", "forward", "reverse"] | None = None


class EventBase(Strict):
    at: Seconds


class SetLink(EventBase, Shaping):
    action: Literal["set_link"]
    link: str


class LinkState(EventBase):
    action: Literal["link_down", "link_up"]
    link: str


class HostState(EventBase):
    action: Literal["host_down", "host_up"]
    host: str


class ProcessControl(EventBase):
    action: Literal["start", "stop"]
    process: str


class SwitchProtocol(EventBase):
    """The twin's signed protocol-switch command, ordered through consensus."""

    action: Literal["switch_protocol"]
    protocol: Literal["pbft", "bigfoot"]
    host: str
    """Host that sends the command (it holds the twin key)."""
    target: str | None = None
    """Validator host that receives it; default the first validator."""
    height: int | None = Field(default=None, ge=1)
    """Activation height; default as soon as the chain agrees (nodes' reconfig_delay)."""


class ValidatorFault(EventBase):
    """`crash`: SIGKILL the validator on `host` (no goodbye, nothing flushed that was not
    already). `restart`: start it again on its own ledger and keys."""

    action: Literal["crash", "restart"]
    host: str


class Slow(EventBase, Shaping):
    """Reshape every link of `host` in one go (e.g. {bw: 3mbit, delay: 150ms})."""

    action: Literal["slow"]
    host: str


class Partition(EventBase):
    """Split the network: hosts in different groups stop hearing each other (packets
    dropped both ways, as a cut cable); hosts in no group still reach everyone. Until
    `heal` (one partition at a time)."""

    action: Literal["partition"]
    groups: list[list[str]] = Field(min_length=2)

    @field_validator("groups")
    @classmethod
    def _disjoint(cls, v: list[list[str]]) -> list[list[str]]:
        seen: set[str] = set()
        for g in v:
            if not g:
                raise ValueError("a partition group is empty")
            dup = seen & set(g)
            if dup:
                raise ValueError(f"hosts {sorted(dup)} are in two partition groups")
            seen |= set(g)
        return v


class Heal(EventBase):
    """End the partition: every host hears every other again."""

    action: Literal["heal"]


FAULT_EVENTS = (ValidatorFault, Slow, Partition, Heal)

Event = Annotated[SetLink | LinkState | HostState | ProcessControl | SwitchProtocol
                  | ValidatorFault | Slow | Partition | Heal,
                  Field(discriminator="action")]


class Capture(Strict):
    host: str
    intf: str | None = None
    """Interface name (e.g. 'r1-eth0'); default: every interface of the host."""
    snaplen: int = Field(default=128, ge=64, le=65535)
    """Headers are enough for throughput tables; keeps tcpdump up with Gbit/s."""
    filter: str = "tcp or icmp"


class SimulationJob(Strict):
    job: str
    """A registered simulation job (testbed.jobs), e.g. 'twin.fig4a'."""
    params: dict[str, Any] = {}
    """Checked by the job's own typed settings before anything runs."""


class Experiment(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    variant: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    mode: Literal["emulation", "simulation"] = "emulation"
    seed: int = 1
    duration: Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)] = 10.0
    """Seconds of timeline; processes still running then are stopped."""
    topology: str | None = None
    """Path of the topology YAML, relative to the experiment file (or the project root)."""
    links: dict[str, LinkOverride] = {}
    """Shaping overrides by link name, applied over the topology's values."""
    processes: list[Process] = []
    timeline: list[Event] = []
    captures: list[Capture] = []
    simulation: SimulationJob | None = None
    chain: ChainSpec | None = None
    """Blockchain validators started on hosts before the timeline begins."""
    abn: dict[str, AbnSpec | None] = {}
    """ABN shims by host name, over the topology's (`null` removes one): e.g.
    {mb: {link: path, capacity: 40mbit}}."""
    sysctls: dict[str, dict[str, int | str]] = {}
    """Per-host kernel settings by host name (testbed.sysctls.KNOWN), over the
    topology's: e.g. {h1: {net.ipv4.tcp_recovery: 0}}."""
    until_done: bool = False
    """End the run early once every process except servers has exited and no event is
    left (duration is then the upper bound)."""

    @field_validator("sysctls")
    @classmethod
    def _known_sysctls(cls, v: dict[str, dict[str, int | str]]) -> dict[str, dict[str, int | str]]:
        from testbed import sysctls

        return {host: dict(sysctls.check(dict(kv), f"sysctls.{host}")) for host, kv in v.items()}

    def _check_fault_order(self) -> None:
        """crash before restart per validator; partition and heal alternate."""
        down: set[str] = set()
        split = False
        for i, ev in sorted(enumerate(self.timeline), key=lambda x: (x[1].at, x[0])):
            if isinstance(ev, ValidatorFault):
                if ev.action == "crash" and ev.host in down:
                    raise ValueError(f"timeline[{i}]: {ev.host} is crashed already")
                if ev.action == "restart" and ev.host not in down:
                    raise ValueError(f"timeline[{i}]: restart of {ev.host}, which was not "
                                     "crashed before")
                (down.add if ev.action == "crash" else down.discard)(ev.host)
            elif isinstance(ev, Partition):
                if split:
                    raise ValueError(f"timeline[{i}]: a partition is in place already "
                                     "(heal it first)")
                split = True
            elif isinstance(ev, Heal):
                if not split:
                    raise ValueError(f"timeline[{i}]: heal without a partition before it")
                split = False

    @model_validator(mode="after")
    def _mode_fields(self) -> Experiment:
        if self.mode == "emulation" and self.topology is None:
            raise ValueError("mode 'emulation' needs a 'topology' (path to a topology YAML)")
        if self.mode == "simulation" and self.simulation is None:
            raise ValueError("mode 'simulation' needs a 'simulation' section with a 'job'")
        names = [p.name for p in self.processes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate process names: {dup}")
        for i, ev in enumerate(self.timeline):
            if ev.at > self.duration:
                raise ValueError(
                    f"timeline[{i}]: at={ev.at} s is after the run's duration ({self.duration} s)"
                )
            if isinstance(ev, ProcessControl) and ev.process not in names:
                raise ValueError(f"timeline[{i}]: unknown process {ev.process!r}")
            if isinstance(ev, SwitchProtocol) and self.chain is None:
                raise ValueError(f"timeline[{i}]: switch_protocol needs a 'chain' section")
            if isinstance(ev, ValidatorFault) and (
                    self.chain is None or ev.host not in self.chain.validators):
                raise ValueError(f"timeline[{i}]: {ev.action} names {ev.host!r}, which runs "
                                 "no validator (chain.validators)")
        self._check_fault_order()
        for i, p in enumerate(self.processes):
            if p.start > self.duration:
                raise ValueError(f"processes[{i}] ({p.name}): start={p.start} s is after the "
                                 f"run's duration ({self.duration} s)")
            if isinstance(p, ChainClient) and self.chain is None:
                raise ValueError(f"processes[{i}]: chain_client needs a 'chain' section")
        return self
