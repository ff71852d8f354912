"""Load a pipeline file into the immutable model, reporting every problem at its file, line and key."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lg.config import inputs as run_inputs
from lg.config import step_data, templates
from lg.config.durations import parse_duration
from lg.config.pipeline_schema import MATRIX_KEYWORDS, pipeline_schema
from lg.config.project import load_project_config
from lg.config.schema_check import check_schema, suggest
from lg.config.yamlsource import KeyPath, SourceDoc, load_yaml
from lg.errors import InvalidInput, InvalidInputs
from lg.model import (
    AgentBudget,
    AgentSpec,
    ApprovalSpec,
    InputSpec,
    MatrixGroup,
    McpServerSpec,
    OutputSpec,
    Pipeline,
    ProjectConfig,
    SecretSpec,
    Step,
    frozen_map,
)

KNOWN_STEP_KINDS: dict[str, str] = {"agent": "an LLM agent whose tool calls run in the step's VM (docs/agents.md)"}
"""`uses:` kinds this version runs."""


def load_pipeline(path: Path, config: ProjectConfig | None = None,
                  input_values: Mapping[str, str] | None = None) -> Pipeline:
    """Read, validate and build a pipeline. Raises InvalidInput(s) naming file, line and key.

    `input_values` are the run's `--input NAME=VALUE`s, checked against the declared `inputs:`; None loads the
    pipeline for checking only (`lg validate`), with a placeholder for each required input."""
    doc = load_yaml(path)
    return build_pipeline(doc, config or load_project_config(path.parent), input_values)


def build_pipeline(doc: SourceDoc, config: ProjectConfig,
                   input_values: Mapping[str, str] | None = None) -> Pipeline:
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else f"a {type(doc.data).__name__}"
        raise doc.error((), f"a pipeline must be a mapping with 'name' and 'steps', not {kind}")
    errors = check_schema(doc, pipeline_schema())
    if errors:
        raise InvalidInputs(errors)
    builder = _PipelineBuilder(doc, config, input_values)
    pipeline = builder.build()
    if builder.errors:
        # Each expansion of a matrix step is checked on its own: one mistake in its text is one error, not N.
        unique = {str(error): error for error in reversed(builder.errors)}
        raise InvalidInputs(sorted(unique.values(), key=_line_of))
    return pipeline


def _line_of(error: InvalidInput) -> tuple[int, int]:
    location = error.location
    return (location.line or 0, location.column or 0) if location else (0, 0)


@dataclass(frozen=True)
class _Expansion:
    """One step after matrix expansion, with where it came from."""

    index: int  # position in the file's `steps` list
    base_id: str
    step_id: str
    raw: Mapping[str, Any]
    matrix: Mapping[str, str]

    @property
    def key_path(self) -> KeyPath:
        return ("steps", self.index)


class _PipelineBuilder:
    def __init__(self, doc: SourceDoc, config: ProjectConfig, input_values: Mapping[str, str] | None) -> None:
        self.doc = doc
        self.data: dict[str, Any] = doc.data
        self.config = config
        self.given_inputs = input_values
        self.errors: list[InvalidInput] = []

    def fail(self, key_path: KeyPath, message: str, *, at_key: bool = False) -> None:
        self.errors.append(self.doc.error(key_path, message, at_key=at_key))

    # --- the whole pipeline -----------------------------------------------------------------------------

    def build(self) -> Pipeline:
        variables = {name: _text(value) for name, value in self.data.get("vars", {}).items()}
        input_specs = self._input_specs()
        # A mistake in a declaration is reported with the file's other errors; a bad --input stops here (exit 2).
        input_values = run_inputs.bind(input_specs, None if self.errors else self.given_inputs)
        base_context = {
            "vars": templates.Scope("vars", variables),
            "pipeline": templates.Scope("pipeline", {"name": self.data["name"]}),
            "inputs": templates.Scope("inputs", run_inputs.template_values(input_values)),
        }
        pipeline_env = self._render_map(self.data.get("env", {}), ("env",), base_context)
        base_context["env"] = templates.Scope("env", pipeline_env)
        expansions = self._unique(list(self._expand_all()))
        by_base: dict[str, list[str]] = {}
        for expansion in expansions:
            by_base.setdefault(expansion.base_id, []).append(expansion.step_id)
        all_ids = frozenset(e.step_id for e in expansions)
        self.shards = {**{step_id: [step_id] for step_id in all_ids}, **by_base}
        self.raw_by_id = {e.step_id: e.raw for e in expansions}
        needs = {e.step_id: self._resolve_needs(e, by_base, all_ids) for e in expansions}
        self._check_cycles(expansions, needs)
        upstream = _transitive(needs)
        outputs = {e.step_id: frozenset(_output_names(e.raw.get("outputs"))) for e in expansions}
        steps = tuple(
            self._build_step(e, needs[e.step_id], upstream.get(e.step_id, set()), outputs, base_context)
            for e in expansions
        )
        return Pipeline(
            path=self.doc.path,
            name=self.data["name"],
            description=self.data.get("description", ""),
            hypervisor=self.data.get("hypervisor", self.config.hypervisor),
            image=self.data.get("image", self.config.image),
            profile=self.data.get("profile", self.config.profile),
            policy=self.data.get("policy", self.config.policy),
            vars=frozen_map(variables),
            env=frozen_map(pipeline_env),
            secrets=self._secrets(),
            timeout=_duration_or_none(self.data.get("timeout")),
            steps=steps,
            policy_location=self.doc.location(("policy",)),
            profile_location=self.doc.location(("profile",)),
            max_parallel=self.data.get("max_parallel"),
            fail_fast=self.data.get("fail_fast", True),
            inputs=input_specs,
            input_values=MappingProxyType(input_values),
        )

    def _input_specs(self) -> tuple[InputSpec, ...]:
        specs = []
        for name, raw in self.data.get("inputs", {}).items():
            key_path = ("inputs", name)
            kind = raw.get("type", "string")
            options = tuple(_text(option) for option in raw.get("options", ()))
            if kind == "choice" and not options:
                self.fail(key_path, "a choice input needs 'options': the values it accepts")
            elif options and kind != "choice":
                self.fail((*key_path, "options"), f"'options' is for a choice input; this one is a {kind}",
                          at_key=True)
            default = raw.get("default")
            if default is not None and (kind != "choice" or options):
                problem = run_inputs.check_default(kind, default, options)
                if problem is not None:
                    self.fail((*key_path, "default"), problem)
                    default = None
                else:
                    default = run_inputs.typed_default(kind, default, options)
            specs.append(InputSpec(name, kind, default, raw.get("description", ""), options,
                                   self.doc.location(key_path, at_key=True)))
        return tuple(specs)

    def _secrets(self) -> tuple[SecretSpec, ...]:
        raw = self.data.get("secrets", [])
        if isinstance(raw, list):
            return tuple(SecretSpec(name=name, from_env=name) for name in raw)
        base = self.doc.path.parent
        return tuple(
            SecretSpec(
                name=name,
                from_env=source.get("env"),
                from_file=(base / Path(source["file"]).expanduser()) if "file" in source else None,
            )
            for name, source in raw.items()
        )

    # --- matrix expansion and ids ------------------------------------------------------------------------

    def _expand_all(self) -> Iterator[_Expansion]:
        for index, raw in enumerate(self.data["steps"]):
            matrix = raw.get("matrix")
            if not matrix:
                yield _Expansion(index, raw["id"], raw["id"], raw, {})
                continue
            combinations = _matrix_combinations(matrix)
            if not combinations:
                self.fail(("steps", index, "matrix"), "the matrix expands to no step: give it an axis (a list of "
                          "values) or an include, and do not exclude every combination")
            for values in combinations:
                suffix = "-".join(_slug(value) for value in values.values())
                yield _Expansion(index, raw["id"], f"{raw['id']}-{suffix}", raw, values)

    def _unique(self, expansions: list[_Expansion]) -> list[_Expansion]:
        seen: dict[str, _Expansion] = {}
        unique = []
        for expansion in expansions:
            first = seen.get(expansion.step_id)
            if first is None:
                seen[expansion.step_id] = expansion
                unique.append(expansion)
            elif first.index == expansion.index:
                self.fail((*expansion.key_path, "matrix"),
                          f"matrix expands to the duplicate step id {expansion.step_id!r}; "
                          "make the values distinct after lowercasing and replacing other characters by '-'")
            else:
                line = self.doc.location((*first.key_path, "id")).line
                self.fail((*expansion.key_path, "id"),
                          f"duplicate step id {expansion.step_id!r} (first defined at line {line})")
        return unique

    # --- dependencies ------------------------------------------------------------------------------------

    def _resolve_needs(self, expansion: _Expansion, by_base: Mapping[str, list[str]],
                       all_ids: frozenset[str]) -> tuple[str, ...]:
        """`needs` names a step id, or a matrix step's base id (meaning every one of its expansions)."""
        raw = expansion.raw.get("needs", [])
        names = [raw] if isinstance(raw, str) else list(raw)
        resolved: list[str] = []
        for position, name in enumerate(names):
            key_path = (*expansion.key_path, "needs", position) if isinstance(raw, list) \
                else (*expansion.key_path, "needs")
            if name in by_base:
                resolved.extend(by_base[name])
            elif name in all_ids:
                resolved.append(name)
            else:
                self.fail(key_path, f"unknown step {name!r}{suggest(name, list(by_base) + sorted(all_ids))}")
        return tuple(dict.fromkeys(resolved))

    def _check_cycles(self, expansions: list[_Expansion], needs: Mapping[str, tuple[str, ...]]) -> None:
        cycle = _find_cycle(needs)
        if cycle is None:
            return
        first = next(e for e in expansions if e.step_id == cycle[0])
        self.fail((*first.key_path, "needs"), "dependency cycle: " + " -> ".join([*cycle, cycle[0]]))

    # --- one step ----------------------------------------------------------------------------------------

    def _build_step(
        self,
        expansion: _Expansion,
        needs: tuple[str, ...],
        upstream: set[str],
        outputs: Mapping[str, frozenset[str]],
        base_context: Mapping[str, Any],
    ) -> Step:
        raw, key_path = expansion.raw, expansion.key_path
        context = {**base_context, "matrix": templates.Scope("matrix", expansion.matrix)}
        probe = self._steps_probe(expansion, upstream, outputs)
        self._check_kind(raw, key_path)
        run = raw.get("run")
        name = raw.get("name") or _default_name(expansion)
        condition = raw.get("if")
        if isinstance(condition, str):
            self._check_expression(condition, (*key_path, "if"), context, probe)
        return Step(
            id=expansion.step_id,
            name=self._render((*key_path, "name"), name, context, probe),
            run=self._render((*key_path, "run"), run, context, probe) if run is not None else None,
            uses=raw.get("uses"),
            needs=needs,
            condition=_condition(condition),
            env=frozen_map(self._render_map(raw.get("env", {}), (*key_path, "env"), context, probe)),
            workdir=self._workdir(raw.get("workdir"), key_path, context, probe),
            timeout=_duration_or_none(raw.get("timeout")),
            retries=raw.get("retries", 0),
            continue_on_error=raw.get("continue_on_error", False),
            outputs=_outputs(raw.get("outputs")),
            artifacts=tuple(raw.get("artifacts", ())),
            matrix=frozen_map(dict(expansion.matrix)),
            profile=raw.get("profile"),
            hypervisor=raw.get("hypervisor"),
            image=raw.get("image"),
            approve=_approval(raw.get("approve")),
            location=self.doc.location(key_path),
            cache=step_data.cache_spec(raw.get("cache"), key_path, context, self.fail, self._template_error),
            artifacts_from=frozen_map(step_data.artifacts_from(
                raw.get("artifacts_from"), key_path, expansion.step_id, self.shards, upstream,
                lambda shard: bool(self.raw_by_id[shard].get("artifacts")), self.fail)),
            matrix_group=_matrix_group(expansion),
            agent=self._agent(raw, key_path, context, probe),
        )

    def _agent(self, raw: Mapping[str, Any], key_path: KeyPath, context: Mapping[str, Any],
               probe: templates.StepsProbe) -> AgentSpec | None:
        """`uses: agent` with its `with:` keys (the schema checked their shapes)."""
        given = raw.get("with")
        if raw.get("uses") != "agent" or "run" in raw:
            if given is not None and "uses" not in raw:
                self.fail((*key_path, "with"), "'with' belongs to a step with 'uses'", at_key=True)
            return None
        if given is None:
            self.fail((*key_path, "uses"), "an agent step needs 'with:' giving at least model and task")
            return None
        for key, why in AGENT_REFUSED_KEYS.items():
            if key in raw:
                self.fail((*key_path, key), f"'{key}' does not apply to an agent step ({why})", at_key=True)
        api_key = given.get("api_key")
        declared = set(_secret_names(self.data.get("secrets")))
        if api_key is not None and api_key not in declared:
            self.fail((*key_path, "with", "api_key"),
                      f"api_key names the secret {api_key!r}, which is not declared in 'secrets:'"
                      f"{suggest(api_key, sorted(declared))}")
        names = [server["name"] for server in given.get("mcp", [])]
        for position, name in enumerate(names):
            if name in names[:position]:
                self.fail((*key_path, "with", "mcp", position, "name"), f"duplicate MCP server name {name!r}")
        budget = given.get("budget", {})
        return AgentSpec(
            model=given["model"],
            task=self._render((*key_path, "with", "task"), given["task"], context, probe),
            tools=tuple(given.get("tools", ())),
            mcp=tuple(McpServerSpec(server["name"], server["url"]) for server in given.get("mcp", [])),
            max_turns=given.get("max_turns", 20),
            budget=AgentBudget(usd=budget.get("usd"), tokens=budget.get("tokens")),
            api_key=api_key,
            api_base=given.get("api_base"),
        )

    def _check_kind(self, raw: Mapping[str, Any], key_path: KeyPath) -> None:
        if "run" in raw and "uses" in raw:
            self.fail((*key_path, "uses"), "a step has either 'run' or 'uses', not both", at_key=True)
        elif "run" not in raw and "uses" not in raw:
            self.fail(key_path, "a step needs 'run' (a shell script) or 'uses'")
        elif "uses" in raw and raw["uses"] not in KNOWN_STEP_KINDS:
            known = ", ".join(KNOWN_STEP_KINDS) or "none yet; agent steps arrive in a later version"
            self.fail((*key_path, "uses"), f"unknown step kind {raw['uses']!r} (known kinds: {known})")

    def _workdir(self, raw: str | None, key_path: KeyPath, context: Mapping[str, Any],
                 probe: templates.StepsProbe) -> str | None:
        if raw is None:
            return None
        workdir = self._render((*key_path, "workdir"), raw, context, probe)
        parts = Path(workdir).parts
        if workdir.startswith("/") or ".." in parts:
            self.fail((*key_path, "workdir"), "workdir must stay inside the workspace (relative, no '..')")
        return workdir

    def _steps_probe(self, expansion: _Expansion, upstream: set[str],
                     outputs: Mapping[str, frozenset[str]]) -> templates.StepsProbe:
        def unknown(step_id: str) -> None:
            hint = suggest(step_id, list(outputs))
            raise templates.TemplateProblem(f"steps.{step_id} names an unknown step{hint}", None)

        visible = {step_id: names for step_id, names in outputs.items() if step_id in upstream}

        def not_upstream(step_id: str) -> None:
            if step_id in outputs:
                raise templates.TemplateProblem(
                    f"step {expansion.step_id!r} reads steps.{step_id} but does not need {step_id!r} "
                    "(add it to 'needs')", None)
            unknown(step_id)

        return templates.StepsProbe(visible, not_upstream)

    # --- templates ---------------------------------------------------------------------------------------

    def _render(self, key_path: KeyPath, text: str, context: Mapping[str, Any],
                probe: templates.StepsProbe | None = None) -> str:
        """Render what can be rendered now; keep (but check) templates that read step outputs."""
        if not templates.is_template(text):
            return text
        try:
            parsed = templates.parse(text)
            if parsed.needs_runtime:
                templates.render(text, {**context, "steps": probe})
                return text
            return templates.render(text, context)
        except templates.TemplateProblem as problem:
            self._template_error(key_path, problem)
            return text

    def _render_map(self, raw: Mapping[str, Any], key_path: KeyPath, context: Mapping[str, Any],
                    probe: templates.StepsProbe | None = None) -> dict[str, str]:
        return {
            name: self._render((*key_path, name), _text(value), context, probe) for name, value in raw.items()
        }

    def _check_expression(self, expression: str, key_path: KeyPath, context: Mapping[str, Any],
                          probe: templates.StepsProbe) -> None:
        github = templates.github_expression_in_if(expression)
        if github is not None:
            self.fail(key_path, f"'{expression.strip()}' is GitHub Actions syntax; lg's if: is a bare Jinja "
                                f"expression: write  if: {github}")
            return
        try:
            names = templates.expression_names(expression)
            # Each status function is tried both ways: `failure() and vars.x == 'y'` is checked past `and`
            for outcome in (True, False):
                functions = templates.status_stand_ins(outcome)
                if "steps" in names:
                    templates.evaluate(expression, {**context, **functions, "steps": probe})
                else:
                    templates.evaluate(expression, {**context, **functions})
        except templates.TemplateProblem as problem:
            self._template_error(key_path, problem)

    def _template_error(self, key_path: KeyPath, problem: templates.TemplateProblem) -> None:
        location = self.doc.location(key_path)
        if problem.line is not None and location.line is not None and problem.line > 1:
            location = type(location)(location.path, location.line + problem.line - 1, None,
                                      location.key_path)
        self.errors.append(InvalidInput(problem.message, location))


