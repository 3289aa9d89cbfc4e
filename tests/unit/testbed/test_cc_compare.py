"""The scheme comparison's numbers from a sender-side pcap with known answers: RTT by
Karn's rule, retransmitted bytes, D-SACKed (spurious) bytes; which runs qualify."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import dpkt
import pytest

from testbed import cc_compare

C, S, PORT = "10.0.1.1", "10.0.2.2", 5201


def _frame(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, payload: int,
           opts: bytes = b"") -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=dpkt.tcp.TH_ACK,
                       opts=opts, data=b"x" * payload)
    tcp.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=tcp)
    ip.len = 20 + len(bytes(tcp))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\x00" * 6, data=ip))


def _sack(*blocks: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack("!II", a, b) for a, b in blocks)
    return b"\x01\x01" + bytes([5, 2 + len(body)]) + body


def _write(path: Path, packets: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for ts, frame in sorted(packets, key=lambda p: p[0]):
            w.writepkt(frame, ts=ts)


def test_rtt_retransmissions_and_spurious_ones(tmp_path: Path) -> None:
    base, seg, pkts = 4_294_000_000, 1000, []  # sequence numbers wrap during the flow
    for i in range(20):
        seq = (base + i * seg) & 0xFFFFFFFF
        pkts.append((1.0 + i * 0.01, _frame(C, S, 40000, PORT, seq, 1, seg)))
        end = (seq + seg) & 0xFFFFFFFF
        if i != 5:  # segment 5's first ACK is lost: it is sent again
            pkts.append((1.0 + i * 0.01 + 0.050, _frame(S, C, PORT, 40000, 1, end, 0)))
    seq5 = (base + 5 * seg) & 0xFFFFFFFF
    pkts.append((1.3, _frame(C, S, 40000, PORT, seq5, 1, seg)))  # the resend
    # the receiver had it already: its ACK reports the duplicate in a D-SACK block
    top = (base + 20 * seg) & 0xFFFFFFFF
    pkts.append((1.35, _frame(S, C, PORT, 40000, 1, top, 0,
                              _sack((seq5, (seq5 + seg) & 0xFFFFFFFF)))))
    pkts.append((1.36, _frame(C, S, 40001, 5999, 0, 1, 500)))  # another flow: ignored
    pcap = tmp_path / "s.pcap"
    _write(pcap, pkts)
    v = cc_compare.scan_sender(pcap, C, S, PORT, 0, 10)
    assert len(v.rtt_ms) == 19 and all(r == pytest.approx(50, abs=0.01) for r in v.rtt_ms)
    assert v.retrans_bytes == seg and v.dsack_bytes == seg
    assert v.data_bytes == 21 * seg and v.mss == seg
    assert cc_compare.scan_sender(pcap, C, S, PORT, 1.045, 1.115).data_bytes == 7 * seg


def test_dsack_detection_follows_rfc_2883() -> None:
    ack = 10_000
    assert cc_compare._dsack_bytes(_sack((8000, 9000)), ack) == 1000  # below the ACK
    assert cc_compare._dsack_bytes(_sack((12000, 12500), (11000, 14000)), ack) == 500  # inside
    assert cc_compare._dsack_bytes(_sack((12000, 13000), (15000, 16000)), ack) == 0  # SACK
    assert cc_compare._dsack_bytes(b"\x01\x01\x08\x0a" + b"\x00" * 8, ack) == 0  # timestamps
    for bad in (b"\x05", b"\x05\x00", b"\x05\x0a\x00", b"\x01" * 5, b"\x05\x01\x05"):
        assert cc_compare._dsack_bytes(bad, ack) == 0  # malformed: no crash, nothing


def test_only_runs_comparing_schemes_with_both_ends_captured_qualify() -> None:
    def man(ccs: list[str], captures: list[str]) -> dict:
        procs = [{"kind": "iperf3_client", "name": f"c{i}", "host": "e1", "server": "e3",
                  "port": 5201 + i, "congestion": cc, "start": i * 10, "duration": 5}
                 for i, cc in enumerate(ccs)]
        return {"experiment": {"duration": 30, "processes": procs,
                               "captures": [{"host": h} for h in captures]}}

    assert [s.congestion for s in cc_compare.schemes(man(["cubic", "abn"], ["e1", "e3"]))] \
        == ["cubic", "abn"]
    assert cc_compare.schemes(man(["cubic", "cubic"], ["e1", "e3"])) == []
    assert cc_compare.schemes(man(["cubic", "abn"], ["e1"])) == []


def _fake_run(root: Path, seed: int, abn: float, bbr: float, infl: tuple[float, float]) -> Path:
    d = root / f"run{seed}"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"seed": seed, "status": "ok"}))
    cols = ["scheme", "congestion", *cc_compare.METRICS]
    rows = [["bbr", "bbr", bbr, bbr, bbr / 300, bbr * 0.95, 100, infl[0], 10, 9],
            ["abn", "abn", abn, abn, abn / 300, abn * 0.95, 90, infl[1], 5, 1]]
    (d / cc_compare.SUMMARY_CSV).write_text(
        "\n".join(",".join(map(str, r)) for r in [cols, *rows]) + "\n")
    return d


def test_aggregate_pairs_by_seed_and_says_when_a_difference_is_not_significant(
        tmp_path: Path) -> None:
    # ABN beats BBR by ~10% in every seed: significant; the RTT difference flips sign
    runs = [_fake_run(tmp_path, 1, 290, 262, (40, 35)), _fake_run(tmp_path, 2, 295, 270, (30, 38)),
            _fake_run(tmp_path, 3, 288, 259, (42, 37))]
    agg = cc_compare.aggregate(runs)
    assert agg["seeds"] == [1, 2, 3]
    assert agg["schemes"]["abn"]["wire_mbps"]["mean"] == pytest.approx(291)
    (pair,) = agg["paired"]
    assert (pair["a"], pair["b"]) == ("abn", "bbr")
    assert pair["throughput_ratio"]["significant"] and pair["a_faster_in"] == 3
    assert pair["throughput_ratio"]["mean"] == pytest.approx(
        (290 / 262 + 295 / 270 + 288 / 259) / 3)
    assert not pair["p95_inflation_diff_ms"]["significant"]
    text = cc_compare.render(agg)
    assert "NOT significant" in text and "abn vs bbr" in text
    with pytest.raises(ValueError, match="share a seed"):
        cc_compare.aggregate([*runs, runs[0]])
