"""Confining one command in the guest before it runs: cgroup v2 limits, capability bounding set, no_new_privs,
and the switch to the step's uid/gid, in that order (each needs the privileges the next one takes away).

Runs inside the guest agent (stdlib only). The agent works out the setup (limits written to the cgroup, the
capabilities to drop, the seccomp filter compiled to BPF) and spawns the command through a small helper
(confine_exec.c, started with vfork), which makes the system calls as root and only then execs the command as
the step's user: a command never runs a single instruction with more than its profile allows.
Afterwards the agent reads the child's /proc status to report what the kernel actually enforces, and the
cgroup's event counters to say whether a limit was hit. Whatever cannot be enforced refuses the command.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time

from lg.guest.protocol import ErrorCode, ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"
STEP_PARENT = "lg"  # every confined command gets /sys/fs/cgroup/lg/cmd-<request id>
CONTROLLERS = ("cpu", "memory", "pids")
IO_KEYS = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}
WORKSPACE = "/workspace"
CPU_PERIOD_US = 100_000

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # index = capability number (linux/capability.h)


class Confinement:
    __slots__ = ("apparmor", "cpu_percent", "io", "io_optional", "io_status", "keep_caps", "memory_bytes",
                 "no_new_privs", "pids", "read_only_paths", "seccomp", "tmpfs")

    def __init__(self, keep_caps: list[str], no_new_privs: bool, pids: int | None, memory_bytes: int | None,
                 cpu_percent: int | None, seccomp: dict[str, Any] | None = None,
                 apparmor: dict[str, str] | None = None) -> None:
        self.apparmor = apparmor  # {"name", "text", "digest"}: loaded by load_apparmor, entered at exec
        self.keep_caps, self.no_new_privs = keep_caps, no_new_privs
        self.pids, self.memory_bytes, self.cpu_percent = pids, memory_bytes, cpu_percent
        self.seccomp = seccomp  # {"default": [action, errno], "rules": [{names, action, args}]} (host-validated)
        self.io: dict[str, int] = {}  # read_bps, write_bps, read_iops, write_iops: io.max on the workspace's disk
        self.io_optional = False
        self.io_status: str | None = None  # what was applied, for the step record
        self.read_only_paths: list[str] = []
        self.tmpfs: list[str] = []


def parse(body: dict[str, Any]) -> Confinement | None:
    raw = body.get("confine")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "confine must be an object")
    keep = raw.get("keep_caps", [])
    if not isinstance(keep, list) or any(name not in CAPABILITIES for name in keep):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"keep_caps: unknown capability in {keep!r}")
    limits = [raw.get(key) for key in ("pids", "memory_bytes", "cpu_percent")]
    if any(value is not None and (not isinstance(value, int) or value <= 0) for value in limits):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "cgroup limits must be positive integers")
    seccomp = raw.get("seccomp")
    if seccomp is not None and not (isinstance(seccomp, dict) and isinstance(seccomp.get("rules"), list)):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "seccomp must be a compiled filter")
    apparmor = raw.get("apparmor")
    if apparmor is not None and not (isinstance(apparmor, dict)
                                     and all(isinstance(apparmor.get(k), str) for k in ("name", "text", "digest"))):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "apparmor must have name, text and digest")
    pids, memory_bytes, cpu_percent = limits
    confinement = Confinement(keep, bool(raw.get("no_new_privs", True)), pids, memory_bytes, cpu_percent, seccomp,
                              apparmor)
    io = raw.get("io", {})
    if not isinstance(io, dict) or any(key not in IO_KEYS or not isinstance(value, int) or value <= 0
                                       for key, value in io.items()):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"io: unknown key or bad value in {io!r}")
    confinement.io, confinement.io_optional = io, bool(raw.get("io_optional", False))
    for key in ("read_only_paths", "tmpfs"):
        paths = raw.get(key, [])
        if not isinstance(paths, list) or any(not isinstance(path, str) or not path.startswith("/") or "\0" in path
                                              for path in paths):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{key} must be absolute paths")
        setattr(confinement, key, paths)
    return confinement


# --- the cgroup --------------------------------------------------------------------------------------------


_parents_ready: set[str] = set()


def create_cgroup(name: str, confinement: Confinement) -> str:
    """A fresh cgroup for one command with its limits written; refuses (ProtocolError) when cgroup v2 with the
    needed controllers is not available, since then the limits could not be enforced."""
    if not os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        raise ProtocolError(ErrorCode.FAILED, "cgroup v2 is not mounted in the guest: limits cannot be enforced")
    parent = os.path.join(CGROUP_ROOT, STEP_PARENT)
    if parent not in _parents_ready:  # once per agent: nothing a confined command can do undoes it
        _enable_controllers(CGROUP_ROOT)
        os.makedirs(parent, exist_ok=True)
        _enable_controllers(parent)
        _parents_ready.add(parent)
    path = os.path.join(parent, name)
    os.mkdir(path)
    try:
        if confinement.pids is not None:
            _write(path, "pids.max", str(confinement.pids))
        if confinement.memory_bytes is not None:
            _write(path, "memory.max", str(confinement.memory_bytes))
            with contextlib.suppress(OSError):  # no swap in our guests; where there is, do not let it hide a hog
                _write(path, "memory.swap.max", "0")
        if confinement.cpu_percent is not None:
            _write(path, "cpu.max", f"{CPU_PERIOD_US * confinement.cpu_percent // 100} {CPU_PERIOD_US}")
        if confinement.io:
            confinement.io_status = _limit_io(path, confinement)
    except OSError as problem:
        remove_cgroup(path)
        raise ProtocolError(ErrorCode.FAILED, f"cannot set the command's cgroup limits: {problem}") from problem
    return path


def _enable_controllers(path: str, controllers: tuple[str, ...] = CONTROLLERS) -> None:
    available = set(_read(path, "cgroup.controllers").split())
    missing = [name for name in controllers if name not in available]
    if missing:
        raise ProtocolError(ErrorCode.FAILED, f"cgroup controllers {missing} are not available in the guest kernel")
    enabled = set(_read(path, "cgroup.subtree_control").split())
    wanted = [f"+{name}" for name in controllers if name not in enabled]
    if wanted:
        _write(path, "cgroup.subtree_control", " ".join(wanted))


def _limit_io(path: str, confinement: Confinement) -> str:
    """io.max for the disk that holds the workspace. An in-memory workspace (initramfs images) has no disk to
    throttle: its writes are bounded by memory.max instead, and the record says so."""
    device = os.stat(WORKSPACE if os.path.isdir(WORKSPACE) else "/").st_dev
    if os.major(device) == 0:
        return "not applicable: the workspace is in memory (its writes count against memory.max)"
    try:
        for directory in (CGROUP_ROOT, os.path.dirname(path)):
            _enable_controllers(directory, ("io",))
        limits = " ".join(f"{IO_KEYS[key]}={value}" for key, value in sorted(confinement.io.items()))
        _write(path, "io.max", f"{os.major(device)}:{os.minor(device)} {limits}")
        return _read(path, "io.max").strip() or "io.max not applied"
    except (OSError, ProtocolError) as problem:
        if confinement.io_optional:
            return f"not enforced (optional): {problem}"
        raise OSError(getattr(problem, "errno", 0) or 0, f"io limits cannot be enforced: {problem}") from problem


def limit_events(path: str) -> dict[str, int]:
    """How often the command hit its limits: OOM kills, and forks refused by pids.max."""
    events: dict[str, int] = {}
    for file, key, name in (("memory.events", "oom_kill", "oom_kills"), ("pids.events", "max", "forks_refused")):
        with contextlib.suppress(OSError, ValueError):
            for line in _read(path, file).splitlines():
                field, _, value = line.partition(" ")
                if field == key:
                    events[name] = int(value)
    return events


def remove_cgroup(path: str) -> None:
    """Kill whatever is left in the cgroup (background jobs that escaped the process group) and remove it."""
    with contextlib.suppress(OSError):
        _write(path, "cgroup.kill", "1")
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)  # processes are still exiting


# --- the command's own setup, made by the helper (lg-confine-exec) ---------------------------------------

HELPER = "/opt/lg/bin/lg-confine-exec"  # compiled from confine_exec.c when the image is built


def helper_argv(confinement: Confinement, cgroup: str, uid: int | None, gid: int | None, status_fd: int,
                seccomp_fd: int | None) -> list[str]:
    """The helper's options (see confine_exec.c), everything it needs worked out here, in the agent: the
    helper only makes the system calls, in the order that matters (cgroup and capabilities while still root,
    then the step's identity, then no_new_privs). Refuses when the image has no helper: unconfined is not
    an option."""
    if not os.access(HELPER, os.X_OK):
        raise ProtocolError(ErrorCode.FAILED, f"the confinement helper {HELPER} is not in the guest image: "
                                              "cannot confine (rebuild the image)")
    keep = {CAPABILITIES.index(name) for name in confinement.keep_caps}
    drop = [str(number) for number in range(_last_cap() + 1) if number not in keep]
    argv = [HELPER, f"--status-fd={status_fd}", f"--cgroup-procs={os.path.join(cgroup, 'cgroup.procs')}"]
    if drop:
        argv.append(f"--drop-caps={','.join(drop)}")
    if confinement.apparmor is not None:  # entered at exec: the helper itself runs unconfined
        argv += [f"--apparmor-attr={_attr_path('exec')}", f"--apparmor-exec=exec {confinement.apparmor['name']}"]
    argv += [f"--tmpfs={path}" for path in confinement.tmpfs]
    argv += [f"--read-only={path}" for path in confinement.read_only_paths]
    if seccomp_fd is not None:
        argv.append(f"--seccomp-fd={seccomp_fd}")
    if gid is not None:
        argv.append(f"--gid={gid}")
    if uid is not None:
        argv.append(f"--uid={uid}")
    if confinement.no_new_privs:
        argv.append("--no-new-privs")
    return argv


class SetupFailed(OSError):
    """The helper could not confine the command (exit 126): reported as "cannot execute", never as "not
    found", whatever the errno (a bind mount of a missing path fails with ENOENT too)."""


def helper_failure(report: bytes, exit_code: int | None) -> OSError:
    """The helper's "<errno> <what>: <reason>" as the OSError the agent reports: FileNotFoundError (127)
    only when the command itself was not found."""
    code, _, message = report.decode(errors="replace").partition(" ")
    try:
        number = int(code)
    except ValueError:
        number, message = 0, report.decode(errors="replace")
    message = message.strip() or "the confinement helper failed"
    return OSError(number, message) if exit_code == 127 else SetupFailed(number, message)


def mounts_seen(pid: int, confinement: Confinement) -> dict[str, str]:
    """How the command's read-only paths and tmpfs mounts look from inside it (its /proc/PID/mountinfo)."""
    wanted = set(confinement.read_only_paths) | set(confinement.tmpfs)
    seen: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in _read(f"/proc/{pid}", "mountinfo").splitlines():
            fields = line.split()
            mount_point, options = fields[4], fields[5]
            if mount_point in wanted:
                kind = line.split(" - ", 1)[1].split()[0] if " - " in line else "?"
                seen[mount_point] = f"{kind} {'ro' if 'ro' in options.split(',') else 'rw'}"
    return {path: seen.get(path, "NOT mounted") for path in sorted(wanted)}


def report(pid: int, confinement: Confinement) -> dict[str, Any]:
    """What beyond /proc status the step record shows: io limits, mounts."""
    extra: dict[str, Any] = {}
    if confinement.io:
        extra["io"] = confinement.io_status
    if confinement.read_only_paths or confinement.tmpfs:
        extra["mounts"] = mounts_seen(pid, confinement)
    return extra


# --- AppArmor, through apparmor_parser ----------------------------------------------------------------------

APPARMOR_FS = "/sys/kernel/security/apparmor"
APPARMOR_PARSER = "/sbin/apparmor_parser"
_loaded_apparmor: set[str] = set()


def load_apparmor(profile: dict[str, str]) -> None:
    """Compile and load the profile into the guest kernel (once per digest). Refuses when AppArmor is not
    enabled in the guest: the step must not run believing it is confined."""
    if profile["digest"] in _loaded_apparmor:
        return
    if not os.path.isdir(APPARMOR_FS):
        raise ProtocolError(ErrorCode.FAILED, "AppArmor is not enabled in the guest kernel: cannot confine")
    parser = next((p for p in (APPARMOR_PARSER, "/usr/sbin/apparmor_parser") if os.path.exists(p)), None)
    if parser is None:
        raise ProtocolError(ErrorCode.FAILED, "apparmor_parser is not in the guest image: cannot confine")
    import subprocess  # noqa: PLC0415

    done = subprocess.run([parser, "--replace", "--skip-cache", "--quiet"], input=profile["text"].encode(),
                          capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise ProtocolError(ErrorCode.FAILED, f"apparmor_parser could not load {profile['name']}: {message}")
    _loaded_apparmor.add(profile["digest"])


def _attr_path(name: str) -> str:
    """The AppArmor attribute file of a process (the helper's own, through /proc/self): the per-LSM one
    where the kernel has it. Refuses when there is none: the profile could not be entered."""
    for path in (f"/proc/self/attr/apparmor/{name}", f"/proc/self/attr/{name}"):
        if os.path.exists(path):
            return path
    raise ProtocolError(ErrorCode.FAILED, f"no AppArmor {name} attribute in /proc/self/attr: cannot confine")


# --- seccomp, through libseccomp (the library container runtimes use) --------------------------------------

SCMP_ACTIONS = {"SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_KILL_THREAD": 0x00000000, "SCMP_ACT_KILL": 0x00000000,
                "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000}
SCMP_ACT_ERRNO = 0x00050000
SCMP_OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
                  "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}


class ScmpArgCmp(ctypes.Structure):
    _fields_ = (("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64))


def _scmp_action(action: list[Any]) -> int:
    name, errno = action
    return SCMP_ACT_ERRNO | (int(errno) & 0xFFFF) if name == "SCMP_ACT_ERRNO" else SCMP_ACTIONS[name]


_compiled_filters: dict[str, bytes] = {}  # BPF programs by filter text: libseccomp runs once per profile


def seccomp_program(compiled: dict[str, Any]) -> bytes:
    """The filter as a BPF program, compiled by libseccomp in the agent (once per filter, since building it
    rule by rule costs about 0.1 s under TCG) and loaded by the helper in each command before it execs. A syscall
    the guest's libseccomp does not know on this architecture cannot be called here either: skipped."""
    import json  # noqa: PLC0415

    cache_key = json.dumps(compiled, sort_keys=True)
    program = _compiled_filters.get(cache_key)
    if program is None:
        program = _compile(compiled)
        _compiled_filters[cache_key] = program
    return program


def _compile(compiled: dict[str, Any]) -> bytes:
    library = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    library.seccomp_init.restype = ctypes.c_void_p
    library.seccomp_init.argtypes = [ctypes.c_uint32]
    library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    library.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(ScmpArgCmp)]
    library.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    library.seccomp_release.argtypes = [ctypes.c_void_p]
    default = _scmp_action(compiled["default"])
    context = library.seccomp_init(default)
    if not context:
        raise OSError(0, "seccomp_init failed")
    try:
        for rule in compiled["rules"]:
            if _scmp_action(rule["action"]) == default:
                continue  # libseccomp refuses a rule that only restates the default
            args = (ScmpArgCmp * max(1, len(rule["args"])))(
                *[ScmpArgCmp(index, SCMP_OPERATORS[op], a, b) for index, op, a, b in rule["args"]])
            for name in rule["names"]:
                number = library.seccomp_syscall_resolve_name(name.encode())
                if number < 0:
                    continue
                status = library.seccomp_rule_add_array(context, _scmp_action(rule["action"]), number,
                                                        len(rule["args"]), args)
                if status < 0:
                    raise OSError(-status, f"seccomp rule for {name}: {os.strerror(-status)}")
        memory = os.memfd_create("lg-seccomp", os.MFD_CLOEXEC)
        try:
            status = library.seccomp_export_bpf(context, memory)
            if status < 0:
                raise OSError(-status, f"seccomp_export_bpf: {os.strerror(-status)}")
            size = os.lseek(memory, 0, os.SEEK_END)
            os.lseek(memory, 0, os.SEEK_SET)
            program = os.read(memory, size)
        finally:
            os.close(memory)
    finally:
        library.seccomp_release(context)
    if not program or len(program) % 8:
        raise OSError(0, f"libseccomp exported a malformed program ({len(program)} bytes)")
    return program


def _last_cap() -> int:
    try:
        return int(_read("/proc/sys/kernel", "cap_last_cap"))
    except (OSError, ValueError):
        return len(CAPABILITIES) - 1


# --- what the kernel enforces ------------------------------------------------------------------------------


def observed(pid: int) -> dict[str, Any]:
    """The confinement of a running (or just exited, not yet reaped) process, as /proc shows it."""
    seen: dict[str, Any] = {}
    try:
        status = _read(f"/proc/{pid}", "status")
    except OSError:
        return seen
    for line in status.splitlines():
        field, _, value = line.partition(":")
        value = value.strip()
        if field == "CapBnd":
            bits = int(value, 16)
            seen["bounding_caps"] = [name for index, name in enumerate(CAPABILITIES) if bits >> index & 1]
        elif field in ("CapEff", "CapPrm", "CapAmb"):
            seen[field.lower()] = value
        elif field == "NoNewPrivs":
            seen["no_new_privs"] = value == "1"
        elif field == "Seccomp":
            seen["seccomp_mode"] = int(value)
        elif field in ("Uid", "Gid"):
            seen[field.lower()] = int(value.split()[0])
    with contextlib.suppress(OSError):
        seen["cgroup"] = _read(f"/proc/{pid}", "cgroup").strip().partition("::")[2]
    for attr in (f"/proc/{pid}/attr/apparmor", f"/proc/{pid}/attr"):
        with contextlib.suppress(OSError):
            seen["apparmor"] = _read(attr, "current").strip("\0\n ")
            break
    return seen


def _read(directory: str, name: str) -> str:
    with open(os.path.join(directory, name)) as handle:
        return handle.read()


def _write(directory: str, name: str, text: str) -> None:
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
