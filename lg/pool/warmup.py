"""Run, once, what every step does, in scratch space that is removed afterwards.

In a template before it is saved, this loads the agent's lazily imported modules (tar, hashing) and compiles
the profile's seccomp filter and AppArmor policy, so every clone starts with them. In each restored VM, while it
waits idle in the pool, it warms QEMU's translation cache: under TCG a restored VM translates the guest code it
runs afresh, which made a step's first exec cost 0.2-0.3 s instead of 0.02-0.1 s. It is lg's own fixed routine,
never a step's code, and it leaves nothing behind but a warm cache.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from lg.vm.api import ExecRequest, Vm

ROUTINE = 2  # part of a template's digest: a template holds what this routine left in the guest
SCRATCH = "/tmp/lg-warmup"  # noqa: S108 - a path inside the guest


def exercise(vm: Vm, warmup: ExecRequest | None) -> bool:
    """Put files, run a shell that writes one under `warmup`'s confinement and identity (the step profile's),
    list the changes, fetch the new file, clean up: the path of a step, in the same order. False if the
    confined shell failed."""
    with tempfile.TemporaryDirectory(prefix="lg-warmup-") as scratch:
        for index in range(4):  # the per-file code of a workspace put, more than once
            Path(scratch, f"in{index}.txt").write_text("warm-up\n")
        owner = (warmup.uid, warmup.gid if warmup.gid is not None else warmup.uid) if (
            warmup is not None and warmup.uid is not None) else None
        vm.put_tree(Path(scratch), SCRATCH, owner=owner)
        ok = True
        if warmup is not None:
            shell = replace(warmup, argv=("/bin/sh", "-e", "-c", "echo warm > out.txt"), cwd=SCRATCH,
                            mkdirs=(SCRATCH,))
            ok = vm.exec(shell).ok
        changed = [change.path for change in vm.changes(SCRATCH)] or ["in0.txt"]
        vm.get_paths(SCRATCH, changed, Path(scratch, "back"))
        vm.exec(ExecRequest(argv=("/bin/rm", "-rf", SCRATCH), timeout=60))
    return ok
