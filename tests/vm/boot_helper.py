"""A stand-in for an lg process in the orphan tests: boot a VM, report it, then wait to be killed.

    python -m tests.vm.boot_helper IMAGE_JSON RUN_DIR ACCELERATOR (sleep | exec)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lg.vm.api import ExecRequest, VmSpec
from lg.vm.qemu import QemuHypervisor
from tests.vm.conftest import STATE_DIR, ImageFiles


def main() -> None:
    image = ImageFiles.from_json(sys.argv[1])
    spec = VmSpec(image=image, accelerator=sys.argv[3], run_dir=Path(sys.argv[2]))
    with QemuHypervisor(state_dir=STATE_DIR).boot(spec) as vm:
        print(json.dumps({"pid": vm.pid, "run_dir": str(vm.run_dir)}), flush=True)
        if sys.argv[4] == "exec":
            vm.exec(ExecRequest(script="sleep 600"))
        else:
            time.sleep(600)


if __name__ == "__main__":
    main()
