"""A fake Firecracker `jailer`: checks its command line against the facts of docs/jailer.md (v1.16.1, in
tests/vm/contracts/firecracker-v1.16.1.json), lays out the jail as the document does (<chroot base>/<exec file
name>/<id>/root, the exec file copied in, <exec file name>.pid), and starts the exec file there.

Stood in, and recorded in the journal instead: the chroot (the fake VMM is told where its `/` is through
$LG_FAKE_JAIL_ROOT), the uid/gid drop, the cgroup and the pid namespace (with --new-pid-ns the jailer still
forks, writes the child's pid and exits, as the real one's parent does). This host's cgroups are v1 and the fake
firecracker is a Python script that could not run inside an empty chroot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.vm.fakevmm.contract import Journal, load_contract

FLAGS = ("--daemonize", "--new-pid-ns")
REPEATABLE = ("--cgroup", "--resource-limit")


def parse(argv: list[str]) -> tuple[dict[str, list[str]], list[str], list[str]]:
    options: dict[str, list[str]] = {}
    problems: list[str] = []
    facts = load_contract("firecracker-v1.16.1.json")["jailer"]
    known = set(facts["required_options"]) | set(facts["optional_options"])
    rest: list[str] = []
    pending = list(argv)
    while pending:
        word = pending.pop(0)
        if word == "--":
            rest = pending
            break
        if word not in known:
            problems.append(f"unknown option {word!r}")
            continue
        if word in FLAGS:
            options[word] = []
            continue
        if not pending:
            problems.append(f"{word} needs a value")
            break
        value = pending.pop(0)
        if word in options and word not in REPEATABLE:
            problems.append(f"{word} given twice")
        options.setdefault(word, []).append(value)
    problems += [f"required option {name} missing" for name in facts["required_options"] if name not in options]
    return options, rest, problems


def check(options: dict[str, list[str]]) -> list[str]:
    problems = []
    vm_id = options.get("--id", [""])[0]
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", vm_id):
        problems.append(f"--id {vm_id!r}: alphanumeric characters and hyphens, at most 64")
    for name in ("--uid", "--gid"):
        if name in options and not options[name][0].isdigit():
            problems.append(f"{name} {options[name][0]!r} is not a number")
    if options.get("--cgroup-version", ["1"])[0] not in ("1", "2"):
        problems.append(f"--cgroup-version {options['--cgroup-version'][0]!r}: 1 or 2")
    for value in options.get("--cgroup", []):
        if not re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_.]+=.+", value):
            problems.append(f"--cgroup {value!r} is not <file>=<value>")
    for value in options.get("--resource-limit", []):
        if not re.fullmatch(r"(fsize|no-file)=\d+", value):
            problems.append(f"--resource-limit {value!r}: fsize=<n> or no-file=<n>")
    exec_file = Path(options.get("--exec-file", [""])[0])
    if not exec_file.is_absolute() or not exec_file.is_file():
        problems.append(f"--exec-file {exec_file} is not an existing absolute path")
    return problems


def main(argv: list[str]) -> int:
    journal = Journal()
    options, rest, problems = parse(argv)
    if not problems:
        problems = check(options)
    if problems:
        journal.record(argv=["jailer", *argv], violations=problems)
        print("jailer: " + "; ".join(problems), file=sys.stderr)
        return 1
    vm_id, exec_file = options["--id"][0], Path(options["--exec-file"][0])
    root = Path(options.get("--chroot-base-dir", ["/srv/jailer"])[0]) / exec_file.name / vm_id / "root"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(exec_file, root / exec_file.name)
    journal.record(argv=["jailer", *argv], jail={
        "root": str(root), "uid": int(options["--uid"][0]), "gid": int(options["--gid"][0]),
        "cgroup_version": options.get("--cgroup-version", ["1"])[0], "cgroups": options.get("--cgroup", []),
        "parent_cgroup": options.get("--parent-cgroup", [exec_file.name])[0],
        "new_pid_ns": "--new-pid-ns" in options,
        "stood_in": "no chroot, uid/gid drop, cgroup or pid namespace was made: the fake only lays out the jail"})
    env = {"PATH": os.environ.get("PATH", ""), "LG_FAKE_JAIL_ROOT": str(root),
           **{k: v for k, v in os.environ.items() if k in ("LG_FAKE_VMM_JOURNAL", "LG_GUEST_BIN", "PYTHONPATH")}}
    command = [str(root / exec_file.name), "--id", vm_id, *rest]
    if "--new-pid-ns" in options:
        child = subprocess.Popen(command, cwd=root, env=env, start_new_session=True)
        (root / f"{exec_file.name}.pid").write_text(str(child.pid))
        return 0
    (root / f"{exec_file.name}.pid").write_text(str(os.getpid()))
    os.chdir(root)
    os.execve(command[0], command, env)  # noqa: S606 - the jailer execs its target, as the real one does
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
