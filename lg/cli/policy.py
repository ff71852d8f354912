"""`lg policy test` and `lg policy explain`: policies are code, so they are tested and their decisions explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lg.cli.output import color_enabled, emit_json, json_option
from lg.errors import ExitCode, InvalidInput
from lg.model import ProjectConfig
from lg.policy.levels import RiskLevel
from lg.policy.model import Assessment, Relaxation, RiskPolicy
from lg.policy.network import NONE, UNKNOWN, NetworkScope

LEVEL_COLOURS = {RiskLevel.GREEN: "green", RiskLevel.YELLOW: "yellow", RiskLevel.ORANGE: "bright_red",
                 RiskLevel.RED: "red"}


@click.group()
def policy() -> None:
    """Test risk policies and explain their decisions."""


@policy.command()
@click.argument("policies", nargs=-1)
@click.option("--golden", "golden_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory of golden files (default: tests/policy/corpus of the project, if present).")
@json_option
def test(policies: tuple[str, ...], golden_dirs: tuple[Path, ...], as_json: bool) -> int:
    """Load POLICIES (default: every policy in the search path), checking every rule's own examples, then
    grade every golden file's command lines and change sets. Exit 1 if any grade differs from the golden one."""
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.policy.golden import run_golden  # noqa: PLC0415
    from lg.policy.load import load_policy  # noqa: PLC0415

    config = load_project_config()
    names = policies or tuple(sorted({p.stem for d in config.paths.risk_policies for p in d.glob("*.yaml")}))
    loaded = [load_policy(name, config, Path.cwd()) for name in names]
    directories = golden_dirs or tuple(d for d in (config.root / "tests/policy/corpus",) if d.is_dir())
    cases = [case for d in directories for path in sorted(d.glob("*.yaml")) for case in run_golden(path, config)]
    failed = [case for case in cases if not case.ok]
    if as_json:
        emit_json({"policies": [{"name": p.name, "rules": len(p.rules)} for p in loaded],
                   "golden": {"cases": len(cases), "failed": [
                       {"where": str(c.location), "subject": c.subject, "expected": c.expected.label,
                        "actual": c.actual.label} for c in failed]}})
    else:
        for loaded_policy in loaded:
            click.echo(f"ok: {loaded_policy.name} ({len(loaded_policy.rules)} rules, every example agrees)")
        for case in failed:
            click.echo(f"{case.location}: expected {case.expected.label}, got {case.actual.label}: {case.subject}",
                       err=True)
        click.echo(f"golden: {len(cases) - len(failed)} of {len(cases)} cases agree")
    return ExitCode.FAILED if failed else ExitCode.OK


@policy.command()
@click.option("--policy", "policy_name", default=None, help="Policy name or path (default: the project's).")
@click.option("--effects", "effects_file", type=click.Path(path_type=Path, dir_okay=False),
              help="A JSON file of changes ([{path, kind, size, mode, ..., content, old_content}]) to grade instead "
                   "of a command.")
@click.option("--profile", "profile_name", default=None,
              help="Grade the command under this VM profile (its network and relaxations); without it the "
                   "network is unknown and graded as some network.")
@click.option("--network", "network", default=None,
              help="Grade as if the profile allowed these hosts (comma-separated host:port), or 'none'.")
@click.option("--mcp", "mcp_call", default=None, metavar="SERVER/TOOL",
              help="Grade a call to this MCP tool (an agent step's) instead of a command.")
@click.option("--arguments", "mcp_arguments", default=None, metavar="JSON",
              help="With --mcp: the call's arguments, a JSON object (default: {}).")
@click.option("--annotations", "mcp_annotations", default=None, metavar="JSON",
              help='With --mcp: the tool\'s annotations as its server lists them, e.g. \'{"destructiveHint": true}\'.')
