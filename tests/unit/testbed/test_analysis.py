"""pcap -> per-flow throughput, on a pcap written here with known content."""

import csv
import socket

import dpkt
import pytest

from testbed import analysis


def write_pcap(path, packets):
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for ts, src, dst, sport, dport, payload in packets:
            tcp = dpkt.tcp.TCP(sport=sport, dport=dport, data=b"x" * payload)
            ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=tcp)
            ip.len = 20 + 20 + payload
            eth = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
            w.writepkt(bytes(eth), ts=ts)


def test_bins_flows_and_names(tmp_path):
    t0 = 1000.0
    pkts = []
    for i in range(50):  # flow A: 1000 payload bytes every 10 ms for 0.5 s
        pkts.append((t0 + 0.005 + 0.01 * i, "10.0.1.1", "10.0.2.2", 40000, 5201, 1000))
        pkts.append((t0 + 0.01 * i + 0.001, "10.0.2.2", "10.0.1.1", 5201, 40000, 0))  # ACK
    pkts.append((t0 + 0.3, "10.0.1.2", "10.0.2.3", 40001, 5202, 1))  # trickle: dropped
    pkts.sort()
    write_pcap(tmp_path / "c.pcap", pkts)
    caps = [{"name": "r1:r1-eth0", "file": "c.pcap"}]
    analysis.write_throughput(tmp_path, caps, t0, {("10.0.2.2", 5201): "cubic"})
    rows = list(csv.DictReader(open(tmp_path / analysis.THROUGHPUT_CSV)))
    assert {r["flow"] for r in rows} == {"cubic"}
    assert len(rows) == 5  # 0.5 s in 100 ms bins
    for r in rows:
        assert int(r["payload_bytes"]) == 10 * 1000
        assert float(r["goodput_mbps"]) == pytest.approx(10 * 1000 * 8 / 0.1 / 1e6)
        assert int(r["ip_bytes"]) == 10 * 1040
    (flow,) = list(csv.DictReader(open(tmp_path / analysis.FLOWS_CSV)))
    assert flow["src"] == "10.0.1.1" and flow["dport"] == "5201"


def test_not_a_pcap_is_a_clear_error(tmp_path):
    (tmp_path / "bad.pcap").write_bytes(b"this is not a capture file at all, no")
    with pytest.raises(ValueError, match="not a pcap"):
        analysis.flow_bins(tmp_path / "bad.pcap", 0)
