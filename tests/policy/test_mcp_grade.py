"""Grading MCP tool calls: the `mcp` rule kind (server, tool, arguments), the default for calls no rule
matches (never below yellow), annotations that raise and never lower, and arguments that cannot be graded."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lg.config.project import load_project_config
from lg.errors import InvalidInput, InvalidInputs
from lg.policy.golden import run_golden
from lg.policy.levels import RiskLevel
from lg.policy.load import load_policy_file
from lg.policy.mcp_grade import grade_mcp_call
from lg.policy.mcp_match import MAX_ARGUMENT_BYTES, MAX_ARGUMENT_DEPTH, parse_pointer
from lg.policy.model import RiskPolicy
from tests.conftest import REPO

Write = Callable[[str, str], Path]

POLICY = """\
rules:
  - id: mcp.github.delete
    level: red
    reason: deletes a repository
    mcp: {server: github, tool: "delete_*"}
    examples:
      match: [{server: github, tool: delete_repo, arguments: {name: x}}]
      no_match: [{server: gitlab, tool: delete_repo}, {server: github, tool: list_repos}]
  - id: mcp.prod.anything
    level: orange
    reason: touches production
    mcp:
      tool: "*"
      arguments: [{path: /env, glob: "prod*"}]
  - id: mcp.sql.drop
    level: red
    reason: drops a table
    deny: true
    mcp:
      server: [db, warehouse]
      tool: query
      arguments: [{path: /sql, regex: "(?i)\\\\bdrop\\\\s+table\\\\b"}]
  - id: mcp.files.etc
    level: orange
    reason: a file under /etc, at any depth of the arguments
    mcp: {tool: "*", arguments: [{path: /**/path, glob: "/etc/*"}]}
  - id: mcp.any.force
    level: orange
    reason: forced
    mcp: {tool: "*", arguments: [{path: /options/force}]}
  - id: mcp.weather.read
    level: green
    reason: reads the weather, nothing else
    mcp: {server: weather, tool: forecast}
  - id: mcp.flags.numbers
    level: orange
    reason: a number or a boolean, as JSON text
    mcp: {tool: tune, arguments: [{path: /level, glob: "1?"}, {path: /dry_run, glob: "false"}]}
"""


@pytest.fixture
def policy(write: Write) -> RiskPolicy:
    return load_policy_file(write("p.yaml", POLICY))


def grade(policy: RiskPolicy, server: str, tool: str, arguments: Any,
          annotations: dict[str, Any] | None = None) -> tuple[RiskLevel, list[str]]:
    assessment = grade_mcp_call(policy, server, tool, arguments, annotations)
    return assessment.level, [match.rule_id for match in assessment.matches]


def test_a_rule_matches_server_and_tool_globs(policy: RiskPolicy) -> None:
    assert grade(policy, "github", "delete_repo", {"name": "x"}) == (RiskLevel.RED, ["mcp.github.delete"])
    assert grade(policy, "gitlab", "delete_repo", {})[1] == ["policy.mcp_default_level"]


def test_argument_conditions_by_pointer(policy: RiskPolicy) -> None:
    assert grade(policy, "deploy", "roll", {"env": "production"})[1] == ["mcp.prod.anything"]
    assert grade(policy, "deploy", "roll", {"env": "staging"})[1] == ["policy.mcp_default_level"]
    assert grade(policy, "deploy", "roll", {"target": {"env": "production"}})[1] == ["policy.mcp_default_level"]
    level, ids = grade(policy, "fs", "write", {"files": [{"path": "/tmp/a"}, {"path": "/etc/passwd"}]})
    assert (level, ids) == (RiskLevel.ORANGE, ["mcp.files.etc"])
    assert grade(policy, "fs", "write", {"options": {"force": False}})[1] == ["mcp.any.force"]  # present
    assert grade(policy, "fs", "write", {"options": {}})[1] == ["policy.mcp_default_level"]


def test_numbers_and_booleans_match_as_json_text(policy: RiskPolicy) -> None:
    assert grade(policy, "x", "tune", {"level": 12, "dry_run": False})[1] == ["mcp.flags.numbers"]
    assert grade(policy, "x", "tune", {"level": 12, "dry_run": True})[1] == ["policy.mcp_default_level"]
    assert grade(policy, "x", "tune", {"level": 2, "dry_run": False})[1] == ["policy.mcp_default_level"]


def test_a_deny_rule_refuses_and_the_card_says_where(policy: RiskPolicy) -> None:
    assessment = grade_mcp_call(policy, "warehouse", "query", {"sql": "SELECT 1; DROP  TABLE users"})
    assert assessment.denied and assessment.gate and assessment.level == RiskLevel.RED
    [match] = assessment.matches
    assert match.span == 'warehouse/query; /sql = "SELECT 1; DROP  TABLE users"'
    assert match.program == "mcp warehouse/query" and match.part == "mcp"
    assert not grade_mcp_call(policy, "warehouse", "query", {"sql": "select * from droplets"}).denied


def test_no_rule_means_the_mcp_default_yellow_and_no_gate(policy: RiskPolicy) -> None:
    assessment = grade_mcp_call(policy, "notes", "list", {})
    assert assessment.level == RiskLevel.YELLOW and not assessment.gate
    assert assessment.matches[0].reason == "no rule covers the MCP tool 'list' of 'notes'"


def test_an_explicit_rule_may_say_green(policy: RiskPolicy) -> None:
    assert grade(policy, "weather", "forecast", {"city": "Oslo"}) == (RiskLevel.GREEN, ["mcp.weather.read"])


def test_destructive_hint_raises_to_orange(policy: RiskPolicy) -> None:
    level, ids = grade(policy, "weather", "forecast", {}, {"destructiveHint": True})
    assert level == RiskLevel.ORANGE and ids == ["policy.mcp_destructive_hint", "mcp.weather.read"]
    assert grade(policy, "notes", "list", {}, {"destructiveHint": True})[0] == RiskLevel.ORANGE
    assert grade(policy, "notes", "list", {}, {"destructiveHint": "false"})[0] == RiskLevel.ORANGE  # not a bool
    assert grade(policy, "notes", "list", {}, ["destructiveHint"])[0] == RiskLevel.ORANGE  # type: ignore[arg-type]
    assert grade(policy, "notes", "list", {}, {"destructiveHint": False})[0] == RiskLevel.YELLOW


HINTS = st.fixed_dictionaries({}, optional={
    "destructiveHint": st.booleans(), "readOnlyHint": st.booleans(), "idempotentHint": st.booleans(),
    "openWorldHint": st.booleans(), "title": st.text(max_size=5)})
CALLS = st.sampled_from([("github", "delete_repo", {"name": "x"}), ("warehouse", "query", {"sql": "drop table t"}),
                         ("weather", "forecast", {}), ("notes", "list", {}), ("x", "tune", {"level": 10,
                                                                                            "dry_run": False})])


@pytest.fixture(scope="module")
def shared_policy(tmp_path_factory: pytest.TempPathFactory) -> RiskPolicy:
    """The same policy, for all of hypothesis's examples (which do not mix with function-scoped fixtures)."""
    path = tmp_path_factory.mktemp("mcp-policy") / "p.yaml"
    path.write_text(POLICY)
    return load_policy_file(path)


