"""The ABN TCP option and the ACK rewriter, on raw IPv4 packets as NFQUEUE hands them over.

This is the executable reference a compiled per-packet rewriter is tested against, so it
is deterministic and byte-exact, and it never raises on packet bytes: a packet it will
not (or cannot) rewrite comes back as the very same object with an outcome saying why.

The option (RFC 6994 shared experimental kind, 8 bytes):

    kind=253 | len=8 | ExID=0xAB4E (2 bytes) | rate (4 bytes, unsigned, network order)

The rate is in kilobits per second: 32 bits cover 4.29 Tbit/s at 1 kbit/s resolution.
0 is a valid rate (nothing available right now); what a sender does with it is the
sender's business. ExID 0xAB4E ("AB" + ASCII "N") is our own choice, not an IANA
registration (RFC 6994 asks for one before use on the open Internet): testbed use only.

Checksums: a segment captured on veth (or queued with NFQUEUE's F_GSO) may still be
CHECKSUM_PARTIAL, its checksum field holding only the pseudo-header sum, and the queue
cannot tell us which kind we got. So a rewrite always computes the complete TCP checksum
from scratch; incoming checksums are never checked (the kernel has already checked the
IP header checksum before any netfilter hook).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal, NamedTuple

ABN_KIND = 253
ABN_EXID = 0xAB4E
ABN_OPTION_LEN = 8
MAX_RATE_KBPS = 0xFFFF_FFFF
MAX_OPTION_SPACE = 40  # a TCP header is at most 60 bytes (data offset 15)

EOL, NOP = 0, 1
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_MF, _FRAG_OFFSET = 0x2000, 0x1FFF

Outcome = Literal[
    "written",  # the option was appended (changed)
    "replaced",  # an ABN option with our ExID was present; its rate was overwritten (changed)
    "no_room",  # appending 8 bytes would push the TCP header past 60 bytes
    "not_pure_ack",  # SYN/FIN/RST, no ACK flag, or payload: never rewritten
    "not_ipv4_tcp",  # IP version is not 4, or the protocol is not TCP
    "fragment",  # MF set or a fragment offset: the TCP header may not be all here
    "malformed_ip",  # shorter than 20 bytes, IHL < 5, IHL past the end, total length != size
    "malformed_tcp",  # TCP header truncated, or data offset < 5 or past the end
    "malformed_options",  # the option area does not parse, or an ABN option of ours is not 8 long
]
CHANGED: frozenset[str] = frozenset({"written", "replaced"})


class MalformedOptions(ValueError):
    """The TCP option area does not parse; the message says where and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Option(NamedTuple):
    """One TCP option: `offset` into the option area, `length` in bytes (1 for EOL/NOP),
    `data` the bytes after kind and length."""

    kind: int
    offset: int
    length: int
    data: bytes


class Rewrite(NamedTuple):
    """What `write_rate` did: `packet` is the input object itself unless `changed`."""

    packet: bytes
    outcome: Outcome

    @property
    def changed(self) -> bool:
        return self.outcome in CHANGED


class TcpInfo(NamedTuple):
    """What the shim needs to know about an unfragmented, well-formed IPv4/TCP packet."""

    src: str
    sport: int
    dst: str
    dport: int
    flags: int
    payload_len: int
    pure_ack: bool


@dataclass(frozen=True, slots=True)
class _Headers:
    ihl: int  # IP header length in bytes, also where TCP starts
    doff: int  # TCP header length in bytes
    flags: int
    payload_len: int

    @property
    def pure_ack(self) -> bool:
        return bool(self.flags & ACK) and not self.flags & (SYN | FIN | RST) and (
            self.payload_len == 0
        )


def _headers(packet: bytes) -> _Headers | Outcome:
    """Check the IPv4 and TCP headers; return them, or the outcome naming the problem."""
    if len(packet) < 20:
        return "malformed_ip"
    if packet[0] >> 4 != 4:
        return "not_ipv4_tcp"
    ihl = (packet[0] & 0x0F) * 4
    total = (packet[2] << 8) | packet[3]
    if ihl < 20 or ihl > len(packet) or total != len(packet):
        return "malformed_ip"
    if ((packet[6] << 8) | packet[7]) & (_MF | _FRAG_OFFSET):
        return "fragment"
    if packet[9] != 6:
        return "not_ipv4_tcp"
    if len(packet) - ihl < 20:
        return "malformed_tcp"
    doff = (packet[ihl + 12] >> 4) * 4
    if doff < 20 or ihl + doff > len(packet):
        return "malformed_tcp"
    return _Headers(ihl, doff, packet[ihl + 13], len(packet) - ihl - doff)


