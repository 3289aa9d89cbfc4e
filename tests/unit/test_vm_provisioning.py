"""The two VMs provision the same way (issue 20): the Vagrantfile and ci/vm-check.sh's
QEMU guest both run ci/vm/provision.sh (the stock kernel's shaping modules, then the
README's setup.sh), on the same Debian release with its stock kernel."""

from __future__ import annotations

import re

from testbed.config import PROJECT_ROOT

CI = PROJECT_ROOT / "ci"


def test_vagrant_and_vm_check_share_the_provisioning_script():
    vagrant = (PROJECT_ROOT / "Vagrantfile").read_text()
    provision_lines = re.findall(r'^\s*config\.vm\.provision\s+"shell",\s*inline:\s*"([^"]*)"',
                                 vagrant, re.M)
    assert provision_lines == ["cd /vagrant && ci/vm/provision.sh"]
    guest = (CI / "vm" / "guest.sh").read_text()
    assert re.search(r'^step provision bash "\$share/vm/provision\.sh" /root/chaintwin$',
                     guest, re.M)


def test_provisioning_loads_the_netem_backend_modules_then_runs_setup():
    text = (CI / "vm" / "provision.sh").read_text()
    mods = re.search(r"^for m in ([\w ]+); do$", text, re.M)
    assert mods and {"sch_netem", "sch_fq", "tcp_bbr"} <= set(mods.group(1).split())
    assert text.rstrip().endswith("./setup.sh")


def test_same_debian_release_and_stock_kernel():
    vagrant = (PROJECT_ROOT / "Vagrantfile").read_text()
    box = re.search(r'config\.vm\.box = "debian/(\w+)64"', vagrant)
    script = (CI / "vm-check.sh").read_text()
    suite = re.search(r"^suite=\$\{SUITE:-(\w+)\}$", script, re.M)
    assert box and suite and box.group(1) == suite.group(1) == "bookworm"
    assert "--include=linux-image-amd64," in script


def test_workflow_runs_the_same_script_on_demand():
    wf = (PROJECT_ROOT / ".github" / "workflows" / "ci.yml").read_text()
    job = wf[wf.index("\n  vm-check:"):]
    assert "workflow_dispatch" in wf and "inputs.vm_check" in job
    assert "ci/vm-check.sh" in job