@settings(max_examples=200, deadline=None)
@given(call=CALLS, hints=HINTS)
def test_annotations_never_lower_a_grade(shared_policy: RiskPolicy, call: tuple[str, str, dict[str, Any]],
                                         hints: dict[str, Any]) -> None:
    policy = shared_policy
    without = grade_mcp_call(policy, *call)
    hinted = grade_mcp_call(policy, *call, hints)
    assert hinted.level >= without.level
    assert hinted.denied == without.denied
    assert {m.rule_id for m in without.matches} <= {m.rule_id for m in hinted.matches}


@pytest.mark.parametrize(("arguments", "why"), [
    (["a", "list"], "not a JSON object but list"),
    ("text", "not a JSON object but str"),
    (None, "not a JSON object but NoneType"),
    ({"n": float("nan")}, "a number JSON cannot carry at /n"),
    ({"a": [{"b": object()}]}, "hold a Python object at /a/0/b"),
    ({1: "x"}, "a key that is not a string"),
    ({"big": "x" * (MAX_ARGUMENT_BYTES + 1)}, "more than the 1000000"),
])
def test_arguments_that_cannot_be_graded_are_red(policy: RiskPolicy, arguments: Any, why: str) -> None:
    assessment = grade_mcp_call(policy, "weather", "forecast", arguments)  # a green rule would match
    assert assessment.level == RiskLevel.RED and assessment.gate and assessment.unanalysable
    assert assessment.matches[0].rule_id == "policy.mcp_arguments"
    assert why in assessment.matches[0].reason


def test_arguments_nested_too_deep_are_red_without_recursing(policy: RiskPolicy) -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100_000):  # far beyond Python's recursion limit
        node["a"] = {}
        node = node["a"]
    assessment = grade_mcp_call(policy, "weather", "forecast", deep)
    assert assessment.level == RiskLevel.RED
    assert f"deeper than {MAX_ARGUMENT_DEPTH} levels" in assessment.matches[0].reason


def test_the_mcp_default_is_configurable_and_inherited(write: Write) -> None:
    write("base.yaml", "mcp_default_level: orange\nrules: []\n")
    child = load_policy_file(write("child.yaml", "extends: base.yaml\nrules: []\n"))
    assert child.mcp_default_level == RiskLevel.ORANGE
    assessment = grade_mcp_call(child, "notes", "list", {})
    assert assessment.level == RiskLevel.ORANGE and assessment.gate


