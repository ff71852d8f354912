"""Build guest images from recipes into the content-addressed cache.

Two layers, cached separately:
- the *base* (kernel, modules, root filesystem): expensive; keyed by the recipe, the init scripts and the exact
  Debian packages (name, version, and the SHA256 apt's index gives), so a new kernel package means a new base;
- the *agent* (lg/guest/*.py): a small cpio archive appended to the initrd (Linux accepts concatenated cpio
  archives), so editing the agent rebuilds in seconds.

Every directory is built beside its final place and renamed into it when complete, under a lock: an
interrupted build never leaves anything `ImageStore` would return.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lg.errors import EnvironmentUnfit
from lg.images import debian
from lg.images.guest_init import DISK_INIT, DISK_STAGE2, INITRAMFS_INIT
from lg.images.recipe import Recipe, find_recipe
from lg.images.store import BUILDER_VERSION, MANIFEST, BuiltImage, ImageStore, agent_sources, recipe_key
from lg.model import ProjectConfig

Progress = Callable[[str], None]

DEFAULT_PRUNE = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
    "usr/share/bash-completion", "usr/share/zsh", "usr/share/bug", "usr/share/common-licenses",
    "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/turtledemo", "var/cache/debconf", "var/lib/dpkg",
)


def build_image(config: ProjectConfig, name: str, progress: Progress) -> BuiltImage:
    """The image for recipe `name`, built now unless the cache already has it."""
    recipe = find_recipe(config, name)
    store = ImageStore(config.cache_dir)
    progress(f"{name}: resolving Debian packages")
    kernel_package = debian.resolve_kernel_package(recipe.kernel_package)
    names = debian.dependency_closure([*recipe.packages, "busybox-static"], recipe.exclude)
    packages = debian.package_metadata(sorted({*names, kernel_package}))
    base = _base_key(recipe, packages)
    agent_digest = _agent_digest()
    digest = hashlib.sha256(f"{base}\n{agent_digest}".encode()).hexdigest()
    existing = store.by_digest(digest)
    if existing is not None:
        progress(f"{name}: up to date ({digest[:12]})")
        return existing
    with _lock(config.cache_dir / "images.lock"):
        base_dir = config.cache_dir / "bases" / base
        if not base_dir.is_dir():
            _build_base(recipe, packages, kernel_package, config.cache_dir, base_dir, progress)
        else:
            progress(f"{name}: base layer cached ({base[:12]})")
        return _assemble(recipe, base_dir, digest, agent_digest, store, progress)


def _base_key(recipe: Recipe, packages: list[debian.DebPackage]) -> str:
    lines = [
        f"builder {BUILDER_VERSION}", recipe.text, INITRAMFS_INIT, DISK_INIT, DISK_STAGE2,
        *(f"{p.name} {p.version} {p.architecture} {p.sha256}" for p in packages),
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _agent_digest() -> str:
    digest = hashlib.sha256()
    for relative, content in agent_sources():
        digest.update(relative.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A directory beside `final` that becomes `final` only if the block completes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name[:12]}-", dir=final.parent))
    try:
        yield temporary
        os.sync()
        temporary.rename(final)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


# --- the base layer --------------------------------------------------------------------------------------


def _build_base(recipe: Recipe, packages: list[debian.DebPackage], kernel_package: str, cache: Path,
                final: Path, progress: Progress) -> None:
    started = time.monotonic()
    progress(f"{recipe.name}: downloading {len(packages)} packages")
    debs = dict(zip((p.name for p in packages), debian.download(packages, cache / "debs"), strict=True))
    with _staging(final) as out, tempfile.TemporaryDirectory(prefix="lg-image-") as scratch:
        work = Path(scratch)
        progress(f"{recipe.name}: extracting the kernel")
        kernel_root = work / "kernel"
        debian.unpack(debs[kernel_package], kernel_root)
        release = _write_vmlinux(kernel_root, out / "vmlinux")
        progress(f"{recipe.name}: unpacking {len(packages) - 1} packages")
        root = work / "root"
        for name, deb in debs.items():
            if name != kernel_package:
                debian.unpack(deb, root)
        _finish_root(root, (*DEFAULT_PRUNE, *recipe.prune))
        modules = _module_closure(kernel_root / "lib/modules" / release, recipe.modules)
        if recipe.root_kind == "initramfs":
            _install_boot_files(root, kernel_root, release, modules, INITRAMFS_INIT)
            progress(f"{recipe.name}: packing the initramfs")
            _write_cpio(root, out / "base.cpio")
        else:
            _write_disk(recipe, root, out, progress)
            stage1 = work / "stage1"
            _copy_busybox(root, stage1)
            _install_boot_files(stage1, kernel_root, release, modules, DISK_INIT)
            _write_cpio(stage1, out / "base.cpio")
        (out / "base.json").write_text(json.dumps({
            "kernel_release": release,
            "packages": {p.name: p.version for p in packages},
            "modules": modules,
            "seconds": round(time.monotonic() - started, 1),
        }, indent=2))
    progress(f"{recipe.name}: base layer built in {time.monotonic() - started:.0f}s")


def _write_vmlinux(kernel_root: Path, target: Path) -> str:
    """Debian ships a bzImage; microvm boots an uncompressed vmlinux through PVH, so unpack its payload.

    The setup header says where the compressed kernel starts (setup sectors, payload_offset) and how long it is;
    its first bytes say how it was compressed (the cloud kernel uses LZ4, the generic one xz).
    """
    candidates = sorted((kernel_root / "boot").glob("vmlinuz-*"))
    if not candidates:
        raise EnvironmentUnfit("the kernel package has no /boot/vmlinuz-*")
    bzimage = candidates[0].read_bytes()
    setup_sectors = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    vmlinux = _decompress(bzimage[start:start + length], candidates[0].name)
    if not vmlinux.startswith(b"\x7fELF"):
        raise EnvironmentUnfit(f"{candidates[0].name}: the unpacked kernel is not an ELF file")
    target.write_bytes(vmlinux)
    return candidates[0].name.removeprefix("vmlinuz-")


def _decompress(payload: bytes, name: str) -> bytes:
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=31).decompress(payload)
    for magic, tool in ((b"\x02\x21\x4c\x18", "lz4"), (b"\x28\xb5\x2f\xfd", "zstd")):
        if payload.startswith(magic):
            if shutil.which(tool) is None:
                raise EnvironmentUnfit(f"{name} is {tool}-compressed and {tool} is not installed",
                                       fix=f"apt-get install {tool} (scripts/setup does)")
            # The kernel build appends the uncompressed size after the stream, so the tool may exit
            # non-zero over those 4 bytes; the ELF check afterwards is what decides.
            done = subprocess.run([tool, "-d", "-c"], input=payload, capture_output=True, check=False)
            return done.stdout
    raise EnvironmentUnfit(f"{name}: unknown kernel compression (first bytes {payload[:6].hex()})")


def _module_closure(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    """`wanted` plus their dependencies, dependencies first (the order insmod needs)."""
    paths = {path.name.split(".ko")[0].replace("-", "_"): path for path in modules_dir.rglob("*.ko*")}
    ordered: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in ordered or key in trail:
            return
        if key not in paths:
            if _builtin(modules_dir, key):
                return
            raise EnvironmentUnfit(f"kernel module {name!r} is neither built in nor shipped by the kernel package")
        depends = subprocess.run(["modinfo", "-F", "depends", str(paths[key])], capture_output=True, text=True,
                                 check=True).stdout.strip()
        for dependency in filter(None, depends.split(",")):
            visit(dependency, (*trail, key))
        ordered.append(key)

    for module in wanted:
        visit(module, ())
    return ordered


def _builtin(modules_dir: Path, key: str) -> bool:
    builtin = modules_dir / "modules.builtin"
    return builtin.is_file() and any(
        Path(line).name.split(".ko")[0].replace("-", "_") == key for line in builtin.read_text().splitlines()
    )


def _install_boot_files(root: Path, kernel_root: Path, release: str, modules: list[str], init: str) -> None:
    modules_dir = kernel_root / "lib/modules" / release
    target = root / "lib/modules/lg"
    target.mkdir(parents=True, exist_ok=True)
    by_key = {path.name.split(".ko")[0].replace("-", "_"): path for path in modules_dir.rglob("*.ko*")}
    for module in modules:
        shutil.copy2(by_key[module], target / f"{module}.ko")
    (root / "etc/lg").mkdir(parents=True, exist_ok=True)
    (root / "etc/lg/modules").write_text("\n".join(modules) + "\n")
    for directory in ("proc", "sys", "dev", "tmp", "run", "workspace", "root", "opt/lg"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    init_path = root / "init"
    init_path.write_text(init)
    init_path.chmod(0o755)


def _finish_root(root: Path, prune: tuple[str, ...]) -> None:
    """What maintainer scripts would have done that a booting guest needs: users, /bin/sh, the linker cache."""
    for relative in prune:
        path = root / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nlg:x:1000:1000:lg step user:/workspace:/bin/sh\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (etc / "group").write_text("root:x:0:\nlg:x:1000:\nnogroup:x:65534:\n")
    (etc / "hostname").write_text("lg-guest\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    for link, target in (("bin/sh", "busybox"), ("usr/bin/python3", "python3.11")):
        path = root / link
        if not path.exists() and (path.parent / target).exists():
            path.symlink_to(target)
    if not (root / "bin/sh").exists():
        (root / "bin/sh").symlink_to("busybox")
    _link_busybox_applets(root)
    compile_bytecode(root, root / "usr/lib/python3.11")
    if (root / "etc/ld.so.conf").exists() or (root / "etc/ld.so.conf.d").exists():
        subprocess.run(["ldconfig", "-r", str(root)], capture_output=True, check=False)


def helper_name(relative: str) -> str:
    """lg/guest/confine_exec.c -> lg-confine-exec: the guest's native helpers, under /opt/lg/bin."""
    return "lg-" + Path(relative).stem.replace("_", "-")


