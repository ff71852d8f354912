"""Jinja2 templating for pipeline fields: sandboxed, strict, and errors that point at the user's line.

Templates see `vars`, `env`, `matrix` and `pipeline` when a pipeline is loaded. References to
`steps.<id>.outputs.<name>` can only be resolved at run time: such a template is checked now (syntax, other
names, the step ids it names) and kept as text; the runner renders it with the real outputs.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lg.config.schema_check import suggest

if TYPE_CHECKING:
    from jinja2 import UndefinedError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

RUNTIME_NAMES = frozenset({"steps"})
FORBIDDEN_NAMES = {"secrets": "secrets reach a step as environment variables ($NAME), never through templates"}


class TemplateProblem(Exception):
    """A template could not be compiled or rendered; `line` is 1-based within the template text."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@functools.cache
def _jinja() -> types.ModuleType:
    """jinja2, imported on first use: a pipeline without templates never pays for it (about 50 ms a run)."""
    import jinja2  # noqa: PLC0415
    import jinja2.meta  # noqa: PLC0415
    import jinja2.sandbox  # noqa: PLC0415

    return jinja2


@functools.cache
def environment() -> ImmutableSandboxedEnvironment:
    jinja2 = _jinja()

    class Undefined(jinja2.StrictUndefined):  # type: ignore[misc,name-defined]
        """StrictUndefined whose message names what *is* defined, with a suggestion."""

        @property
        def _undefined_message(self) -> str:
            owner = self._undefined_obj
            name = self._undefined_name
            if isinstance(owner, Scope) and isinstance(name, str):
                known = ", ".join(sorted(owner)) or "nothing"
                return f"{owner.label}.{name} is not defined{suggest(name, owner)} ({owner.label} has: {known})"
            if isinstance(name, str) and owner is jinja2.utils.missing:
                return f"{name!r} is not defined (templates can use: vars, env, matrix, pipeline, steps)"
            return str(super()._undefined_message)

    # Immutable sandbox: a template can read what it is given and call safe filters, nothing else.
    sandboxed: ImmutableSandboxedEnvironment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        undefined=Undefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    return sandboxed


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


@dataclass(frozen=True)
class ParsedTemplate:
    text: str
    names: frozenset[str]  # top-level names the template reads

    @property
    def needs_runtime(self) -> bool:
        return bool(self.names & RUNTIME_NAMES)


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> ParsedTemplate:
    jinja2 = _jinja()
    try:
        names = frozenset(jinja2.meta.find_undeclared_variables(environment().parse(text)))
    except jinja2.TemplateSyntaxError as error:  # also unknown filters and tests (TemplateAssertionError)
        raise TemplateProblem(f"template syntax error: {error.message}", error.lineno) from error
    for name, why in FORBIDDEN_NAMES.items():
        if name in names:
            raise TemplateProblem(f"'{name}' cannot be used in a template: {why}", None)
    return ParsedTemplate(text, names)


def render(text: str, context: Mapping[str, Any]) -> str:
    """Render `text`; raises TemplateProblem with the template line for syntax and undefined names."""
    parse(text)
    jinja2 = _jinja()
    try:
        rendered: str = environment().from_string(text).render(context)
        return rendered
    except jinja2.TemplateSyntaxError as error:
        raise TemplateProblem(f"template syntax error: {error.message}", error.lineno) from error
    except TemplateProblem as problem:  # raised by a probe standing in for `steps`
        problem.line = problem.line or _template_line(problem)
        raise
    except jinja2.UndefinedError as error:
        raise TemplateProblem(f"undefined in template: {_explain_undefined(error)}", _template_line(error)) \
            from error
    except jinja2.exceptions.SecurityError as error:
        raise TemplateProblem(f"not allowed in a template: {error}", _template_line(error)) from error
    except (TypeError, ValueError, ArithmeticError, LookupError) as error:
        raise TemplateProblem(f"template failed: {error}", _template_line(error)) from error


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluate an `if:` expression."""
    jinja2 = _jinja()
    try:
        compiled = environment().compile_expression(expression, undefined_to_none=False)
        return compiled(**context)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateProblem(f"expression syntax error: {error.message}", None) from error
    except jinja2.UndefinedError as error:
        raise TemplateProblem(f"undefined in expression: {_explain_undefined(error)}", None) from error
    except (TypeError, ValueError, ArithmeticError, LookupError, jinja2.exceptions.SecurityError) as error:
        raise TemplateProblem(f"expression failed: {error}", None) from error


def expression_names(expression: str) -> frozenset[str]:
    jinja2 = _jinja()
    try:
        names = frozenset(jinja2.meta.find_undeclared_variables(environment().parse("{{ (" + expression + ") }}")))
    except jinja2.TemplateSyntaxError as error:
        raise TemplateProblem(f"expression syntax error: {error.message}", None) from error
    for name, why in FORBIDDEN_NAMES.items():
        if name in names:
            raise TemplateProblem(f"'{name}' cannot be used in an expression: {why}", None)
    return names


class Scope(dict[str, Any]):
    """A dict that says which names it has when a template asks for one it lacks."""

    def __init__(self, label: str, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self.label = label

    def __repr__(self) -> str:
        known = ", ".join(sorted(self)) or "none"
        return f"{self.label} (defined: {known})"


def _explain_undefined(error: UndefinedError) -> str:
    return error.message or str(error)


def _template_line(error: BaseException) -> int | None:
    """Jinja rewrites tracebacks so template frames carry the template's own line numbers."""
    line = None
    traceback: types.TracebackType | None = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == "<template>":
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


class StepsProbe:
    """Stands in for `steps` while a pipeline is validated: records which step ids a template reads."""

    def __init__(self, known_ids: Mapping[str, frozenset[str]], on_unknown: Callable[[str], None]) -> None:
        self._known = known_ids
        self._on_unknown = on_unknown

    def __getattr__(self, step_id: str) -> Any:
        return self[step_id]

    def __getitem__(self, step_id: str) -> Any:
        if step_id not in self._known:
            self._on_unknown(step_id)
        outputs = dict.fromkeys(self._known.get(step_id, frozenset()), "")
        return Scope(f"steps.{step_id}", {"outputs": _OutputsProbe(step_id, outputs), "status": "success"})


class _OutputsProbe(Scope):
    def __init__(self, step_id: str, outputs: Mapping[str, Any]) -> None:
        super().__init__(f"steps.{step_id}.outputs", outputs)
