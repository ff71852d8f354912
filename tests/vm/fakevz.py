"""A fake `Virtualization` module (with stand-ins of Foundation's file URLs and libdispatch's queues) for testing
lg.vm.apple on Linux.

Every method lg calls goes through one check against the facts written down from pyobjc 12.2.2's metadata
(tests/vm/contracts/pyobjc-virtualization-12.2.2.json): the (class, selector) must be a known one, its Python
name the selector with `_` for `:` and as many arguments as the selector has colons, a BOOL argument a bool, an
out parameter (NSError **) passed as None and returned as an extra result as pyobjc does, a block a callable
that is later called with the block's arguments (the block itself not counted). A call that breaks any of them
is recorded in VIOLATIONS and raises.

The VM behind it is tests/vm/fakevmm/guest.py's stand-in guest (lg's agent on this host), reached through the
socket device's connectToPort: there is no kernel, no hypervisor and no macOS here.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lg.vm.apple import Framework
from tests.vm.fakevmm.contract import CONTRACTS
from tests.vm.fakevmm.guest import StandInGuest

FACTS = json.loads((CONTRACTS / "pyobjc-virtualization-12.2.2.json").read_text())
KNOWN = {(entry["class"], entry["selector"]): entry for entry in FACTS["selectors"]}
ENUMS: dict[str, int] = FACTS["enums"]
CALLS: list[tuple[str, str]] = []
VIOLATIONS: list[str] = []


class FakeError:
    def __init__(self, text: str) -> None:
        self.text = text

    def localizedDescription(self) -> str:  # noqa: N802 - NSError's name
        return self.text


class URL:
    def __init__(self, path: str) -> None:
        self.path = path


def _violation(message: str) -> AttributeError:
    VIOLATIONS.append(message)
    return AttributeError(message)


class ObjC:
    """An Objective-C object as pyobjc shows it: `obj.sel_with_colons_(...)` calls a method checked against the
    facts, then implemented by `do_<python name>` (or a setter/getter of a property)."""

    objc_class = "NSObject"

    def __init__(self) -> None:
        self.properties: dict[str, Any] = {}

    @classmethod
    def alloc(cls) -> ObjC:
        return cls()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith(("do_", "__")):
            raise AttributeError(name)
        selector = name.replace("_", ":")
        entry = KNOWN.get((self.objc_class, selector))
        if entry is None:
            raise _violation(f"{self.objc_class} {selector}: not a selector of lg's pyobjc facts")

        def call(*args: Any) -> Any:
            _check_call(self.objc_class, selector, entry, args)
            CALLS.append((self.objc_class, selector))
            implementation = getattr(type(self), "do_" + name, None)
            if implementation is not None:
                return implementation(self, *args)
            if selector.startswith("set") and len(args) == 1:
                self.properties[selector[3:-1]] = args[0]
                return None
            if selector == "init":
                return self
            return self.properties.get(selector)

        return call


def _check_call(cls: str, selector: str, entry: dict[str, Any], args: tuple[Any, ...]) -> None:
    where = f"{cls} {selector}"
    if len(args) != entry["objc_arguments"]:
        raise _violation(f"{where}: called with {len(args)} arguments, the selector takes {entry['objc_arguments']}")
    for index, spec in ((entry.get("metadata") or {}).get("arguments") or {}).items():
        value = args[int(index) - 2]
        if spec.get("type_modifier") == "o" and value is not None:
            raise _violation(f"{where}: out parameter {index} must be passed as None, pyobjc returns it")
        if spec.get("type") == "Z" and not isinstance(value, bool):
            raise _violation(f"{where}: argument {index} is a BOOL, got {value!r}")
        if "block" in spec and not callable(value):
            raise _violation(f"{where}: argument {index} must be a block (callable)")


def _out(entry_class: str, selector: str) -> bool:
    """Whether the selector has an out parameter: pyobjc then returns (result, error)."""
    metadata = KNOWN[(entry_class, selector)].get("metadata") or {}
    return any(spec.get("type_modifier") == "o" for spec in (metadata.get("arguments") or {}).values())


def _block_arity(cls: str, selector: str) -> int:
    for spec in ((KNOWN[(cls, selector)].get("metadata") or {}).get("arguments") or {}).values():
        if "block" in spec:
            return len(spec["block"]["arguments"]) - 1  # ^v: the block itself
    raise AssertionError(f"{cls} {selector} has no block")


def _complete(cls: str, selector: str, handler: Callable[..., None], *result: Any) -> None:
    """Call a completion handler later, from another thread, as the framework calls it on the VM's queue."""
    if len(result) != _block_arity(cls, selector):
        raise AssertionError(f"the fake called {selector}'s block with {len(result)} arguments")
    threading.Timer(0.01, handler, args=result).start()