def compile_helper(source: bytes, target: Path) -> None:
    """A static binary for the guest (same architecture as the host: the guests are x86_64 like it). Static,
    so it needs nothing from the image but the kernel."""
    compiler = shutil.which("gcc")
    if compiler is None:
        raise EnvironmentUnfit("gcc is needed to build the guest's confinement helper",
                               fix="apt-get install gcc libc6-dev (scripts/setup does)")
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [compiler, "-O2", "-static", "-Wall", "-Wextra", "-Werror", "-x", "c", "-o", str(target), "-"],
        input=source, capture_output=True, timeout=300, check=False,
    )
    if done.returncode != 0:
        raise EnvironmentUnfit(f"compiling {target.name} failed: {done.stderr.decode(errors='replace').strip()}",
                               fix="apt-get install gcc libc6-dev (static libc); scripts/setup does")
    target.chmod(0o755)


def compile_bytecode(root: Path, directory: Path) -> None:
    """Ship .pyc files: an emulated guest compiling the standard library at every boot costs about a second.

    Any Python 3.11 writes the same bytecode format; unchecked-hash pycs are used without comparing source
    timestamps, and `-s/-p` record the paths as the guest will see them.
    """
    if sys.version_info[:2] != (3, 11) or not directory.is_dir():
        return  # the guest then compiles at run time: slower, still correct
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
         "-s", str(root), "-p", "/", str(directory)],
        capture_output=True, check=False,
    )


