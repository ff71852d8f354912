"""Hostile or broken files get a clear error (exit 2) naming file, line and key: never an internal error (exit
70), never unbounded memory. Regressions for the drills of issue #20, then a fuzz test over the three kinds of
file a reviewer approves as code: pipelines, risk policies and VM profiles."""

from __future__ import annotations

import resource
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lg.cli.main import run
from lg.config.templates import TemplateProblem, render

HOSTILE_TEMPLATES = {
    "{{ 'a' * 10000000000 }}": "repetition would make 10,000,000,000",
    "{{ [0] * 10000000000 }}": "repetition would make 10,000,000,000",
    "{{ 10 ** 100000000 }}": "is larger than a template may make",
    "{{ '%10000000000s' % 'a' }}": "a width of 10,000,000,000",
    "{{ '{:>10000000000}'.format(1) }}": "a width of 10,000,000,000",
    "{{ 'a'.ljust(10000000000) }}": "10000000000 is larger than a template may ask for",
    "{{ ('a' * 1000000)|replace('a', 'a' * 1000000) }}": "replace would make",
    "{{ 'a'|center(10000000000) }}": "larger than a template may ask for",
    "{{ (['a' * 1000000] * 1000)|join }}": "join would make",
    "{{ range(10)|batch(10000000000, 'x')|list }}": "larger than a template may ask for",
    "{% for i in range(100000) %}{% for j in range(100000) %}xx{% endfor %}{% endfor %}": "renders to more than",
    "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}":
        "'namespace' cannot be used",
    "{% macro f(n) %}{{ f(n-1) ~ f(n-1) }}{% endmacro %}{{ f(40) }}": "macros cannot be used",
    "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}": "recursive loops cannot be used",
}


@pytest.mark.parametrize("template", list(HOSTILE_TEMPLATES))
def test_templates_cannot_outgrow_their_bounds(template: str) -> None:
    with pytest.raises(TemplateProblem, match=HOSTILE_TEMPLATES[template].replace("(", r"\(").replace("*", r"\*")):
        render(template, {})


def test_ordinary_templates_still_render() -> None:
    assert render("{{ 'ab' * 3 }} {{ '%5s' % 'a' }} {{ ['a', 'b']|join('-') }} {{ 2 ** 10 }}", {}) == \
        "ababab     a a-b 1024"
    assert render("{% for i in range(3) %}{{ i }}{% endfor %}{{ 'x\ny'|indent(2, true) }}", {}) == "012  x\n  y"


def test_a_template_that_spins_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lg.config.templates.RENDER_SECONDS", 0.5)
    started = time.monotonic()
    with pytest.raises(TemplateProblem, match="took longer than"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", {})
    assert time.monotonic() - started < 5


def test_validate_reports_a_template_bomb_at_its_line(write: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("p.yaml", """\
        name: bomb
        steps:
          - id: a
            run: "{{ 'a' * 10000000000 }}"
        """)
    assert run(["validate", str(path)]) == 2
    assert "p.yaml:4:10: steps[0].run: template failed: repetition would make" in capsys.readouterr().err


BROKEN_YAML = {
    "name: !!int x\nsteps: []\n": "p.yaml:1:7: name: 'x' is not a valid int (it is tagged !!int)",
    "name: !!float abc\nsteps: []\n": "p.yaml:1:7: name: 'abc' is not a valid float (it is tagged !!float)",
    "name: !!bool maybe\nsteps: []\n": "'maybe' is not a valid bool",
    "a: &a [*a]\n": "p.yaml:1:4: a[0]: an alias refers to a value that contains it",
    "a: &a {<<: *a}\n": "an alias refers to a value that contains it",
    "[" * 1000 + "]" * 1000 + "\n": "nested deeper than 64 levels",
    "[" * 300000 + "]" * 300000 + "\n": "invalid YAML: exceeded maximum nesting depth",
}


@pytest.mark.parametrize("text", list(BROKEN_YAML), ids=lambda text: text[:20])
def test_broken_yaml_is_invalid_input_not_a_crash(text: str, write: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("p.yaml", text)
    assert run(["validate", str(path)]) == 2
    assert BROKEN_YAML[text] in capsys.readouterr().err


# --- fuzz: pipelines, policies, profiles ------------------------------------------------------------------

TEXT = st.sampled_from(["a", "build", "rm -rf /", "{{ vars.x }}", "{{ 'a' * 10000000000 }}", "{{", "1h", "-1",
                        "default", "unconfined", "../../etc/shadow", "red", "orange", "lg-default", "root", ""])
SCALARS = st.one_of(TEXT, st.integers(-3, 10**12), st.booleans(), st.none(), st.floats(allow_nan=False))
PIPELINE_KEYS = ["name", "steps", "id", "run", "needs", "if", "env", "timeout", "retries", "matrix", "profile",
                 "policy", "image", "approve", "artifacts", "outputs", "vars", "secrets"]
POLICY_KEYS = ["rules", "id", "level", "command", "program", "args", "effects", "paths", "thresholds", "before",
               "effects", "extends", "approvals", "required_gates", "disable", "examples", "match", "reason"]
PROFILE_KEYS = ["machine", "vcpus", "memory_mib", "user", "capabilities", "keep", "cgroups", "pids", "seccomp",
                "apparmor", "network", "allow", "host", "ports", "selinux", "read_only_paths", "tmpfs", "optional"]


def documents(keys: list[str], required: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    values = st.recursive(SCALARS, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(keys), inner, max_size=4)), max_leaves=10)
    return st.fixed_dictionaries(required, optional=dict.fromkeys([key for key in keys if key not in required], values))


KINDS = {
    "pipeline.yaml": documents(PIPELINE_KEYS, {"name": TEXT, "steps": st.lists(
        st.dictionaries(st.sampled_from(PIPELINE_KEYS), SCALARS, max_size=5), max_size=3)}),
    "policy.yaml": documents(POLICY_KEYS, {"rules": st.lists(
        st.dictionaries(st.sampled_from(POLICY_KEYS), SCALARS, max_size=5), max_size=3)}),
    "profile.yaml": documents(PROFILE_KEYS, {"machine": st.dictionaries(
        st.sampled_from(["vcpus", "memory_mib"]), SCALARS, max_size=2)}),
}
JUNK = ["\t", ":", "- ", "{", "]", "&a ", "*a", "!!int ", "!!float ", "!!bool ", "!!python/name:os.system ",
        "\n  ", "'", '"', "\ufeff", "<<: ", "? ", "&a [*a]", "[[[[", "{{ 'x' * 99999999999 }}"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(KINDS)), data=st.data())
def test_no_file_makes_lg_crash_or_balloon(kind: str, data: st.DataObject, tmp_path: Path) -> None:
    document = data.draw(KINDS[kind])
    text = yaml.safe_dump(document)
    position = data.draw(st.integers(0, len(text)))
    text = text[:position] + data.draw(st.sampled_from(JUNK)) + text[position:]
    (tmp_path / "lg.yaml").write_text("state_dir: .lg\n")
    path = tmp_path / kind
    path.write_text(textwrap.dedent(text))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = run(["validate", str(path)])
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert code in (0, 2), text
    assert grown_mib < 256, f"validating grew the process by {grown_mib:.0f} MiB:\n{text}"
