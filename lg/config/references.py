"""Check what a pipeline names outside itself: its risk policy and VM profiles must exist and load.

Security code fails closed: a pipeline whose policy or profile is missing or broken does not validate,
and so never runs ("no policy, so everything is green" is exactly what must not happen).
"""

from __future__ import annotations

from lg.config.project import load_project_config
from lg.errors import InvalidInput, InvalidInputs, Location
from lg.model import Pipeline
from lg.security.profile import load_vm_profile


def check_pipeline_references(pipeline: Pipeline) -> None:
    config = load_project_config(pipeline.path.parent)
    errors: list[InvalidInput] = []
    base = pipeline.path.parent
    where = pipeline.policy_location
    try:
        from lg.policy.load import load_policy  # noqa: PLC0415 - policies import tree-sitter lazily anyway

        load_policy(pipeline.policy, config, base)
    except InvalidInputs as problems:
        errors.extend(problems.errors)
    except InvalidInput as problem:
        errors.append(problem if problem.location else InvalidInput(problem.message, where))
    profiles = {pipeline.profile: pipeline.profile_location}
    for step in pipeline.steps:
        if step.profile:
            profiles.setdefault(step.profile, Location(step.location.path, step.location.line, None,
                                                       f"{step.location.key_path}.profile"))
    for profile, location in profiles.items():
        try:
            load_vm_profile(profile, config, base)
        except InvalidInputs as problems:
            errors.extend(problems.errors)
        except InvalidInput as problem:
            errors.append(InvalidInput(problem.message, location))
    if errors:
        raise InvalidInputs(errors)
