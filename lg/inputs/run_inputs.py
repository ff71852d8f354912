"""A run's inputs, loaded once and bound: the pipeline, lg.yaml, the risk policy, every VM profile with its
seccomp and AppArmor files, and the images, as one frozen value with the digest of every file it came from.

The runner never reads one of these files after this: a policy edited while a run waits at a gate does not
quietly grade the rest of that run. The digests are recorded with the run; `lg resume` compares them with the
files as they are now and refuses to go on with anything changed unless the user accepts it by name.

Security code fails closed: a pipeline whose policy or profile is missing or broken does not load, and so
never runs ("no policy, so everything is green" is exactly what must not happen).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from lg.config.pipeline import load_pipeline
from lg.config.project import load_project_config
from lg.errors import EnvironmentUnfit, InvalidInput, InvalidInputs, Location
from lg.images.recipe import find_recipe
from lg.images.store import BuiltImage, require_image
from lg.model import Pipeline, ProjectConfig, Step
from lg.policy.load import load_policy
from lg.policy.model import RiskPolicy
from lg.security.profile import VmProfile, load_vm_profile

InputKind = Literal["pipeline", "lg.yaml", "risk-policy", "vm-profile", "seccomp", "apparmor", "image-recipe"]


@dataclass(frozen=True)
class InputFile:
    """One file a run depends on, as it was when the run's inputs were bound."""

    kind: InputKind
    path: Path
    sha256: str | None  # None: the file is gone (only ever in a comparison, never in a bound run)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputFile:
        return cls(data["kind"], Path(data["path"]), data.get("sha256"))


@dataclass(frozen=True)
class InputChange:
    """A file that differs from what a run was started (or last resumed) with."""

    kind: InputKind
    path: Path
    old: str | None  # None: the run did not depend on it before
    new: str | None  # None: it is gone

    def describe(self) -> str:
        def short(digest: str | None) -> str:
            return digest[:12] if digest else "none"

        what = "is gone" if self.new is None else "is new to the run" if self.old is None else "changed"
        return f"{self.kind} {self.path} {what} (sha256 {short(self.old)} -> {short(self.new)})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "old": self.old, "new": self.new}


@dataclass(frozen=True)
class RunInputs:
    pipeline: Pipeline
    config: ProjectConfig
    policy: RiskPolicy
    profiles: Mapping[str, VmProfile]  # by the name the pipeline and its steps use
    images: Mapping[str, BuiltImage]  # by recipe name; empty when loaded for checking only
    files: tuple[InputFile, ...]

    def profile_for(self, step: Step) -> VmProfile:
        return self.profiles[step.profile or self.pipeline.profile]

    def image_for(self, step: Step) -> BuiltImage:
        name = step.image or self.pipeline.image
        image = self.images.get(name)
        if image is None:  # inputs loaded for checking only (no images): the pool then makes nothing ahead for it
            raise EnvironmentUnfit(f"image {name!r} was not resolved when the run's inputs were loaded")
        return image

    def files_json(self) -> list[dict[str, Any]]:
        return [file.to_json() for file in self.files]


def load_run_inputs(pipeline_file: Path, *, config: ProjectConfig | None = None,
                    with_images: bool = False, input_values: Mapping[str, str] | None = None) -> RunInputs:
    """Everything a run of `pipeline_file` reads, each file once. `with_images` also requires every image
    its steps use to be built (exit 5 naming the fix), as a run does; `lg validate` and `--dry-run` do not.
    `input_values` are the run's `--input`s (None: checking only, see lg.config.pipeline.load_pipeline)."""
    config = config or load_project_config(pipeline_file.parent)
    pipeline = load_pipeline(pipeline_file, config, input_values)
    policy, profiles = _load_references(pipeline, config)
    names = sorted({step.image or pipeline.image for step in pipeline.steps})
    images = {name: require_image(config, name) for name in names} if with_images else {}
    files = [
        _file("pipeline", pipeline.path),
        *([_file("lg.yaml", config.source)] if config.source else []),
        *(_file("risk-policy", path) for path in (policy.path, *policy.extends)),
        *_profile_files(profiles.values()),
        *(_file("image-recipe", find_recipe(config, name).path) for name in images),
    ]
    return RunInputs(pipeline, config, policy, MappingProxyType(profiles), MappingProxyType(images),
                     _unique(files))


def changed_files(recorded: Sequence[InputFile], now: Sequence[InputFile] = ()) -> list[InputChange]:
    """What differs between the files a run recorded and the same files on disk now; with `now` (the inputs
    loaded again), also the files the run depends on now and did not before."""
    changes = []
    for file in recorded:
        current = _digest(file.path)
        if current != file.sha256:
            changes.append(InputChange(file.kind, file.path, file.sha256, current))
    known = {file.path for file in recorded}
    changes.extend(InputChange(file.kind, file.path, None, file.sha256) for file in now if file.path not in known)
    return changes


def _load_references(pipeline: Pipeline, config: ProjectConfig) -> tuple[RiskPolicy, dict[str, VmProfile]]:
    """The pipeline's policy and every VM profile it or a step names; every problem in any of them, each at
    the place in the pipeline that names the file (or in the file itself, for errors inside it)."""
    errors: list[InvalidInput] = []
    base = pipeline.path.parent
    policy: RiskPolicy | None = None
    try:
        policy = load_policy(pipeline.policy, config, base)
    except InvalidInputs as problems:
        errors.extend(problems.errors)
    except InvalidInput as problem:
        errors.append(problem if problem.location else InvalidInput(problem.message, pipeline.policy_location))
    profiles: dict[str, VmProfile] = {}
    for name, location in _profile_names(pipeline).items():
        try:
            profiles[name] = load_vm_profile(name, config, base)
        except InvalidInputs as problems:
            errors.extend(problems.errors)
        except InvalidInput as problem:
            errors.append(InvalidInput(problem.message, location))
    if errors or policy is None:
        raise InvalidInputs(errors)
    return policy, profiles


def _profile_names(pipeline: Pipeline) -> dict[str, Location]:
    names = {pipeline.profile: pipeline.profile_location}
    for step in pipeline.steps:
        if step.profile:
            names.setdefault(step.profile, Location(step.location.path, step.location.line, None,
                                                    f"{step.location.key_path}.profile"))
    return names


def _profile_files(profiles: Iterable[VmProfile]) -> Iterable[InputFile]:
    for profile in profiles:
        yield _file("vm-profile", profile.path)
        if profile.seccomp is not None:
            yield _file("seccomp", profile.seccomp.path)
        if profile.apparmor is not None:
            yield _file("apparmor", profile.apparmor.path)


def _file(kind: InputKind, path: Path) -> InputFile:
    resolved = path.resolve()
    digest = _digest(resolved)
    if digest is None:
        raise InvalidInput(f"{kind} file {resolved} cannot be read any more")
    return InputFile(kind, resolved, digest)


def _unique(files: Iterable[InputFile]) -> tuple[InputFile, ...]:
    return tuple({file.path: file for file in files}.values())


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