# --- configuration objects ----------------------------------------------------------------------------------


class VZLinuxBootLoader(ObjC):
    objc_class = "VZLinuxBootLoader"

    def do_initWithKernelURL_(self, url: URL) -> VZLinuxBootLoader:  # noqa: N802
        self.properties["KernelURL"] = url
        return self


class VZVirtualMachineConfiguration(ObjC):
    objc_class = "VZVirtualMachineConfiguration"

    def do_validateWithError_(self, error: None) -> tuple[bool, Any]:  # noqa: N802
        if self.properties.get("BootLoader") is None:
            return False, FakeError("no boot loader")
        return True, None

    def do_validateSaveRestoreSupportWithError_(self, error: None) -> tuple[bool, Any]:  # noqa: N802
        return True, None


class VZFileSerialPortAttachment(ObjC):
    objc_class = "VZFileSerialPortAttachment"

    def do_initWithURL_append_error_(self, url: URL, append: bool, error: None) -> tuple[Any, Any]:  # noqa: N802
        Path(url.path).open("a" if append else "w").close()
        self.properties["URL"] = url
        return self, None


class VZVirtioConsoleDeviceSerialPortConfiguration(ObjC):
    objc_class = "VZVirtioConsoleDeviceSerialPortConfiguration"


class VZDiskImageStorageDeviceAttachment(ObjC):
    objc_class = "VZDiskImageStorageDeviceAttachment"

    def do_initWithURL_readOnly_error_(self, url: URL, read_only: bool, error: None) -> tuple[Any, Any]:  # noqa: N802
        if not Path(url.path).is_file():
            return None, FakeError(f"no disk image at {url.path}")
        return self, None


class VZVirtioBlockDeviceConfiguration(ObjC):
    objc_class = "VZVirtioBlockDeviceConfiguration"

    def do_initWithAttachment_(self, attachment: Any) -> VZVirtioBlockDeviceConfiguration:  # noqa: N802
        return self


class VZVirtioSocketDeviceConfiguration(ObjC):
    objc_class = "VZVirtioSocketDeviceConfiguration"


class VZVirtioEntropyDeviceConfiguration(ObjC):
    objc_class = "VZVirtioEntropyDeviceConfiguration"


# --- the machine ----------------------------------------------------------------------------------------------


class VZVirtioSocketConnection(ObjC):
    objc_class = "VZVirtioSocketConnection"

    def __init__(self, sock: socket.socket | None = None) -> None:
        super().__init__()
        self.sock = sock

    def do_fileDescriptor(self) -> int:  # noqa: N802
        assert self.sock is not None
        return self.sock.fileno()

    def do_close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


class VZVirtioSocketDevice(ObjC):
    objc_class = "VZVirtioSocketDevice"

    def __init__(self, machine: VZVirtualMachine | None = None) -> None:
        super().__init__()
        self.machine = machine

    def do_connectToPort_completionHandler_(self, port: int, handler: Callable[..., None]) -> None:  # noqa: N802
        machine = self.machine
        guest = machine.guest if machine is not None else None
        sock = guest.accept(0.5) if guest is not None and port == 1024 else None
        if sock is None:
            _complete(self.objc_class, "connectToPort:completionHandler:", handler, None,
                      FakeError(f"nothing listens on vsock port {port}"))
            return
        connection = VZVirtioSocketConnection(sock)
        assert machine is not None
        machine.connections.append(connection)
        _complete(self.objc_class, "connectToPort:completionHandler:", handler, connection, None)


