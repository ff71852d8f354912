"""Run, once, what every step does, in scratch space that is removed afterwards.

In a template before it is saved, this loads the agent's lazily imported modules (tar, hashing) and compiles
the profile's seccomp filter and AppArmor policy, so every clone starts with them. In each restored VM, while it
waits idle in the pool, it warms QEMU's translation cache: under TCG a restored VM translates the guest code it
runs afresh, which made a step's first exec cost 0.2-0.3 s instead of 0.02-0.1 s. It is lg's own fixed routine,
never a step's code, and it leaves nothing behind but a warm cache.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lg.vm.api import ExecRequest, Vm

SCRATCH = "/tmp/lg-warmup"  # noqa: S108 - a path inside the guest


def exercise(vm: Vm, warmup: ExecRequest | None) -> bool:
    """Put a file, run `warmup` (the step profile's confined no-op), list the changes, fetch the file, clean
    up. False if `warmup` failed."""
    with tempfile.TemporaryDirectory(prefix="lg-warmup-") as scratch:
        Path(scratch, "in.txt").write_text("warm-up\n")
        vm.put_tree(Path(scratch), SCRATCH)
        ok = vm.exec(warmup).ok if warmup is not None else True
        vm.changes(SCRATCH)
        vm.get_paths(SCRATCH, ["in.txt"], Path(scratch, "back"))
        vm.exec(ExecRequest(argv=("/bin/rm", "-rf", SCRATCH), timeout=60))
    return ok