def parse_tcp_options(raw: bytes) -> list[Option]:
    """Parse a TCP option area (the header bytes after the fixed 20).

    EOL ends the list (it is returned; what follows it is padding and is not read),
    as in the kernel's parser. Only structure is checked, not known kinds' lengths.
    """
    options: list[Option] = []
    off = 0
    while off < len(raw):
        kind = raw[off]
        if kind in (EOL, NOP):
            options.append(Option(kind, off, 1, b""))
            if kind == EOL:
                break
            off += 1
            continue
        if off + 1 >= len(raw):
            raise MalformedOptions(f"option kind {kind} at offset {off} is truncated: no length")
        length = raw[off + 1]
        if length < 2:
            raise MalformedOptions(f"option kind {kind} at offset {off} has length {length} < 2")
        if off + length > len(raw):
            raise MalformedOptions(
                f"option kind {kind} at offset {off} has length {length}, "
                f"past the end of the {len(raw)}-byte option area"
            )
        options.append(Option(kind, off, length, bytes(raw[off + 2 : off + length])))
        off += length
    return options


def _is_ours(option: Option) -> bool:
    return option.kind == ABN_KIND and len(option.data) >= 2 and (
        (option.data[0] << 8) | option.data[1]
    ) == ABN_EXID


def encode_option(rate_kbps: int) -> bytes:
    """The 8 option bytes carrying `rate_kbps`."""
    if not 0 <= rate_kbps <= MAX_RATE_KBPS:
        raise ValueError(f"rate {rate_kbps} kbit/s is outside 0..{MAX_RATE_KBPS}")
    return struct.pack("!BBHI", ABN_KIND, ABN_OPTION_LEN, ABN_EXID, rate_kbps)


