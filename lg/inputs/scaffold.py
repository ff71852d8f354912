"""`lg init`: a project of one's own, to edit in version control: lg.yaml, an example pipeline, and copies of
the shipped VM profiles, risk policies, seccomp and AppArmor profiles and schemas.

A project's own profiles/ and images/ are searched before the shipped ones (lg.config.project), so the copies
are what its runs use from then on, and a change to them is a reviewed diff. Nothing is overwritten unless
asked: every file is checked first, and then all are written or none.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lg.config.project import BUILTIN_ROOT, PROJECT_FILE
from lg.errors import InvalidInput

COPIED = ("profiles", "schemas")
"""Shipped folders copied into the project. Image recipes are not: the shipped ones are found without a copy
and their built images are shared through the cache (a copy would be the same recipe, and so the same image)."""

LG_YAML = """\
# yaml-language-server: $schema=schemas/lg.schema.json
# Project defaults (lg finds this file by walking up from a pipeline). docs: lg schema lg
hypervisor: {hypervisor}
accelerator: auto        # probe KVM with a deadline, fall back to TCG (lg doctor says which)
image: {image}
profile: default         # profiles/vm/default.yaml (this project's copy)
policy: default          # profiles/risk/default.yaml (this project's copy)
state_dir: .lg           # run records and step logs; keep it out of version control
pool:
  max_active: 4
"""

PIPELINE = """\
# yaml-language-server: $schema=schemas/pipeline.schema.json
# An example pipeline: each step runs in its own throwaway microVM; only the changes of steps that succeed
# come back to this directory. Run it with:  lg run pipeline.yaml --input greeting=hi
name: example
description: Write a file in one step, check it in the next
inputs:
  greeting:
    description: the word the first step writes
    default: hello
steps:
  - id: build
    name: Write out/greeting.txt
    run: |
      mkdir -p out
      echo "{{{{ inputs.greeting }}}} from $(uname -s)" > out/greeting.txt

  - id: check
    needs: build
    name: Check what build wrote
    run: |
      cat out/greeting.txt
      grep -q "{{{{ inputs.greeting }}}}" out/greeting.txt
"""

GITIGNORE_LINE = ".lg/\n"


@dataclass(frozen=True)
class Scaffold:
    directory: Path
    written: tuple[Path, ...]


def planned_files(directory: Path, hypervisor: str = "qemu", image: str = "default") -> dict[Path, Path | str]:
    """Every file `lg init` writes: its path, and the shipped file it copies or the text it holds."""
    files: dict[Path, Path | str] = {
        directory / PROJECT_FILE: LG_YAML.format(hypervisor=hypervisor, image=image),
        directory / "pipeline.yaml": PIPELINE.format(),
    }
    for folder in COPIED:
        source_root = (BUILTIN_ROOT / folder).resolve()
        for source in sorted(source_root.rglob("*")):
            if source.is_file() and not source.name.startswith("."):
                files[directory / folder / source.relative_to(source_root)] = source
    return files


def init_project(directory: Path, *, force: bool = False, image: str = "default") -> Scaffold:
    """Write the project into `directory` (made if missing). Existing files are refused (exit 2, naming them)
    unless `force`, before anything is written."""
    if directory.exists() and not directory.is_dir():
        raise InvalidInput(f"lg init {directory}: not a directory")
    files = planned_files(directory, image=image)
    existing = [path for path in files if path.exists() or path.is_symlink()]
    if existing and not force:
        listed = "\n".join(f"  {path}" for path in existing[:10])
        more = f"\n  ... and {len(existing) - 10} more" if len(existing) > 10 else ""
        raise InvalidInput(f"lg init {directory}: {len(existing)} file(s) exist already and are left as they "
                           f"are:\n{listed}{more}\nnothing was written; --force replaces them")
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()  # --force: write a file here, never through a link to somewhere else
        if isinstance(content, Path):
            shutil.copyfile(content, path)
        else:
            path.write_text(content, encoding="utf-8")
    _ignore_state(directory)
    return Scaffold(directory, tuple(files))


def _ignore_state(directory: Path) -> None:
    """Run records are not source: keep .lg/ out of git (added to an existing .gitignore, never duplicated)."""
    ignore = directory / ".gitignore"
    current = ignore.read_text(encoding="utf-8") if ignore.is_file() else ""
    if ".lg/" in current.splitlines() or ".lg" in current.splitlines():
        return
    with ignore.open("a", encoding="utf-8") as out:
        out.write(("\n" if current and not current.endswith("\n") else "") + GITIGNORE_LINE)
