"""A step's outputs never hold a declared secret (issue 18): they are stored, shown by `lg status --json`, put on
cards and handed to later steps' templates, so a secret a step writes to $LG_OUTPUT is masked before it is
recorded, and the step's log says which outputs were masked. Masking rather than refusing keeps the run going:
a later step that needed the value itself should be given the secret, not an output carrying it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from lg.runner.step_vm import AttemptResult


def mask_outputs(outputs: Mapping[str, str], mask: Callable[[str], str]) -> tuple[dict[str, str], list[str]]:
    """The outputs with every declared secret value masked, and the names of those that held one."""
    masked = {name: mask(value) for name, value in outputs.items()}
    return masked, sorted(name for name, value in outputs.items() if masked[name] != value)


def masked_result(result: AttemptResult, mask: Callable[[str], str],
                  note: Callable[[str], None]) -> AttemptResult:
    """The attempt's result as it may be recorded: outputs and detail masked; a note names each masked output."""
    outputs, names = mask_outputs(result.outputs, mask)
    for name in names:
        note(f"output {name} held a declared secret: masked (stored and passed on as ***)")
    detail = mask(result.detail) if result.detail else result.detail
    return replace(result, outputs=outputs, detail=detail)