class VZVirtualMachine(ObjC):
    objc_class = "VZVirtualMachine"

    def __init__(self) -> None:
        super().__init__()
        self.config: VZVirtualMachineConfiguration | None = None
        self.guest: StandInGuest | None = None
        self.status = ENUMS["VZVirtualMachineStateStopped"]
        self.connections: list[VZVirtioSocketConnection] = []
        self.saved = False

    def do_initWithConfiguration_queue_(self, config: VZVirtualMachineConfiguration,  # noqa: N802
                                        queue: Any) -> VZVirtualMachine:
        self.config = config
        return self

    def _run_dir(self) -> Path:
        assert self.config is not None
        console = self.config.properties["SerialPorts"][0].properties["Attachment"].properties["URL"]
        return Path(console.path).parent

    def _start_guest(self, memory: Path | None) -> None:
        self.guest = StandInGuest(self._run_dir() / ".fake-guest", "lg-guest")
        if memory is not None:
            self.guest.load(memory)
        self.guest.start()

    def do_startWithCompletionHandler_(self, handler: Callable[..., None]) -> None:  # noqa: N802
        self._start_guest(None)
        self.status = ENUMS["VZVirtualMachineStateRunning"]
        (self._run_dir() / "console.log").write_text("fake Virtualization: a stand-in guest (no kernel)\n")
        _complete(self.objc_class, "startWithCompletionHandler:", handler, None)

    def do_pauseWithCompletionHandler_(self, handler: Callable[..., None]) -> None:  # noqa: N802
        assert self.guest is not None
        self.guest.signal(signal.SIGSTOP)
        self.status = ENUMS["VZVirtualMachineStatePaused"]
        _complete(self.objc_class, "pauseWithCompletionHandler:", handler, None)

    def do_resumeWithCompletionHandler_(self, handler: Callable[..., None]) -> None:  # noqa: N802
        if self.status != ENUMS["VZVirtualMachineStatePaused"]:
            _complete(self.objc_class, "resumeWithCompletionHandler:", handler, FakeError("not paused"))
            return
        assert self.guest is not None
        self.guest.signal(signal.SIGCONT)
        for connection in self.connections:  # vsock connections do not survive a save or restore
            connection.do_close()
        self.connections = []
        self.status = ENUMS["VZVirtualMachineStateRunning"]
        _complete(self.objc_class, "resumeWithCompletionHandler:", handler, None)

    def do_saveMachineStateToURL_completionHandler_(self, url: URL,  # noqa: N802
                                                    handler: Callable[..., None]) -> None:
        if self.status != ENUMS["VZVirtualMachineStatePaused"] or self.guest is None:
            _complete(self.objc_class, "saveMachineStateToURL:completionHandler:", handler,
                      FakeError("the VM must be paused to save its state"))
            return
        self.guest.save(Path(url.path))
        _complete(self.objc_class, "saveMachineStateToURL:completionHandler:", handler, None)

    def do_restoreMachineStateFromURL_completionHandler_(self, url: URL,  # noqa: N802
                                                         handler: Callable[..., None]) -> None:
        if self.status != ENUMS["VZVirtualMachineStateStopped"]:
            _complete(self.objc_class, "restoreMachineStateFromURL:completionHandler:", handler,
                      FakeError("restore needs a VM that has not started"))
            return
        self._start_guest(Path(url.path))
        assert self.guest is not None
        self.guest.signal(signal.SIGSTOP)
        self.status = ENUMS["VZVirtualMachineStatePaused"]
        _complete(self.objc_class, "restoreMachineStateFromURL:completionHandler:", handler, None)

    def do_stopWithCompletionHandler_(self, handler: Callable[..., None]) -> None:  # noqa: N802
        for connection in self.connections:
            connection.do_close()
        if self.guest is not None:
            self.guest.stop()
        self.status = ENUMS["VZVirtualMachineStateStopped"]
        _complete(self.objc_class, "stopWithCompletionHandler:", handler, None)

    def do_canStop(self) -> bool:  # noqa: N802
        return self.status in (ENUMS["VZVirtualMachineStateRunning"], ENUMS["VZVirtualMachineStatePaused"])

    def do_state(self) -> int:
        return self.status

    def do_socketDevices(self) -> list[VZVirtioSocketDevice]:  # noqa: N802
        return [VZVirtioSocketDevice(self)]


class FakeVirtualization:
    """What `import Virtualization` gives lg: its classes and enum values."""

    VZLinuxBootLoader = VZLinuxBootLoader
    VZVirtualMachineConfiguration = VZVirtualMachineConfiguration
    VZFileSerialPortAttachment = VZFileSerialPortAttachment
    VZVirtioConsoleDeviceSerialPortConfiguration = VZVirtioConsoleDeviceSerialPortConfiguration
    VZDiskImageStorageDeviceAttachment = VZDiskImageStorageDeviceAttachment
    VZVirtioBlockDeviceConfiguration = VZVirtioBlockDeviceConfiguration
    VZVirtioSocketDeviceConfiguration = VZVirtioSocketDeviceConfiguration
    VZVirtioEntropyDeviceConfiguration = VZVirtioEntropyDeviceConfiguration
    VZVirtualMachine = VZVirtualMachine
    VZVirtualMachineStateStopped = ENUMS["VZVirtualMachineStateStopped"]
    VZVirtualMachineStateError = ENUMS["VZVirtualMachineStateError"]


def _on_queue(queue: threading.RLock, work: Callable[[], None]) -> None:
    with queue:
        work()


def fake_framework() -> Framework:
    return Framework(vz=FakeVirtualization, file_url=URL, make_queue=lambda label: threading.RLock(),
                     on_queue=_on_queue)
