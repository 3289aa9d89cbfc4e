"""A host's sysctls from the experiment are in force in its namespace, and only there."""

from __future__ import annotations


def test_experiment_sysctls_apply_per_host(run_experiment) -> None:
    show = "sysctl -n net.ipv4.tcp_recovery net.ipv4.tcp_reordering"
    run_dir, man = run_experiment({
        "name": "sysctls", "duration": 3, "until_done": True,
        "sysctls": {"h1": {"net.ipv4.tcp_recovery": 0, "net.ipv4.tcp_reordering": 300}},
        "processes": [{"name": "on_h1", "kind": "command", "host": "h1", "command": show},
                      {"name": "on_h2", "kind": "command", "host": "h2", "command": show}],
    })
    h1 = (run_dir / "logs" / "on_h1.log").read_text().split()
    h2 = (run_dir / "logs" / "on_h2.log").read_text().split()
    assert h1 == ["0", "300"]
    assert h2 != h1 and h2[1] != "300"  # h2 keeps the kernel's defaults
    assert any(c["cmd"].startswith("sysctl -q -w net.ipv4.tcp_recovery=0")
               and c["node"] == "h1" for c in man["commands"])