# --- helpers ---------------------------------------------------------------------------------------------


AGENT_REFUSED_KEYS: dict[str, str] = {
    "retries": "a retry would run again tool calls a reviewer approved once",
    "cache": "its VM may be saved and restored at tool-call gates; declare the cache on a `run:` step",
    "artifacts": "collect them in a `run:` step after it",
    "artifacts_from": "the agent can read the workspace; deliver artifacts with a `run:` step",
    "workdir": "its tools work from the workspace root; give paths relative to it in the task",
}
"""Step keys an agent step refuses, and why (each said at its line)."""


def _secret_names(raw: Any) -> list[str]:
    return list(raw) if isinstance(raw, list | dict) else []


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", value.lower()).strip("-") or "x"


def _default_name(expansion: _Expansion) -> str:
    if not expansion.matrix:
        return ""
    values = ", ".join(expansion.matrix.values())
    return f"{expansion.base_id} ({values})"


def _matrix_combinations(matrix: Mapping[str, Any]) -> list[dict[str, str]]:
    """The axes' product, less `exclude`, then `include` as GitHub Actions does it (docs/pipeline.md): an entry
    adds its other values to every combination whose axis values it matches (never changing an axis value),
    and one that matches none is a combination of its own."""
    axes = {name: [_text(v) for v in values] for name, values in matrix.items() if name not in MATRIX_KEYWORDS}
    excluded = [{k: _text(v) for k, v in rule.items()} for rule in matrix.get("exclude", [])]
    combinations = [dict(zip(axes, combination, strict=True)) for combination in itertools.product(*axes.values())
                    ] if axes else []
    combinations = [values for values in combinations
                    if not any(all(values.get(k) == v for k, v in rule.items()) for rule in excluded)]
    expanded = len(combinations)
    for entry in matrix.get("include", []):
        values = {k: _text(v) for k, v in entry.items()}
        matching = [combination for combination in combinations[:expanded]
                    if all(combination[k] == v for k, v in values.items() if k in axes)]
        for combination in matching:
            combination.update({k: v for k, v in values.items() if k not in axes})
        if not matching:
            combinations.append(values)
    return combinations


