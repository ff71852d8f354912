"""Policies that do not load stop everything, with file:line; examples, extends and disable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.errors import InvalidInput, InvalidInputs
from lg.policy.load import load_policy_file

Write = Callable[[str, str], Path]
RULE = "  - {id: x.y, level: red, reason: r, command: {program: rm}}\n"


def errors_of(path: Path) -> list[str]:
    with pytest.raises(InvalidInput) as caught:
        load_policy_file(path)
    error = caught.value
    return [str(e) for e in error.errors] if isinstance(error, InvalidInputs) else [str(error)]


def test_unknown_rule_field(write: Write) -> None:
    path = write("p.yaml", "rules:\n  - {id: x.y, level: red, reason: r, comand: {program: rm}}\n")
    assert any("unknown key 'comand' (did you mean 'command'?)" in e for e in errors_of(path))


def test_bad_level_and_bad_regex(write: Write) -> None:
    path = write("p.yaml", "rules:\n  - {id: x.y, level: crimson, reason: r, command: {program: rm}}\n")
    assert "'crimson' is not one of 'green', 'yellow', 'orange', 'red'" in errors_of(path)[0]
    path = write("q.yaml", "rules:\n  - id: x.y\n    level: red\n    reason: r\n    command: {program: rm, "
                           "args_regex: '(unclosed'}\n")
    expected = f"{path}:5:40: rules[0].command.args_regex: regular expression does not compile"
    assert errors_of(path)[0].startswith(expected)


def test_rules_that_can_never_match(write: Write) -> None:
    path = write("p.yaml", "rules:\n  - {id: x.y, level: red, reason: r}\n")
    assert "a rule matches exactly one of command" in errors_of(path)[0]
    path = write("q.yaml", "rules:\n  - {id: x.y, level: red, reason: r, command: {program: rm, flags: [[rf]]}}\n")
    assert "'rf' can never match" in errors_of(path)[0]
    path = write("r.yaml", "rules:\n  - {id: x.y, level: red, reason: r, "
                           "effects: {kinds: [deleted], executable: true}}\n")
    assert "can never match" in errors_of(path)[0]


def test_an_example_that_disagrees_points_at_its_line(write: Write) -> None:
    path = write("p.yaml", """\
        rules:
          - id: exec.rm
            level: red
            reason: r
            command: {program: rm, flags: [[-r]]}
            examples:
              match: ["rm -r x", "rm x"]
              no_match: ["rm -r y"]
        """)
    assert errors_of(path) == [
        f"{path}:7:26: rules[0].examples.match[1]: rule exec.rm does not match its own example 'rm x'",
        f"{path}:8:18: rules[0].examples.no_match[0]: rule exec.rm matches its own example 'rm -r y'",
    ]


def test_extends_overrides_and_disables(write: Write) -> None:
    write("base.yaml", "default_level: green\nrules:\n" + RULE + "  - {id: x.z, level: red, reason: r, allow: [ls]}\n")
    path = write("team.yaml", "extends: ./base.yaml\ndisable: [x.z]\nthresholds: {before: yellow}\nrules:\n"
                              "  - {id: x.y, level: yellow, reason: softer, command: {program: rm}}\n")
    policy = load_policy_file(path)
    assert [(r.id, r.level.label) for r in policy.rules] == [("x.y", "yellow")]
    assert policy.thresholds.before.label == "yellow" and policy.default_level.label == "green"


def test_extend_cycles_and_missing_files(write: Write) -> None:
    write("a.yaml", "extends: ./b.yaml\nrules: []\n")
    path = write("b.yaml", "extends: ./a.yaml\nrules: []\n")
    assert "extends cycle: b.yaml -> a.yaml -> b.yaml" in errors_of(path)[0]
    path = write("c.yaml", "extends: ./nowhere.yaml\nrules: []\n")
    assert errors_of(path)[0].startswith(f"{path}:1:10: extends: risk policy file './nowhere.yaml' not found")
    path = write("d.yaml", "disable: [x.y]\nrules: []\n")
    assert "'disable' needs 'extends'" in errors_of(path)[0]
    write("e.yaml", "rules:\n" + RULE)
    path = write("f.yaml", "extends: ./e.yaml\ndisable: [nope.nope]\nrules: []\n")
    assert "e has no rule 'nope.nope' to disable" in errors_of(path)[0]


def test_duplicate_rule_ids(write: Write) -> None:
    path = write("p.yaml", "rules:\n" + RULE + RULE)
    assert "duplicate rule id 'x.y'" in errors_of(path)[0]


def test_cli_bad_input_exits_2(lg: Callable[..., Any], write: Write) -> None:
    bad = write("bad.yaml", "rules:\n  - {id: x.y, level: red, reason: r, comand: {}}\n")
    result = lg("validate", bad)
    assert result.code == 2 and f"{bad}:2:38" in result.err
    pipeline = write("p.yaml", "name: x\npolicy: nonexistent\nsteps: [{id: a, run: echo}]\n")
    result = lg("validate", pipeline)
    assert result.code == 2 and "no risk policy named 'nonexistent'" in result.err and f"{pipeline}:2:9" in result.err
    assert lg("policy", "explain", "--policy", str(bad), "--", "ls").code == 2


def test_cli_explain(lg: Callable[..., Any], write: Write) -> None:
    result = lg("policy", "explain", "--json", "--", "git push --force")
    data = json.loads(result.out)
    assert result.code == 0 and data["level"] == "red" and data["gate"] is True
    changes = write("changes.json", json.dumps([{"path": "go.sum", "kind": "modified"}]))
    data = json.loads(lg("policy", "explain", "--json", "--effects", changes).out)
    assert data["matches"][0]["rule"] == "effects.dependencies"
    assert lg("policy", "explain").code == 2
    assert "RED" in lg("policy", "explain", "--", "rm -rf /").out


EXAMPLED = """\
    rules:
      - id: exec.rm
        level: red
        reason: r
        command: {program: rm, flags: [[-r]]}
        examples:
          match: ["rm -r x"]
          no_match: ["%s"]
    """


def test_examples_that_passed_are_not_checked_again_and_failures_always_are(
        write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lg.config.verdicts: a pass is remembered for exactly that content and that lg; a failure never is."""
    from lg.config import verdicts
    from lg.policy import grade

    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    checked: list[object] = []
    real = grade.rule_matches_example
    def counted(rule: Any, example: Any, *context: Any) -> bool:
        checked.append(example)
        return real(rule, example, *context)

    monkeypatch.setattr(grade, "rule_matches_example", counted)
    load_policy_file(write("a.yaml", EXAMPLED % "rm y"))
    assert checked == ["rm -r x", "rm y"]
    load_policy_file(write("b.yaml", EXAMPLED % "rm y"))  # the same rules in another file: not checked again
    assert len(checked) == 2
    monkeypatch.setattr(verdicts, "lg_source_digest", lambda: "another lg")
    load_policy_file(write("c.yaml", EXAMPLED % "rm y"))  # another lg may match differently: checked
    assert len(checked) == 4
    for name in ("d.yaml", "e.yaml"):  # a failing example is found, with its line, every time
        assert errors_of(write(name, EXAMPLED % "rm -r y"))[0].endswith("matches its own example 'rm -r y'")
