"""`python tests/runner/lg_on_fake.py VMS_DIR lg ARGS...`: the real `lg` command line (lg.cli.main, its signal
handling and exit codes included) with every hypervisor backend replaced by lg.testing.fake.FakeHypervisor,
whose VMs are directories under VMS_DIR and whose commands run on the host. For tests of how a live `lg run`
process is stopped, without booting VMs. Nothing untrusted may run through it."""

from __future__ import annotations

import sys
from pathlib import Path

from lg.cli.main import main
from lg.model import ProjectConfig
from lg.testing.fake import FakeHypervisor
from lg.vm import registry
from lg.vm.api import Hypervisor

if __name__ == "__main__":
    vms = Path(sys.argv[1])

    def fake(config: ProjectConfig) -> Hypervisor:
        return FakeHypervisor(vms)

    for name in list(registry.HYPERVISORS):
        registry.HYPERVISORS[name] = fake
    main(sys.argv[2:])
