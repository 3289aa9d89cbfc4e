"""Typed schema of topology YAML files (topologies/*.yaml).

A topology is hosts with roles, switches and links; link shaping parameters are kept
as the user wrote them (so a config round-trips through YAML and `--set` overrides)
and parsed on access.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from testbed import units

Role = Literal["endpoint", "middlebox", "router", "node", "client", "twin"]
FORWARDING_ROLES = ("middlebox", "router")
"""A middlebox is a router that may also run an ABN shim; both forward by default."""
SwitchKind = Literal["bridge", "ovs-user"]

# Linux interface names hold 15 characters; Mininet names them "<node>-eth<N>".
MAX_NODE_NAME = 9


def _check(parser):  # type: ignore[no-untyped-def]
    def check(v):  # type: ignore[no-untyped-def]
        if v is not None:
            parser(v)
        return v

    return AfterValidator(check)


RateValue = Annotated[str | float | int | None, _check(units.parse_rate_bps)]
DelayValue = Annotated[str | float | int | None, _check(units.parse_seconds)]
PercentValue = Annotated[str | float | int | None, _check(units.parse_percent)]
QueueValue = Annotated[str | int | None, _check(units.parse_queue)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Shaping(Strict):
    """What a link does to packets. Delay, jitter and loss act in each shaped direction."""

    bw: RateValue = None
    """Rate limit (HTB). Bare numbers are Mbit/s; any rate, also above 1 Gbit/s."""
    delay: DelayValue = None
    """One-way delay added in each shaped direction. Bare numbers are ms."""
    jitter: DelayValue = None
    """Per-packet delay variation: uniform in [delay - jitter, delay + jitter], like netem."""
    loss: PercentValue = None
    """Random loss per packet, '1%' or a bare number of percent."""
    queue: QueueValue = None
    """Bottleneck queue: packets (pfifo) as an integer, or bytes (bfifo) as '1MB'."""
    jitter_reorder: bool | None = None
    """True (default): each packet draws its own delay, so packets reorder, as netem does.
    False: a packet never leaves before the one queued ahead of it (delays only stretch)."""
    granularity: Literal["auto", "packet", "segment"] | None = None
    """Userspace emulator only. 'packet': delay/drop each MTU packet (GSO segments are
    split by the kernel before queueing); 'segment': whole GSO segments (NFQUEUE F_GSO),
    ~30x fewer packets to handle but a drop or a reorder hits up to ~44 packets at once.
    'auto' (default): 'segment' for a fixed delay, 'packet' when jitter or loss is set."""

    @property
    def bw_bps(self) -> float | None:
        return None if self.bw is None else units.parse_rate_bps(self.bw)

    @property
    def delay_s(self) -> float:
        return 0.0 if self.delay is None else units.parse_seconds(self.delay)

    @property
    def jitter_s(self) -> float:
        return 0.0 if self.jitter is None else units.parse_seconds(self.jitter)

    @property
    def loss_p(self) -> float:
        return 0.0 if self.loss is None else units.parse_percent(self.loss)

    @property
    def queue_limit(self) -> tuple[str, int] | None:
        return None if self.queue is None else units.parse_queue(self.queue)

    @property
    def reorders(self) -> bool:
        return True if self.jitter_reorder is None else self.jitter_reorder

    @property
    def needs_delay_line(self) -> bool:
        return self.delay_s > 0 or self.jitter_s > 0 or self.loss_p > 0

    def merged(self, override: Shaping) -> Self:
        """This shaping (of the same model: a LinkSpec stays a LinkSpec) with every
        field that `override` sets replaced."""
        data = self.model_dump()
        data.update(override.model_dump(exclude_none=True))
        return type(self).model_validate(data)


class AbnSpec(Strict):
    """An ABN shim on this host (a middlebox): it governs `link`, whose capacity it shares
    out among the TCP flows it forwards every `period` seconds (abn/shim.py)."""

    link: str
    """The link whose capacity the shim allocates (one of this host's links)."""
    capacity: str | float
    """C, e.g. '40mbit' (bare numbers are Mbit/s); at most the link's rate."""
    period: float = Field(default=0.1, ge=0.001, le=10)
    """T, seconds."""
    allocator: str = "average"
    idle: float = Field(default=1.0, gt=0)
    """Seconds without data after which a flow is done."""
    max_flows: int = Field(default=4096, ge=1, le=1 << 22)
    queue_drain: float = Field(default=0.5, ge=0, le=60)
    """Seconds in which a standing queue on the link should drain: each period the shim
    takes backlog / queue_drain off C_r (the paper's middlebox reads its queue status).
    0: ignore the queue."""
    hints_port: int | None = Field(default=None, ge=1024, le=65535)
    """UDP port on which senders declare their flows' sizes and deadlines (abn/hints.py;
    slim_client `declare`); default: none, flows are only observed."""
    guaranteed: float = Field(default=0.25, ge=0, lt=1)
    """Fraction of C_r every sending flow gets in equal parts before the allocator
    divides the rest (abn/shim.py `with_floor`): a rate computed from the bytes the
    middlebox saw never starves a flow's last bytes. No effect on `average`."""
    policy: str | None = None
    """With allocator `dqn`: the trained policy directory (abn/dqn_policy.py), relative
    to the project root unless absolute."""

    @property
    def capacity_bps(self) -> float:
        return units.parse_rate_bps(self.capacity)

    @model_validator(mode="after")
    def _sane(self) -> AbnSpec:
        if not self.capacity_bps > 0:
            raise ValueError(f"abn.capacity must be positive, got {self.capacity!r}")
        if self.idle < self.period:
            raise ValueError(f"abn.idle ({self.idle} s) is shorter than abn.period")
        if self.allocator == "dqn" or self.policy is not None:
            if self.allocator != "dqn" or self.policy is None:
                raise ValueError("abn.policy goes with allocator 'dqn', which needs one "
                                 f"(allocator {self.allocator!r}, policy {self.policy!r})")
            from abn.dqn_policy import load_policy

            load_policy(str(self.policy_path))  # a missing or stale policy is named here
            return self
        from abn.allocators import get_allocator

        get_allocator(self.allocator)  # names the known allocators if unknown
        return self

    @property
    def policy_path(self) -> str | None:
        if self.policy is None:
            return None
        from pathlib import Path

        path = Path(self.policy)
        root = Path(__file__).resolve().parent.parent
        return str(path if path.is_absolute() else root / path)


class HostSpec(Strict):
    role: Role = "endpoint"
    forward: bool | None = None
    """Route packets between its interfaces. Default: true for middleboxes and routers."""
    sysctls: dict[str, int | str] = {}
    """Per-namespace kernel settings for this host (testbed.sysctls.KNOWN lists them),
    applied after the testbed's own defaults."""
    abn: AbnSpec | None = None
    """Run the ABN middlebox shim here (the host must forward)."""

    @field_validator("sysctls")
    @classmethod
    def _known_sysctls(cls, v: dict[str, int | str]) -> dict[str, int | str]:
        from testbed import sysctls

        return dict(sysctls.check(dict(v), "sysctls"))

    @property
    def forwards(self) -> bool:
        return self.role in FORWARDING_ROLES if self.forward is None else self.forward


class SwitchSpec(Strict):
    kind: SwitchKind | None = None
    """Linux bridge (default) or Open vSwitch with the userspace datapath."""


class LinkSpec(Shaping):
    name: str | None = None
    """Used by experiments to refer to the link; default '<a>-<b>'."""
    ends: tuple[str, str]
    direction: Literal["both", "forward", "reverse"] = "both"
    """Which directions are shaped: forward is ends[0] -> ends[1]."""

    @property
    def link_name(self) -> str:
        return self.name or f"{self.ends[0]}-{self.ends[1]}"

    def shaping(self) -> Shaping:
        return Shaping.model_validate(self.model_dump(include=set(Shaping.model_fields)))


class Topology(Strict):
    name: str
    description: str = ""
    switch: SwitchKind = "bridge"
    subnet_base: str = Field(default="10.0.0.0/8", pattern=r"^10\.0\.0\.0/8$")
    """Addresses are 10.<segment / 256>.<segment % 256>.<host>/24, one /24 per L2 segment."""
    hosts: dict[str, HostSpec]
    switches: dict[str, SwitchSpec] = {}
    links: list[LinkSpec]

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        for name in [*self.hosts, *self.switches]:
            if not name.isidentifier() or len(name) > MAX_NODE_NAME:
                raise ValueError(
                    f"node name {name!r} must be an identifier of at most {MAX_NODE_NAME} "
                    "characters (Linux interface names are limited to 15)"
                )
        both = set(self.hosts) & set(self.switches)
        if both:
            raise ValueError(f"names used for both a host and a switch: {sorted(both)}")
        nodes = set(self.hosts) | set(self.switches)
        seen: set[str] = set()
        for i, link in enumerate(self.links):
            a, b = link.ends
            for end in (a, b):
                if end not in nodes:
                    raise ValueError(
                        f"links[{i}]: unknown node {end!r}; known: {sorted(nodes)}"
                    )
            if a == b:
                raise ValueError(f"links[{i}]: a link needs two different ends, got {a!r} twice")
            if link.link_name in seen:
                raise ValueError(f"links[{i}]: duplicate link name {link.link_name!r}")
            seen.add(link.link_name)
            if link.needs_delay_line and a in self.switches and b in self.switches:
                raise ValueError(
                    f"links[{i}] ({link.link_name}): delay/jitter/loss need a host at one end "
                    "(the userspace emulator runs in a host's namespace); put them on a link "
                    "to a host or middlebox"
                )
        for name, spec in self.hosts.items():
            if spec.abn is None:
                continue
            if not spec.forwards:
                raise ValueError(f"hosts.{name}.abn: {name} does not forward packets "
                                 f"(role {spec.role!r}); the shim runs on a middlebox or "
                                 "router")
            governed = next((x for x in self.links if x.link_name == spec.abn.link), None)
            if governed is None or name not in governed.ends:
                raise ValueError(f"hosts.{name}.abn.link: {spec.abn.link!r} is not a link of "
                                 f"{name}")
            if governed.bw_bps is not None and spec.abn.capacity_bps > governed.bw_bps:
                raise ValueError(f"hosts.{name}.abn.capacity ({spec.abn.capacity}) is above "
                                 f"the rate of link {governed.link_name} ({governed.bw})")
        linked = {end for link in self.links for end in link.ends}
        lonely = sorted(set(self.hosts) - linked)
        if lonely:
            raise ValueError(f"hosts without any link: {lonely}")
        return self

    def link(self, name: str) -> LinkSpec:
        for link in self.links:
            if link.link_name == name:
                return link
        raise KeyError(name)
