"""Turn shell script text into the commands it would run, with a real grammar (tree-sitter-bash).

Every `command` node anywhere in the tree becomes an `Invocation`: inside pipelines, `&&`/`||` lists,
subshells, `$(…)` and backticks, loops and functions alike. Wrappers (`sudo`, `env`, `timeout`, `nice`, `xargs`…)
are looked through, and scripts handed to `sh -c`, `bash -c`, `eval` or a here-doc fed to a shell are parsed in
turn. What cannot be known statically (a command name from a variable, `eval "$x"`, `$'\\x72m'`) is reported as
unanalysable: the grader fails closed on it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 8  # nested sh -c / eval levels followed before giving up (and failing closed)
TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
TEMPLATE_WORD = "LG_TEMPLATE_VALUE"

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "busybox-sh", "ash"})
INTERPRETERS = SHELLS | {"python", "python3", "perl", "ruby", "node", "php"}
# Options that take a value, per wrapper, so the value is not mistaken for the wrapped command.
WRAPPERS: dict[str, frozenset[str]] = {
    "sudo": frozenset({"-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "--user", "--group"}),
    "doas": frozenset({"-u", "-C"}),
    "env": frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}),
    "timeout": frozenset({"-s", "--signal", "-k", "--kill-after"}),
    "nice": frozenset({"-n", "--adjustment"}),
    "ionice": frozenset({"-c", "-n", "-p"}),
    "nohup": frozenset(),
    "stdbuf": frozenset({"-i", "-o", "-e"}),
    "time": frozenset({"-f", "-o"}),
    "command": frozenset(),
    "builtin": frozenset(),
    "exec": frozenset({"-a"}),
    "xargs": frozenset({"-I", "-i", "-n", "-P", "-d", "-a", "-E", "-L", "-s", "--max-args", "--max-procs",
                        "--delimiter", "--arg-file", "--replace"}),
    "chroot": frozenset(),
    "setsid": frozenset(),
    "unbuffer": frozenset(),
}
POSITIONAL_BEFORE_COMMAND = {"timeout": 1, "chroot": 1}


@dataclass(frozen=True)
class Invocation:
    program: str | None  # None: the command name is not static (unanalysable)
    words: tuple[str, ...]  # every word after the program, as the program would receive it
    span: str  # the source text of the command
    piped_from: tuple[str, ...] = ()  # programs earlier in the same pipeline
    redirects: tuple[tuple[str, str], ...] = ()  # (operator, target)
    via: tuple[str, ...] = ()  # wrappers and shells it was found through (sudo, sh -c, eval...)
    dynamic: bool = False  # some argument is not static (a variable or substitution)

    @property
    def flags(self) -> frozenset[str]:
        """-rf is -r and -f; --force=yes is --force; after `--` nothing is a flag."""
        found: set[str] = set()
        for word in self.words:
            if word == "--":
                break
            if word.startswith("--") and len(word) > 2:
                found.add(word.split("=", 1)[0])
            elif word.startswith("-") and len(word) > 1 and not word[1].isdigit():
                found.update(f"-{letter}" for letter in word[1:] if letter.isalpha())
        return frozenset(found)

    @property
    def positionals(self) -> tuple[str, ...]:
        result, after_dashdash = [], False
        for word in self.words:
            if word == "--" and not after_dashdash:
                after_dashdash = True
            elif after_dashdash or not (word.startswith("-") and len(word) > 1):
                result.append(word)
        return tuple(result)


@dataclass(frozen=True)
class Analysis:
    invocations: tuple[Invocation, ...]
    problems: tuple[tuple[str, str], ...] = field(default=())  # (reason, span) for what could not be analysed


@functools.cache
def _parser() -> Any:
    import tree_sitter  # noqa: PLC0415 - imported only when something is graded
    import tree_sitter_bash  # noqa: PLC0415

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bash.language()))


def analyse(script: str) -> Analysis:
    """The invocations in `script` and what could not be analysed. Template placeholders are opaque words."""
    invocations: list[Invocation] = []
    problems: list[tuple[str, str]] = []
    _analyse_into(TEMPLATE.sub(TEMPLATE_WORD, script), (), 0, invocations, problems)
    return Analysis(tuple(invocations), tuple(problems))


def _analyse_into(script: str, via: tuple[str, ...], depth: int, out: list[Invocation],
                  problems: list[tuple[str, str]]) -> None:
    if depth > MAX_DEPTH:
        problems.append(("nested too deeply (sh -c / eval)", script[:80]))
        return
    source = script.encode()
    tree = _parser().parse(source)
    if tree.root_node.has_error:
        problems.append(("the shell grammar does not parse it", _error_span(tree.root_node, source)))
    walker = _Walker(source, via, depth, out, problems)
    walker.visit(tree.root_node, (), ())


def _error_span(node: Any, source: bytes) -> str:
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type == "ERROR" or current.is_missing:
            return source[current.start_byte:current.end_byte].decode(errors="replace")[:80]
        stack.extend(current.children)
    return source.decode(errors="replace")[:80]


class _Walker:
    def __init__(self, source: bytes, via: tuple[str, ...], depth: int, out: list[Invocation],
                 problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.via = via
        self.depth = depth
        self.out = out
        self.problems = problems

    def text(self, node: Any) -> str:
        return self.source[node.start_byte:node.end_byte].decode(errors="replace")

    def visit(self, node: Any, piped_from: tuple[str, ...], redirects: tuple[tuple[str, str], ...]) -> None:
        kind = node.type
        if kind == "pipeline":
            upstream: list[str] = []
            for child in node.named_children:
                self.visit(child, tuple(upstream), redirects)
                upstream.extend(self._programs_of(child))
            return
        if kind == "redirected_statement":
            own = tuple(self._redirects(node))
            body = node.child_by_field_name("body")
            for child in node.named_children:
                if body is not None and _same(child, body):
                    self.visit(child, piped_from, redirects + own)
                elif child.type not in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
                    self.visit(child, piped_from, redirects)
            self._heredocs(node, body)
            return
        if kind == "command":
            self._command(node, piped_from, redirects)
            for child in node.named_children:  # substitutions inside arguments run too
                self._visit_substitutions(child)
            return
        for child in node.named_children:
            self.visit(child, piped_from, redirects)

    def _visit_substitutions(self, node: Any) -> None:
        if node.type in ("command_substitution", "process_substitution"):
            for child in node.named_children:
                self.visit(child, (), ())
            return
        for child in node.named_children:
            self._visit_substitutions(child)

    def _programs_of(self, node: Any) -> list[str]:
        names = []
        stack = [node]
        while stack:
            current = stack.pop()
            if current.type == "command":
                name = current.child_by_field_name("name")
                if name is not None:
                    value = self.static(name)
                    if value is not None:
                        names.append(_basename(value))
            stack.extend(current.named_children)
        return names

    def _redirects(self, node: Any) -> Iterator[tuple[str, str]]:
        for child in node.named_children:
            if child.type == "file_redirect":
                operator = "".join(self.text(c) for c in child.children if not c.is_named).strip() or ">"
                destination = child.child_by_field_name("destination")
                target = self.static(destination) if destination is not None else None
                yield operator, target if target is not None else "$DYNAMIC"

    def _heredocs(self, node: Any, body: Any) -> None:
        """A here-doc fed to a shell is a script: analyse it."""
        if body is None or body.type != "command":
            return
        name = body.child_by_field_name("name")
        program = _basename(self.static(name) or "") if name is not None else ""
        if program not in SHELLS:
            return
        for child in node.named_children:
            if child.type == "heredoc_redirect":
                for part in child.named_children:
                    if part.type == "heredoc_body":
                        _analyse_into(self.text(part), (*self.via, program), self.depth + 1, self.out, self.problems)

    def static(self, node: Any) -> str | None:
        """The word's value if it is fully static (quotes and escapes resolved), else None."""
        kind = node.type
        if kind == "command_name":
            return self.static(node.named_children[0]) if node.named_children else None
        if kind == "word":
            return re.sub(r"\\(.)", r"\1", self.text(node))
        if kind == "raw_string":
            return self.text(node)[1:-1]
        if kind == "string":
            parts = node.named_children
            if any(part.type not in ("string_content",) for part in parts):
                return None
            return re.sub(r'\\([$`"\\\n])', r"\1", self.text(node)[1:-1])
        if kind == "number":
            return self.text(node)
        if kind == "concatenation":
            pieces = [self.static(child) for child in node.named_children]
            return None if any(piece is None for piece in pieces) else "".join(p for p in pieces if p)
        return None  # expansions, substitutions, ansi_c_string ($'\x72m'): not static

    def _command(self, node: Any, piped_from: tuple[str, ...], redirects: tuple[tuple[str, str], ...]) -> None:
        span = self.text(node)
        name_node = node.child_by_field_name("name")
        if name_node is None:  # only assignments (FOO=bar): nothing runs
            return
        program = self.static(name_node)
        args = list(node.children_by_field_name("argument"))
        words = [self.static(arg) for arg in args]
        if program is not None and _basename(program) in INTERPRETERS and any(
                arg.type in ("process_substitution", "command_substitution") for arg in args):
            self.problems.append((f"{_basename(program)} runs code produced by a substitution", self.text(node)))
        dynamic = any(word is None for word in words)
        values = tuple(word if word is not None else "$DYNAMIC" for word in words)
        for arg in node.children_by_field_name("redirect"):
            redirects = redirects + tuple(self._redirects_single(arg))
        if program is None or program == TEMPLATE_WORD or TEMPLATE_WORD in (program or ""):
            self.problems.append(("the command name is not static (a variable, substitution or escape)", span))
            self.out.append(Invocation(None, values, span, piped_from, redirects, self.via, dynamic))
            return
        self._emit(_basename(program), values, span, piped_from, redirects, self.via, dynamic)

    def _redirects_single(self, node: Any) -> Iterator[tuple[str, str]]:
        if node.type == "file_redirect":
            operator = "".join(self.text(c) for c in node.children if not c.is_named).strip() or ">"
            destination = node.child_by_field_name("destination")
            target = self.static(destination) if destination is not None else None
            yield operator, target if target is not None else "$DYNAMIC"

    def _emit(self, program: str, words: tuple[str, ...], span: str, piped_from: tuple[str, ...],
              redirects: tuple[tuple[str, str], ...], via: tuple[str, ...], dynamic: bool) -> None:
        self.out.append(Invocation(program, words, span, piped_from, redirects, via, dynamic))
        if program in INTERPRETERS and piped_from and _reads_stdin(program, words):
            self.problems.append((f"{program} reads its script from a pipe (from {', '.join(piped_from)})", span))
        if program in WRAPPERS:
            inner = _unwrap(program, words)
            if program == "xargs":  # xargs appends what it reads: arguments no one can see statically
                inner = (*inner, "$DYNAMIC") if inner else inner
                dynamic = True
            if inner:
                if inner[0] == "$DYNAMIC":
                    self.problems.append((f"{program} runs a command that is not static", span))
                    return
                self._emit(_basename(inner[0]), inner[1:], span, piped_from, redirects, (*via, program), dynamic)
            return
        if program in SHELLS or program == "eval":
            self._nested_script(program, words, span, via)
        elif program in INTERPRETERS and Invocation(program, words, span).flags & {"-c", "-e"}:
            code = tuple(w for w in words if not w.startswith("-"))[:1]
            if code and "$DYNAMIC" in code[0]:
                self.problems.append((f"{program} runs inline code that is not static", span))

    def _nested_script(self, program: str, words: tuple[str, ...], span: str, via: tuple[str, ...]) -> None:
        script_words: tuple[str, ...]
        if program == "eval":
            script_words = words
        elif "-c" in Invocation(program, words, span).flags:
            script_words = tuple(w for w in words if not w.startswith("-"))[:1]
        else:
            return
        if not script_words:
            return
        if "$DYNAMIC" in " ".join(script_words):
            self.problems.append((f"{program} runs a script that is not static", span))
            return
        _analyse_into(" ".join(script_words), (*via, program), self.depth + 1, self.out, self.problems)


