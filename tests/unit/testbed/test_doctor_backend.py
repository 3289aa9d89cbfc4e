"""Which shaping backend `chaintwin doctor --json` reports (issue 20).

First the choice itself, on a faked kernel probe (no root needed): netem where the kernel
takes a netem qdisc, else the userspace delay line where NFQUEUE and the compiled loop
are there, else none. Then this machine's real answer against its kernel's build
config: a kernel built without sch_netem (this project's machines) gets the userspace
line, one with it (Debian's stock kernel, which ci/vm-check.sh boots and asserts the
same inside) gets netem. The real probe needs root; it is skipped otherwise.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import re
from pathlib import Path

import pytest

from testbed import capabilities, cli


def _doctor_json(capsys: pytest.CaptureFixture[str]) -> dict:
    cli.main(["doctor", "--json"])  # exit 1 where Mininet is missing: not what is tested
    return json.loads(capsys.readouterr().out)


def _no_abn_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    # The ABN check registers a congestion control machine-wide; the backend does not
    # depend on it.
    monkeypatch.setattr(capabilities, "_abn_cc_check",
                        lambda root: capabilities.Check(capabilities.ABN_CC, False, "not probed",
                                                        required=False))


@pytest.mark.parametrize("netem, nfqueue, loop, expected", [
    (True, True, True, "netem"),
    (True, False, False, "netem"),
    (False, True, True, "userspace"),
    (False, True, False, None),   # no compiled delay line: no silent fallback
    (False, False, True, None),
])
def test_backend_follows_the_kernel_probe(monkeypatch, capsys, netem, nfqueue, loop, expected):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(capabilities, "_probe_kernel", lambda: {
        "netns": (True, ""), "veth": (True, ""), "htb": (True, ""),
        "netem": (netem, "" if netem else "Error: Specified qdisc kind is unknown."),
        "nfqueue": (nfqueue, "")})
    monkeypatch.setattr(capabilities, "compiled_loop",
                        lambda: (loop, "abn._nfqloop" if loop else "does not import"))
    monkeypatch.setattr(capabilities.ctypes.util, "find_library",
                        lambda name: "libnetfilter_queue.so.1")
    monkeypatch.setattr(capabilities, "_bridge_netfilter_check",
                        lambda root: capabilities.Check("bridged traffic", True, required=False))
    _no_abn_probe(monkeypatch)
    rep = _doctor_json(capsys)
    assert rep["shaping_backend"] == expected
    netem_check = next(c for c in rep["checks"] if c["name"] == "kernel:netem")
    assert netem_check["ok"] is netem and netem_check["required"] is False
    backend_check = next(c for c in rep["checks"] if c["name"] == "delay/jitter/loss backend")
    assert backend_check["ok"] is (expected is not None)


def _kernel_has_netem() -> bool | None:
    """From the running kernel's build config: y, or m with the module file present;
    None when there is no config to read."""
    release = platform.release()
    text = None
    if Path("/proc/config.gz").exists():
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    elif Path(f"/boot/config-{release}").exists():
        text = Path(f"/boot/config-{release}").read_text()
    if text is None:
        return None
    m = re.search(r"^CONFIG_NET_SCH_NETEM=([ym])$", text, re.M)
    if not m:
        return False
    if m.group(1) == "y":
        return True
    return any(Path(f"/lib/modules/{release}").glob("kernel/net/sched/sch_netem.ko*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel probe needs root")
def test_this_machine_reports_the_backend_its_kernel_allows(monkeypatch, capsys):
    has_netem = _kernel_has_netem()
    if has_netem is None:
        pytest.skip("no kernel config (/proc/config.gz, /boot/config-*) to compare with")
    _no_abn_probe(monkeypatch)
    rep = _doctor_json(capsys)
    netem_check = next(c for c in rep["checks"] if c["name"] == "kernel:netem")
    assert netem_check["ok"] is has_netem, netem_check
    if has_netem:
        assert rep["shaping_backend"] == "netem"
    else:  # this project's machines: the userspace delay line, where its parts are there
        ok = {c["name"]: c["ok"] for c in rep["checks"]}
        line = ok["kernel:nfqueue"] and ok["libnetfilter_queue"] and ok["compiled delay line"]
        assert rep["shaping_backend"] == ("userspace" if line else None), rep["checks"]
