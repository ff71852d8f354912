"""Jinja2 templating for pipeline fields: sandboxed, strict, and errors that point at the user's line.

Templates see `vars`, `inputs`, `env`, `matrix` and `pipeline` when a pipeline is loaded. References to
`steps.<id>.outputs.<name>` can only be resolved at run time: such a template is checked now (syntax, other
names, the step ids it names) and kept as text; the runner renders it with the real outputs.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lg.config.schema_check import suggest
from lg.config.template_limits import TooLarge, check_binop, check_call, guarded_filters

if TYPE_CHECKING:
    from jinja2 import UndefinedError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

RUNTIME_NAMES = frozenset({"steps"})
FORBIDDEN_NAMES = {
    "secrets": "secrets reach a step as environment variables ($NAME), never through templates",
    # A namespace carries a value from one loop iteration to the next: doubling a string 40 times in a loop
    # took gigabytes while a pipeline was being validated.
    "namespace": "a template may not keep state across loop iterations",
}
MAX_RENDERED_CHARS = 4_000_000
"""The longest text one template may render to (a `run:` script longer than this is not a script)."""
RENDER_SECONDS = 5.0
"""How long one template may take to render or evaluate (when lg renders in its main thread) before it is
refused: loops nested in loops can spin for hours without making anything the size bounds would see."""


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
                return (f"{name!r} is not defined (templates can use: vars, inputs, env, matrix, pipeline, steps; "
                        "an if: may also call always(), success(), failure(), cancelled())")
            return str(super()._undefined_message)

    class Bounded(jinja2.sandbox.ImmutableSandboxedEnvironment):  # type: ignore[misc,name-defined]
        """The immutable sandbox, with every operation that can make a huge result checked first."""

        intercepted_binops = frozenset({"*", "**", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            check_call(__obj, args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

    # Immutable sandbox: a template can read what it is given and call safe filters, nothing else, and nothing
    # it makes can outgrow lg.config.template_limits.
    sandboxed: ImmutableSandboxedEnvironment = Bounded(
        undefined=Undefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    sandboxed.filters = guarded_filters(sandboxed.filters)
    sandboxed.globals.pop("namespace", None)  # see FORBIDDEN_NAMES: parse() then names it as forbidden
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
        _refuse_github_expressions(text)
        names = frozenset(jinja2.meta.find_undeclared_variables(environment().parse(text)))
    except jinja2.TemplateSyntaxError as error:  # also unknown filters and tests (TemplateAssertionError)
        raise TemplateProblem(f"template syntax error: {error.message}", error.lineno) from error
    for name, why in FORBIDDEN_NAMES.items():
        if name in names:
            raise TemplateProblem(f"'{name}' cannot be used in a template: {why}", None)
    _refuse_recursion(environment().parse(text))
    return ParsedTemplate(text, names)


def _refuse_recursion(tree: Any) -> None:
    """Macros and recursive loops can call themselves without bound (a doubling macro of depth 30 ran for
    minutes, a recursive loop crashed Python's stack): pipeline fields have no use for them."""
    nodes = _jinja().nodes
    for node in tree.find_all((nodes.Macro, nodes.CallBlock, nodes.For)):
        if isinstance(node, nodes.For) and not node.recursive:
            continue
        what = "recursive loops" if isinstance(node, nodes.For) else "macros"
        raise TemplateProblem(f"{what} cannot be used in a template (they can recurse without bound)", node.lineno)


def render(text: str, context: Mapping[str, Any]) -> str:
    """Render `text`; raises TemplateProblem with the template line for syntax and undefined names."""
    parse(text)
    jinja2 = _jinja()
    try:
        with render_deadline():
            return _bounded_render(environment().from_string(text), context)
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
    except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as error:
        raise TemplateProblem(f"template failed: {error}", _template_line(error)) from error


def _bounded_render(template: Any, context: Mapping[str, Any]) -> str:
    """Render chunk by chunk, refusing past MAX_RENDERED_CHARS (loops in loops multiply what they write)."""
    chunks, size = [], 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > MAX_RENDERED_CHARS:
            raise TooLarge(f"the template renders to more than {MAX_RENDERED_CHARS:,} characters")
        chunks.append(chunk)
    return "".join(chunks)


class RenderTimedOut(ArithmeticError):
    """A template ran past RENDER_SECONDS (an ArithmeticError, so render and evaluate report it as failed)."""


@contextlib.contextmanager
def render_deadline(seconds: float | None = None) -> Iterator[None]:
    """Interrupt a template that runs too long, with SIGALRM. Only the main thread can be interrupted this way,
    so elsewhere templates run without a deadline. An alarm someone else set (a test runner's timeout) is kept:
    if it is due first it fires as it would have, and otherwise it is set again, less the time spent here."""
    seconds = RENDER_SECONDS if seconds is None else seconds
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_remaining, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_remaining and outer_remaining <= seconds:
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise RenderTimedOut(f"the template took longer than {seconds:.0f}s to render")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_remaining:
            left = max(outer_remaining - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluate an `if:` expression."""
    jinja2 = _jinja()
    try:
        compiled = environment().compile_expression(expression, undefined_to_none=False)
        with render_deadline():
            return compiled(**context)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateProblem(f"expression syntax error: {error.message}", None) from error
    except jinja2.UndefinedError as error:
        raise TemplateProblem(f"undefined in expression: {_explain_undefined(error)}", None) from error
    except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError,
            jinja2.exceptions.SecurityError) as error:
        raise TemplateProblem(f"expression failed: {error}", None) from error


def _refuse_github_expressions(text: str) -> None:
    """`${{ matrix.x }}` is GitHub Actions' syntax; to Jinja it is a '$' and then `{{ matrix.x }}`, so it rendered
    silently as `$3.11` (issue #20 item 11). Found on the lexer's tokens, so that a literal `${{` kept in
    `{% raw %}` (a step writing a GitHub workflow file) is left alone."""
    tokens = list(environment().lex(text))
    for index, (line, kind, value) in enumerate(tokens[:-1]):
        if kind == "data" and value.endswith("$") and tokens[index + 1][1] == "variable_begin":
            inside = []
            for _, inner_kind, inner_value in tokens[index + 2:]:
                if inner_kind == "variable_end":
                    break
                inside.append(inner_value)
            expression = "".join(inside).strip()
            raise TemplateProblem(
                f"'${{{{ {expression} }}}}' is GitHub Actions syntax and would render as '$' then the value; lg "
                f"templates are Jinja: write {{{{ {expression} }}}} (for a literal '${{{{', wrap it in "
                "{% raw %}...{% endraw %})", line + value.count("\n"))


def github_expression_in_if(expression: str) -> str | None:
    """The expression inside `if: ${{ ... }}` (GitHub's form), or None: lg's `if:` is a bare expression."""
    stripped = expression.strip()
    if stripped.startswith("${{") and stripped.endswith("}}"):
        return stripped[3:-2].strip()
    return None


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


STATUS_FUNCTIONS = ("always", "success", "failure", "cancelled")
"""What an `if:` may call about the steps before it (lg.runner.conditions gives them their meaning)."""


def uses_status(expression: str) -> bool:
    """Whether an `if:` calls a status function (without one, the step runs only on success)."""
    return bool(expression_names(expression) & set(STATUS_FUNCTIONS))


def status_stand_ins(outcome: bool) -> dict[str, Callable[[], bool]]:
    """Status functions that all answer `outcome`, to check an `if:` before anything ran."""
    return dict.fromkeys(STATUS_FUNCTIONS, lambda: outcome)


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