def _matrix_group(expansion: _Expansion) -> MatrixGroup | None:
    matrix = expansion.raw.get("matrix")
    if not matrix:
        return None
    return MatrixGroup(expansion.base_id, matrix.get("max_parallel"), matrix.get("fail_fast"))


def _condition(raw: str | bool | None) -> str | None:
    """`if: true` (or none) means always; `if: false` is kept as the expression 'false'."""
    if raw is None or raw is True:
        return None
    return "false" if raw is False else raw


def _output_names(raw: Any) -> list[str]:
    if raw is None:
        return []
    return list(raw) if isinstance(raw, list | dict) else []


def _outputs(raw: Any) -> tuple[OutputSpec, ...]:
    if isinstance(raw, dict):
        return tuple(OutputSpec(name=name, file=path) for name, path in raw.items())
    return tuple(OutputSpec(name=name) for name in raw or [])


def _approval(raw: Any) -> ApprovalSpec | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return ApprovalSpec()
    timeout = raw.get("timeout")
    return ApprovalSpec(
        approvers=tuple(raw.get("approvers", ())),
        count=raw.get("count", 1),
        timeout=parse_duration(timeout) if timeout is not None else None,
        on_timeout=raw.get("on_timeout", "reject"),
        reason=raw.get("reason", ""),
    )


