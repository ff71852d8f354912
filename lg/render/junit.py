"""A run as JUnit XML: one <testcase> per step, with its (secret-masked) log and why it failed or was skipped.

CI systems (GitLab, Jenkins, GitHub's test reporters) read this de-facto format; the shape follows the
schema Jenkins' JUnit plugin and junitparser read (testsuites > testsuite > testcase, with failure, error,
skipped, system-out). It is built from the run's records, never from live output, so `lg resume` writes the
whole run's report, the steps that ran before the pause included.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import xml.etree.ElementTree as ET  # writing XML only: nothing untrusted is parsed here
from collections.abc import Sequence
from pathlib import Path

from lg.runs.states import FAILED_STEPS, STOPPED_AT_GATE, StepStatus
from lg.runs.store import RunRecord, StepRecord

MAX_OUTPUT_CHARS = 1_000_000
"""A step's log beyond this is cut (from the front: the end says why it failed) so one chatty step cannot
make a report a CI server refuses to load."""

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def junit_xml(run: RunRecord, steps: Sequence[StepRecord]) -> str:
    suite = ET.Element("testsuite", {
        "name": run.pipeline, "tests": str(len(steps)),
        "failures": str(sum(1 for s in steps if _failed(s))),
        "errors": str(sum(1 for s in steps if _errored(s))),
        "skipped": str(sum(1 for s in steps if _skipped(s))),
        "time": _seconds(sum(s.duration or 0.0 for s in steps)),
        "timestamp": _timestamp(run.started or run.created), "id": run.id,
    })
    properties = ET.SubElement(suite, "properties")
    for name, value in (("run", run.id), ("status", run.status.value), ("pipeline_file", run.pipeline_path),
                        *((f"input.{k}", _text(v)) for k, v in (run.input_values or {}).items())):
        ET.SubElement(properties, "property", {"name": name, "value": _clean(value)})
    for step in steps:
        suite.append(_testcase(run, step))
    root = ET.Element("testsuites", {"name": run.pipeline, "tests": suite.get("tests", "0"),
                                     "failures": suite.get("failures", "0"), "errors": suite.get("errors", "0"),
                                     "skipped": suite.get("skipped", "0"), "time": suite.get("time", "0")})
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: Path, run: RunRecord, steps: Sequence[StepRecord]) -> None:
    """Write the report atomically: a CI job reading it never sees half a file, and a failed write leaves the
    previous report (or none), never a truncated one."""
    text = junit_xml(run, steps)
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        Path(staging).chmod(0o644)
        Path(staging).replace(path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _testcase(run: RunRecord, step: StepRecord) -> ET.Element:
    case = ET.Element("testcase", {"name": step.step_id, "classname": run.pipeline,
                                   "time": _seconds(step.duration or 0.0)})
    detail = _clean(step.detail or step.status.value)
    if _failed(step):
        exit_code = f" (exit {step.exit_code})" if step.exit_code is not None else ""
        failure = ET.SubElement(case, "failure", {"message": f"{step.status.value}{exit_code}: {detail}",
                                                  "type": step.status.value})
        failure.text = detail
    elif _errored(step):
        ET.SubElement(case, "error", {"message": f"{step.status.value}: {detail}", "type": step.status.value})
    elif _skipped(step):
        ET.SubElement(case, "skipped", {"message": detail})
    output = _log(step)
    if output:
        ET.SubElement(case, "system-out").text = output
    return case


def _failed(step: StepRecord) -> bool:
    return step.status in FAILED_STEPS or step.status in STOPPED_AT_GATE


def _errored(step: StepRecord) -> bool:
    """lg stopped the step (interrupted, cancelled): not the step's own failure."""
    return step.status in (StepStatus.INTERRUPTED, StepStatus.CANCELLED)


def _skipped(step: StepRecord) -> bool:
    """Skipped, or not run (yet): a run paused at a gate reports its later steps as not run."""
    return not (_failed(step) or _errored(step)) and step.status is not StepStatus.SUCCEEDED


def _log(step: StepRecord) -> str:
    if not step.log_path:
        return ""
    try:
        text = Path(step.log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    if len(text) > MAX_OUTPUT_CHARS:
        text = f"[... {len(text) - MAX_OUTPUT_CHARS} characters cut ...]\n" + text[-MAX_OUTPUT_CHARS:]
    return _clean(text)


def _clean(text: str) -> str:
    """XML 1.0 cannot carry most control characters, even escaped; a step may print any byte."""
    return _NOT_XML.sub("\ufffd", text)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
