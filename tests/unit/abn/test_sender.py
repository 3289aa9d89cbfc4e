"""The ABN sender's user-space half without root: how processes are put in the senders'
cgroup, how the loader's counters are read, and when the role is wanted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from abn import sender
from testbed.experiment_schema import Experiment
from testbed.roles import abn_sender


def test_wrapped_process_joins_the_cgroup_before_it_runs(tmp_path: Path) -> None:
    cg = sender.SenderCgroup(tmp_path)
    (tmp_path / "cgroup.procs").write_text("")
    argv = cg.wrap(["sh", "-c", 'echo "pid=$$ args=$1 $2"', "x", "a b", "c"])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    pid = (tmp_path / "cgroup.procs").read_text().strip()
    # the pid written is the pid that then runs the command (exec, not a child), and
    # arguments with spaces arrive intact
    assert out.strip() == f"pid={pid} args=a b c"


def test_wrapped_process_does_not_run_outside_the_cgroup(tmp_path: Path) -> None:
    cg = sender.SenderCgroup(tmp_path / "gone")  # cgroup.procs cannot be written
    p = subprocess.run(cg.wrap(["touch", str(tmp_path / "ran")]), capture_output=True)
    assert p.returncode != 0 and not (tmp_path / "ran").exists()


def test_counters_are_the_last_complete_record(tmp_path: Path) -> None:
    rec = tmp_path / "sender.jsonl"
    first = {"event": "stats", **{k: 1 for k in sender.COUNTERS}}
    last = {"event": "final", **{k: i for i, k in enumerate(sender.COUNTERS)}}
    rec.write_text(json.dumps({"event": "ready"}) + "\n" + json.dumps(first) + "\n"
                   + json.dumps(last) + "\n" + '{"event": "sta')  # a line being written
    loader = sender.AbnSender(sender.SenderCgroup(tmp_path), rec)
    assert loader.counters() == {k: i for i, k in enumerate(sender.COUNTERS)}


def test_counter_names_match_the_bpf_program_and_loader() -> None:
    src = (sender.BPF_DIR / "abn_loader.c").read_text()
    names = src.split("COUNTERS[] = {", 1)[1].split("};", 1)[0]
    assert [n.strip().strip('"') for n in names.replace("\n", "").split(",") if n.strip()] \
        == list(sender.COUNTERS)
    enum = (sender.BPF_DIR / "abn.bpf.c").read_text().split("enum abn_counter {", 1)[1]
    enum = enum.split("C_N", 1)[0]
    assert [ln.strip().split(",")[0] for ln in enum.splitlines() if ln.strip().startswith("C_")] \
        == ["C_" + n.upper() for n in sender.COUNTERS]


def _exp(**kw: object) -> Experiment:
    return Experiment.model_validate({"name": "x", "topology": "t.yaml", **kw})


def test_role_is_built_only_when_traffic_uses_abn(tmp_path: Path) -> None:
    srv = {"name": "s", "kind": "iperf3_server", "host": "h2"}
    cubic = {"name": "c", "kind": "iperf3_client", "host": "h1", "server": "h2"}
    assert not abn_sender.uses_abn(_exp(processes=[srv, cubic]))
    assert abn_sender.uses_abn(_exp(processes=[srv, {**cubic, "congestion": "abn"}]))
    assert abn_sender.uses_abn(_exp(sysctls={"h1": {"net.ipv4.tcp_congestion_control": "abn"}}))
    assert abn_sender.build(None, _exp(processes=[srv, cubic]), tmp_path) == []  # type: ignore[arg-type]


def test_missing_build_names_the_fix(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sender, "OBJECT", tmp_path / "abn.bpf.o")
    ok, why = sender.built()
    assert not ok and "abn.bpf.o" in why and "setup.sh" in why
    ok, why = sender.probe()
    assert not ok and "setup.sh" in why