def kbps_from_bps(rate_bps: float) -> int:
    """Round an allocation down to whole kbit/s (never promise more than allocated),
    saturating at the option's maximum; negative rates are an error."""
    if not rate_bps >= 0:  # also refuses NaN
        raise ValueError(f"rate {rate_bps} bit/s is not a non-negative number")
    return min(int(rate_bps // 1000), MAX_RATE_KBPS)


def find_rate(packet: bytes) -> int | None:
    """The ABN rate (kbit/s) a packet carries, or None: no option of ours, or a packet
    or option area that does not parse. The first option with our ExID counts."""
    h = _headers(packet)
    if isinstance(h, str):
        return None
    try:
        options = parse_tcp_options(packet[h.ihl + 20 : h.ihl + h.doff])
    except MalformedOptions:
        return None
    for option in options:
        if _is_ours(option):
            if option.length != ABN_OPTION_LEN:
                return None
            return int.from_bytes(option.data[2:6], "big")
    return None


def tcp_info(packet: bytes) -> TcpInfo | None:
    """Addresses, ports, flags and payload size, or None if not well-formed IPv4/TCP."""
    h = _headers(packet)
    if isinstance(h, str):
        return None
    sport, dport = struct.unpack_from("!HH", packet, h.ihl)
    return TcpInfo(
        str(IPv4Address(packet[12:16])), sport, str(IPv4Address(packet[16:20])), dport,
        h.flags, h.payload_len, h.pure_ack,
    )


def is_pure_ack(packet: bytes) -> bool:
    """Unfragmented IPv4/TCP with ACK, without SYN/FIN/RST, and no payload."""
    h = _headers(packet)
    return not isinstance(h, str) and h.pure_ack


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data = bytes(data) + b"\0"
    return _fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def ip_checksum(header: bytes) -> int:
    """The IPv4 header checksum of `header`, its own checksum field counted as zero."""
    return ~_ones_sum(bytes(header[:10]) + b"\0\0" + bytes(header[12:])) & 0xFFFF


def tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """The complete TCP checksum (pseudo-header, header, payload) of `segment`,
    its own checksum field counted as zero. `src` and `dst` are 4-byte addresses."""
    pseudo = bytes(src) + bytes(dst) + struct.pack("!BBH", 0, 6, len(segment))
    body = bytes(segment[:16]) + b"\0\0" + bytes(segment[18:])
    return ~_fold(_ones_sum(pseudo) + _ones_sum(body)) & 0xFFFF


def _new_area(area: bytes, rate_kbps: int) -> tuple[bytes, Outcome]:
    """The rewritten option area, or the input area with the outcome that refuses it.

    Ours present: its rate bytes are overwritten in place (every copy, so no stale
    value survives). Otherwise trailing padding (NOPs after the last real option, EOL
    and everything after it) is dropped, NOPs pad to a 4-byte boundary and our option
    follows, so its rate field is 32-bit aligned and the length stays a multiple of 4.
    """
    try:
        options = parse_tcp_options(area)
    except MalformedOptions:
        return area, "malformed_options"
    ours = [o for o in options if _is_ours(o)]
    if any(o.length != ABN_OPTION_LEN for o in ours):
        return area, "malformed_options"
    option = encode_option(rate_kbps)
    if ours:
        out = bytearray(area)
        for o in ours:
            out[o.offset + 4 : o.offset + 8] = option[4:]
        return bytes(out), "replaced"
    keep = max((o.offset + o.length for o in options if o.kind not in (EOL, NOP)), default=0)
    new = bytes(area[:keep]) + bytes([NOP]) * (-keep % 4) + option
    if len(new) > MAX_OPTION_SPACE:
        return area, "no_room"
    return new, "written"


def write_rate(packet: bytes, rate_kbps: int) -> Rewrite:
    """Put `rate_kbps` into a pure ACK's ABN option, fixing lengths and both checksums.

    Only packet bytes are forgiven: a rate outside 0..MAX_RATE_KBPS is a caller bug and
    raises ValueError. To let the tightest of several middleboxes win, pass
    min(find_rate(packet), yours) yourself; this function overwrites.
    """
    encode_option(rate_kbps)  # validate the rate first, whatever the packet
    h = _headers(packet)
    if isinstance(h, str):
        return Rewrite(packet, h)
    if not h.pure_ack:
        return Rewrite(packet, "not_pure_ack")
    tcp = h.ihl
    area, outcome = _new_area(packet[tcp + 20 : tcp + h.doff], rate_kbps)
    if outcome not in CHANGED:
        return Rewrite(packet, outcome)
    payload = packet[tcp + h.doff :]
    segment = bytearray(packet[tcp : tcp + 20] + area + payload)
    segment[12] = ((20 + len(area)) // 4) << 4 | (segment[12] & 0x0F)
    segment[16:18] = tcp_checksum(packet[12:16], packet[16:20], bytes(segment)).to_bytes(2, "big")
    ip = bytearray(packet[:tcp])
    ip[2:4] = (len(ip) + len(segment)).to_bytes(2, "big")
    ip[10:12] = ip_checksum(bytes(ip)).to_bytes(2, "big")
    return Rewrite(bytes(ip + segment), outcome)


_NAMES = {EOL: "EOL", NOP: "NOP", 2: "MSS", 3: "WS", 4: "SACK_PERM", 5: "SACK", 8: "TS"}


def describe(packet: bytes) -> str:
    """One line for humans: addresses, flags, payload size and options (ABN decoded)."""
    h = _headers(packet)
    if isinstance(h, str):
        return f"<{h}: {len(packet)} bytes>"
    info = tcp_info(packet)
    assert info is not None
    flags = "".join(c for bit, c in zip((FIN, SYN, RST, 0x08, ACK), "FSRPA", strict=True)
                    if info.flags & bit)
    try:
        options = parse_tcp_options(packet[h.ihl + 20 : h.ihl + h.doff])
    except MalformedOptions as exc:
        opts = f"malformed ({exc.reason})"
    else:
        names = []
        for o in options:
            if _is_ours(o) and o.length == ABN_OPTION_LEN:
                names.append(f"ABN {int.from_bytes(o.data[2:6], 'big')} kbit/s")
            else:
                names.append(_NAMES.get(o.kind, f"kind{o.kind}"))
        opts = ",".join(names)
    return (f"{info.src}:{info.sport} > {info.dst}:{info.dport} [{flags}] "
            f"len={info.payload_len} opts=[{opts}]")
