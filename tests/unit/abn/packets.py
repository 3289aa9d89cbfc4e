"""Test packets built with dpkt, and checksum checks that do not use abn's own code."""

from __future__ import annotations

import socket
import struct

import dpkt

from abn.options import ACK, FIN, RST, SYN

__all__ = ["ACK", "FIN", "RST", "SYN", "build", "partial", "assert_well_formed", "ref_sum"]

TS = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)  # NOP NOP timestamps (12 bytes)


def sack(blocks: int) -> bytes:
    """A SACK option with `blocks` edges pairs (2 + 8n bytes)."""
    return bytes([5, 2 + 8 * blocks]) + b"".join(struct.pack("!II", i, i + 1)
                                                  for i in range(blocks))


def build(opts: bytes = TS, flags: int = ACK, payload: bytes = b"", ip_opts: bytes = b"",
          src: str = "10.0.0.2", dst: str = "10.0.0.1", sport: int = 5201,
          dport: int = 40000, mf: int = 0, frag_offset: int = 0, proto: int = 6) -> bytes:
    """An IPv4 packet with correct checksums, computed by dpkt; `opts` is the raw TCP
    option area and must be a multiple of 4 bytes."""
    assert len(opts) % 4 == 0 and len(ip_opts) % 4 == 0
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=0x01020304, ack=0x0A0B0C0D,
                       flags=flags, win=501, opts=opts, data=payload)
    tcp.off = 5 + len(opts) // 4
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=63,
                    id=0x1234, df=1, mf=mf, offset=frag_offset, opts=ip_opts,
                    data=tcp)
    ip.hl = 5 + len(ip_opts) // 4
    return bytes(ip)


def ref_sum(data: bytes) -> int:
    """Ones' complement sum of 16-bit words, written the long way."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] * 256 + data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(packet: bytes) -> bytes:
    ihl = (packet[0] & 15) * 4
    return packet[12:20] + bytes([0, 6]) + struct.pack("!H", len(packet) - ihl)


def partial(packet: bytes) -> bytes:
    """The packet as a CHECKSUM_PARTIAL skb holds it: the TCP checksum field carries
    the (uncomplemented) pseudo-header sum only."""
    ihl = (packet[0] & 15) * 4
    out = bytearray(packet)
    out[ihl + 16 : ihl + 18] = struct.pack("!H", ref_sum(pseudo(packet)))
    return bytes(out)


def assert_well_formed(packet: bytes) -> None:
    """IP and TCP checksums verify (reference sum and dpkt agree), lengths consistent."""
    ihl = (packet[0] & 15) * 4
    assert ihl >= 20 and struct.unpack("!H", packet[2:4])[0] == len(packet)
    assert ref_sum(packet[:ihl]) == 0xFFFF, "IP header checksum does not verify"
    assert ref_sum(pseudo(packet) + packet[ihl:]) == 0xFFFF, "TCP checksum does not verify"
    doff = (packet[ihl + 12] >> 4) * 4
    assert 20 <= doff <= 60 and ihl + doff <= len(packet)
    # dpkt, independently: recompute both checksums from zero and compare
    ip = dpkt.ip.IP(packet)
    sums = (ip.sum, ip.data.sum)
    ip.sum = 0
    ip.data.sum = 0
    again = dpkt.ip.IP(bytes(ip))
    assert (again.sum, again.data.sum) == sums
