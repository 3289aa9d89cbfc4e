"""The ABN sender (BPF `abn` congestion control + option parser, the `abn_sender` role):
a sender paces at the rate the middlebox's shim writes into its ACKs, as `ss -ti` shows,
and nothing of it is left after the run (the leftovers check of `run_experiment`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from abn import sender

from .reliable import until_reliable

pytestmark = pytest.mark.skipif(not sender.built()[0], reason=sender.built()[1])

TOPO = {
    "name": "abnline",
    "hosts": {"h1": {}, "h2": {},
              "mb": {"role": "middlebox",
                     "abn": {"link": "path", "capacity": "40mbit", "period": 0.1}}},
    "links": [{"name": "left", "ends": ["h1", "mb"]},
              {"name": "path", "ends": ["mb", "h2"], "bw": "100mbit", "delay": "10ms",
               "direction": "forward"}],
}
WIRE_TO_PAYLOAD = 1448 / (1448 + 32 + 34)  # mss / (mss + TCP with timestamps + IPv4 + Ethernet)


def _pacing(ss_file: Path, dport: int) -> list[float]:
    """pacing_rate (bit/s) of every abn socket to `dport` in an `ss -tin` dump."""
    text = ss_file.read_text()
    out = []
    for block in re.split(r"\n(?=ESTAB)", text):
        if re.search(rf":{dport}\s*$", block.split("\n")[0]) and " abn " in block:
            m = re.search(r"pacing_rate (\d+)bps", block)
            if m and "bytes_acked:" in block and int(re.search(r"bytes_acked:(\d+)",
                                                                block).group(1)) > 1e6:
                out.append(float(m.group(1)))
    return out


def test_sender_paces_at_the_notified_rate(run_experiment) -> None:
    until_reliable("abnsender", lambda attempt: _run(run_experiment, attempt), _check)


def _run(run_experiment, attempt: int):  # type: ignore[no-untyped-def]
    ss = "ss -tin dst {ip:h2}"
    run_dir, man = run_experiment({
        "name": f"abnsender{attempt}", "duration": 11,
        "processes": [
            {"name": "srv1", "kind": "iperf3_server", "host": "h2", "port": 5201},
            {"name": "srv2", "kind": "iperf3_server", "host": "h2", "port": 5202},
            {"name": "f1", "kind": "iperf3_client", "host": "h1", "server": "h2",
             "port": 5201, "start": 1.0, "duration": 9, "congestion": "abn"},
            {"name": "f2", "kind": "iperf3_client", "host": "h1", "server": "h2",
             "port": 5202, "start": 5.5, "duration": 4.5, "congestion": "abn"},
            {"name": "ss_alone", "kind": "command", "host": "h1", "start": 4.5,
             "command": f"{ss} > {{run_dir}}/ss_alone.txt"},
            {"name": "ss_shared", "kind": "command", "host": "h1", "start": 8.5,
             "command": f"{ss} > {{run_dir}}/ss_shared.txt"},
        ],
    }, TOPO)
    assert man["status"] in ("ok", "unreliable"), man.get("error")
    _check_pacing(run_dir, man)
    return run_dir, man


def _check_pacing(run_dir, man) -> None:  # type: ignore[no-untyped-def]
    """What the sender did with the notified rate: host noise cannot change it, so a
    miss here fails at once, in any run."""
    role = man["roles"]["abn_sender"]
    c = role["counters"]
    assert c["acks_with_rate"] > 1000 and c["cc_paced"] > 1000, c
    assert c["cc_init"] >= 2 and role["returncode"] == 0, role

    recs = [json.loads(x) for x in (run_dir / "abn" / "mb.jsonl").read_text().splitlines()]

    def notified(t_rel: float, dport: int) -> float:
        t = man["timeline_t0_unix"] + t_rel
        rec = min(recs, key=lambda r: abs(r["t"] - t))
        rates = [f["rate_bps"] for f in rec["flows"] if f["key"][3] == dport]
        assert rates, (t_rel, dport, rec)
        return rates[0]

    alone = _pacing(run_dir / "ss_alone.txt", 5201)
    assert len(alone) == 1, (run_dir / "ss_alone.txt").read_text()
    want = notified(4.5, 5201) * WIRE_TO_PAYLOAD
    assert alone[0] == pytest.approx(want, rel=0.05)
    assert 0.8 * 40e6 * WIRE_TO_PAYLOAD < alone[0] < 40e6  # its share is all of C_r

    shared = {p: _pacing(run_dir / "ss_shared.txt", p) for p in (5201, 5202)}
    for port, rates in shared.items():  # the second flow halves the first's rate
        assert len(rates) == 1, (port, (run_dir / "ss_shared.txt").read_text())
        assert rates[0] == pytest.approx(notified(8.5, port) * WIRE_TO_PAYLOAD, rel=0.05)
        assert rates[0] == pytest.approx(alone[0] / 2, rel=0.1)
    assert _goodput(run_dir, "f1") < 40 * WIRE_TO_PAYLOAD  # a paced flow never overruns


def _goodput(run_dir, flow: str) -> float:  # type: ignore[no-untyped-def]
    summary = (run_dir / "iperf3_summary.csv").read_text().splitlines()
    return float(next(line.split(",") for line in summary if line.startswith(f"{flow},"))[3])


def _check(run_dir, man) -> None:  # type: ignore[no-untyped-def]
    """What the receiver got: a paced flow fills its share when the delay line keeps up
    (a late delay line lowers it, so this one is re-measured)."""
    assert 0.7 * 40 * WIRE_TO_PAYLOAD < _goodput(run_dir, "f1"), (
        (run_dir / "iperf3_summary.csv").read_text())
