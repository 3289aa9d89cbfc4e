"""The compiled loop's ABN rewrite on real packets: a lane on a middlebox writes a rate
into the pure ACKs it forwards; an independent dissector (tshark) decodes the option and
finds no bad checksum, and the flow is unharmed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from testbed.config import PROJECT_ROOT

RATE_KBPS = 123456
SHIM = f"""
import json, subprocess, sys, time
sys.path.insert(0, {str(PROJECT_ROOT)!r})
from abn import _nfqloop
loop = _nfqloop.Loop()
lane = loop.add_lane(7, {{"delay_us": 0}}, abn_rate_kbps={RATE_KBPS})
rule = ["iptables", "-w", "-t", "mangle", "-A", "FORWARD", "-p", "tcp", "-j", "NFQUEUE",
        "--queue-num", "7", "--queue-bypass"]
subprocess.run(rule, check=True)
try:
    loop.start(0)
    time.sleep(5)
finally:
    rule[4] = "-D"
    subprocess.run(rule)
    loop.stop()
    print(json.dumps(loop.stats(lane)))
    loop.close()
"""


@pytest.mark.skipif(not shutil.which("tshark"), reason="needs tshark")
def test_rewritten_acks_decode_with_good_checksums(run_experiment, tmp_path) -> None:
    script = tmp_path / "shim.py"
    script.write_text(SHIM)
    run_dir, man = run_experiment({
        "name": "abnrw", "duration": 7,
        "links": {"path": {"bw": "50mbit", "delay": "5ms", "direction": "forward"}},
        "captures": [{"host": "h1", "snaplen": 200}],
        "processes": [
            {"name": "shim", "kind": "command", "host": "mb", "required": True,
             "command": f"{sys.executable} {script}"},
            {"name": "srv", "kind": "iperf3_server", "host": "h2"},
            {"name": "flow", "kind": "iperf3_client", "host": "h1", "server": "h2",
             "start": 1.0, "duration": 3, "congestion": "cubic"},
        ],
    })
    stats = json.loads((run_dir / "logs" / "shim.log").read_text().strip().splitlines()[-1])
    assert stats["abn"]["written"] > 100, stats
    assert stats["verdict_errors"] == 0 and stats["overflow"] == 0, stats
    assert stats["abn"]["malformed_ip"] == 0, stats  # data packets are not "malformed"
    assert stats["abn"]["not_pure_ack"] > 100, stats
    (pcap,) = run_dir.glob("capture_h1_*.pcap")

    def count(filt: str) -> int:
        out = subprocess.run(["tshark", "-r", str(pcap), "-o", "tcp.check_checksum:TRUE",
                              "-o", "ip.check_checksum:TRUE", "-Y", filt, "-T", "fields",
                              "-e", "frame.number"], capture_output=True, text=True, check=True)
        return len(out.stdout.split())

    ours = count("tcp.options.experimental.exid == 0xab4e && tcp.len == 0")
    assert ours >= stats["abn"]["written"] * 0.9, (ours, stats)
    assert count("tcp.options.experimental.exid == 0xab4e && "
                 "(tcp.checksum.status == 0 || ip.checksum.status == 0)") == 0
    # the rate field decodes to what was written (4 bytes after the ExID)
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "tcp.options.experimental.exid",
                          "-T", "fields", "-e", "tcp.options.experimental.data", "-c", "5"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out and all(int(d.replace(":", ""), 16) == RATE_KBPS for d in out), out
    flow = json.loads((run_dir / "logs" / "flow.json").read_text())
    assert flow["end"]["sum_received"]["bits_per_second"] > 30e6  # the flow is unharmed


def test_flow_goes_on_when_the_rewriting_process_dies(run_experiment, tmp_path) -> None:
    # The shim dies (no cleanup, as with SIGKILL) 2 s into a 5-s flow; the NFQUEUE rule's
    # --queue-bypass lets packets through once no one listens on the queue.
    script = tmp_path / "dying_shim.py"
    script.write_text(SHIM.replace("time.sleep(5)", "time.sleep(2); import os; os._exit(9)"))
    run_dir, man = run_experiment({
        "name": "abndie", "duration": 8,
        "processes": [
            {"name": "shim", "kind": "command", "host": "mb",
             "command": f"{sys.executable} {script}"},
            {"name": "srv", "kind": "iperf3_server", "host": "h2"},
            {"name": "flow", "kind": "iperf3_client", "host": "h1", "server": "h2",
             "start": 1.0, "duration": 5, "congestion": "cubic"},
        ],
    })
    flow = json.loads((run_dir / "logs" / "flow.json").read_text())
    server = flow.get("server_output_json", flow)
    late = [i["sum"]["bits_per_second"] for i in server["intervals"] if i["sum"]["start"] >= 3]
    assert late and min(late) > 10e6, late  # still flowing after the shim died