def _duration_or_none(raw: Any) -> float | None:
    return parse_duration(raw) if raw is not None else None


def _find_cycle(needs: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """One dependency cycle, in order, or None. Iterative DFS: a 500-step chain must not hit recursion limits."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in needs:
        if state.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(needs.get(root, ())))]
        state[root] = 1
        path.append(root)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child):]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(needs.get(child, ()))))
    return None


def _transitive(needs: Mapping[str, tuple[str, ...]]) -> dict[str, set[str]]:
    """Every step's transitive dependencies (assumes no cycle was found, or tolerates one)."""
    result: dict[str, set[str]] = {}
    for step_id in needs:
        seen: set[str] = set()
        frontier = list(needs.get(step_id, ()))
        while frontier:
            current = frontier.pop()
            if current not in seen:
                seen.add(current)
                frontier.extend(needs.get(current, ()))
        result[step_id] = seen
    return result


def topological_order(pipeline: Pipeline) -> list[Step]:
    """Steps in an order where every step follows everything it needs, stable with respect to the file."""
    placed: set[str] = set()
    order: list[Step] = []
    remaining = list(pipeline.steps)
    while remaining:
        ready = [step for step in remaining if all(need in placed for need in step.needs)]
        if not ready:  # unreachable after validation; guard anyway rather than loop forever
            raise InvalidInput("dependency cycle among: " + ", ".join(s.id for s in remaining))
        for step in ready:
            placed.add(step.id)
            order.append(step)
        remaining = [step for step in remaining if step.id not in placed]
    return order