def _link_busybox_applets(root: Path) -> None:
    """What busybox's own installer does: a link per applet, never shadowing a real program."""
    busybox = root / "bin/busybox"
    if not busybox.is_file():
        return
    listing = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=False).stdout
    for applet in listing.split():
        link = root / applet
        if link.exists() or link.is_symlink() or applet == "bin/busybox":
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("/bin/busybox"))


def _copy_busybox(root: Path, stage1: Path) -> None:
    (stage1 / "bin").mkdir(parents=True)
    shutil.copy2(root / "bin/busybox", stage1 / "bin/busybox")


def _write_disk(recipe: Recipe, root: Path, out: Path, progress: Progress) -> None:
    progress(f"{recipe.name}: writing the ext4 root disk ({recipe.disk_mib} MiB, sparse)")
    stage2 = root / "sbin/lg-init"
    stage2.parent.mkdir(parents=True, exist_ok=True)
    stage2.write_text(DISK_STAGE2)
    stage2.chmod(0o755)
    for directory in ("proc", "sys", "dev", "tmp", "run", "workspace", "root", "opt/lg"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "lgroot", "-E", "root_owner=0:0", "-d", str(root),
         str(out / "rootfs.img"), f"{recipe.disk_mib}M"],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise EnvironmentUnfit(f"mkfs.ext4 failed: {done.stderr.strip()}", fix="apt-get install e2fsprogs")