@click.argument("command", nargs=-1)
@json_option
def explain(policy_name: str | None, effects_file: Path | None, profile_name: str | None, network: str | None,
            mcp_call: str | None, mcp_arguments: str | None, mcp_annotations: str | None, command: tuple[str, ...],
            as_json: bool) -> int:
    """Explain the grade of COMMAND (after `--`), of a change set, or of an MCP tool call: level, every rule that
    matched with the program it found (unwrapped: `rm (via sudo, sh -c)`), and whether it gates."""
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.policy.grade import grade_command, grade_effects, grade_script  # noqa: PLC0415
    from lg.policy.load import changes_with_content, load_policy  # noqa: PLC0415

    config = load_project_config()
    loaded = load_policy(policy_name or config.policy, config, Path.cwd())
    if sum((bool(command), effects_file is not None, mcp_call is not None)) > 1:
        raise InvalidInput("explain takes one of a command, --effects or --mcp")
    if mcp_call is None and (mcp_arguments is not None or mcp_annotations is not None):
        raise InvalidInput("--arguments and --annotations go with --mcp SERVER/TOOL")
    if profile_name is not None and network is not None:
        raise InvalidInput("explain takes --profile or --network, not both")
    if mcp_call is not None:
        assessment = _grade_mcp(loaded, mcp_call, mcp_arguments or "{}", mcp_annotations)
    elif effects_file is not None:
        assessment = grade_effects(loaded, *changes_with_content(_read_changes(effects_file)))
    elif command and profile_name is not None:
        assessment = grade_script(loaded, " ".join(command), _profile_relaxations(profile_name, config))
    elif command:
        assessment = grade_command(loaded, " ".join(command), _scope(network))
    else:
        raise InvalidInput("nothing to explain: give a command after `--`, --effects FILE, or --mcp SERVER/TOOL")
    if as_json:
        emit_json(assessment.to_json())
    else:
        click.echo(render_assessment(assessment, loaded.name))
    return ExitCode.OK


def _grade_mcp(loaded: RiskPolicy, call: str, arguments: str, annotations: str | None) -> Assessment:
    from lg.policy.mcp_grade import grade_mcp_call  # noqa: PLC0415

    server, slash, tool = call.partition("/")
    if not (server and slash and tool):
        raise InvalidInput(f"--mcp {call!r}: write the server's name and the tool's, SERVER/TOOL")
    hints = _json_option("--annotations", annotations) if annotations is not None else None
    if hints is not None and not isinstance(hints, dict):
        raise InvalidInput("--annotations: expected a JSON object, e.g. '{\"destructiveHint\": true}'")
    # Arguments that are valid JSON but not an object are graded (red), as they would be from a model.
    return grade_mcp_call(loaded, server, tool, _json_option("--arguments", arguments), hints)


def _json_option(option: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise InvalidInput(f"{option}: not JSON: {error}") from None


def _scope(network: str | None) -> NetworkScope:
    if network is None:
        return UNKNOWN
    if network.strip() == "none":
        return NONE
    return NetworkScope.of(entry.strip() for entry in network.split(",") if entry.strip())


def _profile_relaxations(name: str, config: ProjectConfig) -> list[Relaxation]:
    from lg.security.profile import load_vm_profile  # noqa: PLC0415

    return load_vm_profile(name, config, Path.cwd()).relaxations()


def _read_changes(path: Path) -> list[dict[str, Any]]:
    from lg.policy.load import changes_with_content  # noqa: PLC0415

    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise InvalidInput(f"--effects {path}: {error.strerror}") from None
    except ValueError as error:
        raise InvalidInput(f"--effects {path}: not JSON: {error}") from None
    items = data.get("changes", data) if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InvalidInput(f"--effects {path}: expected a list of changes")
    try:
        changes_with_content(items)
    except (TypeError, KeyError) as error:
        raise InvalidInput(f"--effects {path}: not a change: {error}") from None
    return items


def render_assessment(assessment: Assessment, policy_name: str) -> str:
    level = assessment.level.label.upper()
    if color_enabled():
        level = click.style(level, fg=LEVEL_COLOURS[assessment.level], bold=True)
    decision = "DENIED" if assessment.denied else "gate: approval required" if assessment.gate else "no gate"
    lines = [f"{level}  ({decision}; policy {policy_name})"]
    for match in assessment.matches:
        lines.append(f"  {match.level.label:<7} {match.rule_id}: {match.reason}")
        if match.program:
            lines.append(f"          program: {match.program}")
        if match.span:
            lines.append(f"          at: {match.span}")
    return "\n".join(lines)