def _unwrap(program: str, words: tuple[str, ...]) -> tuple[str, ...]:
    """The command a wrapper runs: skip its options (and their values), env's assignments, timeout's duration."""
    takes_value = WRAPPERS[program]
    positional_to_skip = POSITIONAL_BEFORE_COMMAND.get(program, 0)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            index += 1
            break
        if word.startswith("-") and len(word) > 1:
            index += 2 if word in takes_value else 1
            continue
        if program == "env" and "=" in word:
            index += 1
            continue
        if positional_to_skip:
            positional_to_skip -= 1
            index += 1
            continue
        break
    return words[index:]


def _reads_stdin(program: str, words: tuple[str, ...]) -> bool:
    """An interpreter with no script argument (or `-`) runs whatever arrives on standard input."""
    invocation = Invocation(program, words, "")
    if invocation.flags & {"-c", "-e", "-m"}:
        return False
    positionals = invocation.positionals
    return not positionals or positionals[0] == "-" or (program in SHELLS and "-s" in invocation.flags)


def _same(first: Any, second: Any) -> bool:
    """tree-sitter hands out a new wrapper object on every access: compare nodes by where they are."""
    return bool((first.start_byte, first.end_byte, first.type) == (second.start_byte, second.end_byte, second.type))


def _basename(program: str) -> str:
    return program.rsplit("/", 1)[-1]