def _write_cpio(root: Path, target: Path) -> None:
    """An uncompressed newc archive: under TCG the guest unpacks it faster than it would decompress gzip."""
    names = sorted(str(path.relative_to(root)) for path in root.rglob("*"))
    with target.open("wb") as output:
        done = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"], cwd=root,
                              input="\n".join(names).encode(), stdout=output, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise EnvironmentUnfit(f"cpio failed: {done.stderr.decode(errors='replace').strip()}",
                               fix="apt-get install cpio")


# --- the agent layer and the final image -----------------------------------------------------------------


def _assemble(recipe: Recipe, base_dir: Path, digest: str, agent_digest: str, store: ImageStore,
              progress: Progress) -> BuiltImage:
    final = store.images_dir / digest
    with _staging(final) as out, tempfile.TemporaryDirectory(prefix="lg-agent-") as scratch:
        agent_root = Path(scratch)
        for relative, content in agent_sources():
            if relative.endswith(".c"):
                compile_helper(content, agent_root / "opt/lg/bin" / helper_name(relative))
                continue
            path = agent_root / "opt/lg" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        compile_bytecode(agent_root, agent_root / "opt/lg")
        _write_cpio(agent_root, out / "agent.cpio")
        with (out / "initrd").open("wb") as initrd:
            for part in (base_dir / "base.cpio", out / "agent.cpio"):
                with part.open("rb") as source:
                    shutil.copyfileobj(source, initrd, 1 << 20)
        (out / "agent.cpio").unlink()
        os.link(base_dir / "vmlinux", out / "vmlinux")
        if (base_dir / "rootfs.img").exists():
            os.link(base_dir / "rootfs.img", out / "rootfs.img")
        base_info = json.loads((base_dir / "base.json").read_text())
        manifest = {
            "name": recipe.name,
            "digest": digest,
            "recipe": str(recipe.path),
            "recipe_key": recipe_key(recipe),
            "base": base_dir.name,
            "agent_digest": agent_digest,
            "kernel_release": base_info["kernel_release"],
            "root_kind": recipe.root_kind,
            "kernel_args": list(recipe.kernel_args),
            "modules": base_info["modules"],
            "packages": base_info["packages"],
            "created": time.time(),
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    image = store.by_digest(digest)
    if image is None:  # pragma: no cover - the rename above just made it
        raise EnvironmentUnfit(f"image {digest[:12]} vanished right after it was built")
    progress(f"{recipe.name}: ready {digest[:12]} ({image.size_bytes / 1e6:.0f} MB)")
    return image