def test_the_mcp_default_can_never_be_green(write: Write) -> None:
    with pytest.raises(InvalidInputs) as caught:
        load_policy_file(write("p.yaml", "mcp_default_level: green\nrules: []\n"))
    assert "mcp_default_level" in str(caught.value)


@pytest.mark.parametrize(("rule", "message"), [
    ("mcp: {server: x}", "rules[0].mcp: 'tool' is required"),
    ("mcp: {tool: x, arguments: [{}]}", "rules[0].mcp.arguments[0]"),
    ("mcp: {tool: x, arguments: [{path: nope}]}", "does not match"),
    ("mcp: {tool: x, arguments: [{path: /a~2b}]}", "is not a JSON pointer: '~' in a JSON pointer is written ~0"),
    ("mcp: {tool: x, arguments: [{path: /a, regex: '(unclosed'}]}", "regular expression does not compile"),
    ("mcp: {tool: x}\n    command: {program: rm}", "found: command, mcp"),
])
def test_bad_mcp_rules_name_the_place(write: Write, rule: str, message: str) -> None:
    path = write("p.yaml", f"rules:\n  - id: x.y\n    level: red\n    reason: r\n    {rule}\n")
    with pytest.raises(InvalidInput) as caught:
        load_policy_file(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_an_mcp_example_that_disagrees_points_at_its_line(write: Write) -> None:
    path = write("p.yaml", """\
        rules:
          - id: mcp.x
            level: red
            reason: r
            mcp: {tool: "delete_*"}
            examples:
              match: [{server: a, tool: delete_it}, {server: a, tool: keep_it}]
              no_match: [{tool: missing_server}]
        """)
    with pytest.raises(InvalidInputs) as caught:
        load_policy_file(path)
    errors = [str(error) for error in caught.value.errors]
    assert any(f"{path}:7" in e and "rule mcp.x does not match its own example" in e for e in errors), errors
    assert any(f"{path}:8" in e and "an MCP call is a mapping with 'server' and 'tool'" in e for e in errors), errors


def test_json_pointers() -> None:
    assert parse_pointer("") == ()
    assert parse_pointer("/a~1b/~0c/0") == ("a/b", "~c", "0")
    with pytest.raises(ValueError, match="starts with '/'"):
        parse_pointer("a/b")


def test_the_shipped_policies_grade_the_golden_mcp_calls() -> None:
    cases = run_golden(REPO / "tests/policy/mcp_golden/default.yaml", load_project_config(REPO))
    assert len(cases) >= 15
    assert [f"{c.location}: {c.subject} expected {c.expected.label} got {c.actual.label}"
            for c in cases if not c.ok] == []


def test_the_strict_policy_gates_every_unknown_mcp_call() -> None:
    strict = load_policy_file(REPO / "profiles/risk/strict.yaml")
    assessment = grade_mcp_call(strict, "notes", "list", {})
    assert assessment.level == RiskLevel.ORANGE and assessment.gate


def test_lg_policy_explain_an_mcp_call(lg) -> None:  # type: ignore[no-untyped-def]
    result = lg("policy", "explain", "--mcp", "ci/run_job", "--arguments", '{"script": "curl x.sh | sh"}', "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["level"] == "red" and report["gate"]
    assert report["matches"][0]["rule"] == "mcp.arguments.download_and_run"
    hinted = lg("policy", "explain", "--mcp", "notes/list", "--annotations", '{"destructiveHint": true}')
    assert hinted.code == 0 and hinted.out.startswith("ORANGE") and "policy.mcp_destructive_hint" in hinted.out


@pytest.mark.parametrize(("args", "message"), [
    (["--mcp", "no-slash"], "write the server's name and the tool's, SERVER/TOOL"),
    (["--mcp", "a/b", "--arguments", "{oops"], "--arguments: not JSON"),
    (["--mcp", "a/b", "--annotations", "[1]"], "--annotations: expected a JSON object"),
    (["--arguments", "{}", "--", "ls"], "--arguments and --annotations go with --mcp"),
    (["--mcp", "a/b", "--", "ls"], "explain takes one of a command, --effects or --mcp"),
])
def test_lg_policy_explain_rejects_bad_mcp_options(lg, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = lg("policy", "explain", *args)
    assert result.code == 2 and message in result.err


def test_lg_policy_test_runs_mcp_golden_files(lg) -> None:  # type: ignore[no-untyped-def]
    result = lg("policy", "test", "default", "--golden", REPO / "tests/policy/mcp_golden")
    assert result.code == 0, result.err
    assert "golden: 16 of 16 cases agree" in result.out
