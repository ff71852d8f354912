"""Turn shell script text into the commands it would run, with a real grammar (tree-sitter-bash).

Every `command` node anywhere in the tree becomes an `Invocation`: inside pipelines, `&&`/`||` lists,
subshells, `$(…)` and backticks, loops and functions alike. What a command runs in turn is followed
(lg.policy.programs): wrappers (`sudo`, `env`, `timeout`, `busybox`, `xargs`…), options that run code
(`git -c core.pager=…`, `find -exec`, `tar --to-command`…), scripts handed to `sh -c`, `eval`, `trap`, a here-doc
or a here-string fed to a shell, and inline interpreter code (lg.policy.inline). What cannot be known statically (a
command name from a variable, `eval "$x"`, `$'\\x72m'`, a globbed command name) is reported as unanalysable: the
grader fails closed on it.
"""

from __future__ import annotations

import functools
import posixpath
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from lg.policy.inline import InlineReading, inline_code, python_module, read_inline
from lg.policy.network import network_use
from lg.policy.programs import DYNAMIC, SHELLS, Nested, read_program

MAX_DEPTH = 8  # nested sh -c / eval levels followed before giving up (and failing closed)
TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
TEMPLATE_WORD = "LG_TEMPLATE_VALUE"
INTERPRETERS = SHELLS | {"python", "python3", "perl", "ruby", "node", "php", "source", "."}
# Characters a terminal shows differently from what the shell reads: carriage returns, escapes, zero-width and
# bidirectional marks, non-breaking spaces. A reviewer cannot see what runs: fail closed.
HIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u00a0\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
GLOB_IN_NAME = re.compile(r"[*?\[]|\{[^}]*,[^}]*\}")
ECHOES = frozenset({"echo", "printf"})
# Environment variables whose value is a command line a program runs (git-config(1), bash(1), less(1), man(1)).
COMMAND_VARIABLES = frozenset({"PAGER", "GIT_PAGER", "MANPAGER", "EDITOR", "VISUAL", "GIT_EDITOR", "SUDO_EDITOR",
                               "GIT_SSH_COMMAND", "GIT_SSH", "GIT_EXTERNAL_DIFF", "GIT_ASKPASS", "SSH_ASKPASS",
                               "GIT_PROXY_COMMAND", "GIT_SEQUENCE_EDITOR", "LESSOPEN", "LESSCLOSE", "BROWSER",
                               "PROMPT_COMMAND", "RUSTC_WRAPPER"})


@dataclass(frozen=True)
class Invocation:
    program: str | None  # None: the command name is not static (unanalysable)
    words: tuple[str, ...]  # every word after the program, as the program would receive it
    span: str  # the source text of the command
    piped_from: tuple[str, ...] = ()  # programs earlier in the same pipeline
    redirects: tuple[tuple[str, str], ...] = ()  # (operator, target)
    via: tuple[str, ...] = ()  # wrappers, shells and options it was reached through (sudo, sh -c, find -exec)
    dynamic: bool = False  # some argument is not static (a variable or substitution)
    path: str = ""  # the program as written, when given with a directory (/tmp/cat, ./bin/ls)
    writes: tuple[tuple[str, str], ...] = ()  # (option, file) the program is told to write
    code_options: tuple[str, ...] = ()  # options through which it runs code (git -c core.pager, sort --compress…)
    inline: tuple[str, ...] = ()  # what its inline code does that cannot be read: spawn, delete, dynamic, unparsed
    network: tuple[str, ...] = ()  # fetch, upload, raw
    hosts: tuple[str, ...] = ()  # hosts it names
    runs_download: str = ""  # a file an earlier command of the script downloaded, which this one runs
    risk_only: bool = False  # a name that is not a program (python -m's module): graded by risk rules only

    @cached_property
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

    @cached_property
    def positionals(self) -> tuple[str, ...]:
        result, after_dashdash = [], False
        for word in self.words:
            if word == "--" and not after_dashdash:
                after_dashdash = True
            elif after_dashdash or not (word.startswith("-") and len(word) > 1):
                result.append(word)
        return tuple(result)

    @property
    def label(self) -> str:
        """The program and how it was reached, for explanations: `rm (via toybox)`."""
        name = self.path or self.program or "?"
        return f"{name} (via {', '.join(self.via)})" if self.via else name


@dataclass(frozen=True)
class Assignment:
    """VAR=value: before a command, through env, alone, or by export/declare."""

    name: str
    value: str  # as written, quotes removed where static
    span: str
    via: tuple[str, ...] = ()


@dataclass(frozen=True)
class Analysis:
    invocations: tuple[Invocation, ...]
    problems: tuple[tuple[str, str], ...] = field(default=())  # (reason, span) for what could not be analysed
    assignments: tuple[Assignment, ...] = ()


@functools.cache
def _language() -> Any:
    import tree_sitter  # noqa: PLC0415 - imported only when something is graded
    import tree_sitter_bash  # noqa: PLC0415

    return tree_sitter.Language(tree_sitter_bash.language())


_parsers = threading.local()


def _parser() -> Any:
    """A parser of this thread's own: steps are graded in threads of their own (lg.runner.scheduler), and a
    tree-sitter parser holds the state of the parse it is doing."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        import tree_sitter  # noqa: PLC0415

        parser = _parsers.parser = tree_sitter.Parser(_language())
    return parser


@functools.lru_cache(maxsize=4096)
def analyse(script: str) -> Analysis:
    """The invocations in `script` and what could not be analysed. Template placeholders are opaque words."""
    out = _Out()
    text = TEMPLATE.sub(TEMPLATE_WORD, script)
    hidden = HIDDEN.search(text)
    if hidden:
        out.problems.append((f"the script holds a hidden or control character (U+{ord(hidden.group()):04X}) that "
                             "may show differently from what the shell reads", _around(text, hidden.start())))
    _analyse_into(text, (), 0, out)
    if re.search(r"\S\\\n", text):
        # bash joins a backslash-newline inside a word (r\<newline>m is rm); tree-sitter splits it. Read both.
        _analyse_into(re.sub(r"\\\n", "", text), (), 0, out)
    invocations = _downloads_run(_dedupe(out.invocations))
    return Analysis(tuple(invocations), tuple(dict.fromkeys(out.problems)), tuple(dict.fromkeys(out.assignments)))


@dataclass
class _Out:
    invocations: list[Invocation] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    assignments: list[Assignment] = field(default_factory=list)


def _around(text: str, index: int) -> str:
    return text[max(0, index - 30):index + 30].encode("unicode_escape").decode()


def _dedupe(invocations: list[Invocation]) -> list[Invocation]:
    return list(dict.fromkeys(invocations))


def _analyse_into(script: str, via: tuple[str, ...], depth: int, out: _Out) -> None:
    if depth > MAX_DEPTH:
        out.problems.append(("nested too deeply (sh -c / eval)", script[:80]))
        return
    source = script.encode()
    tree = _parser().parse(source)
    if tree.root_node.has_error:
        out.problems.append(("the shell grammar does not parse it", _error_span(tree.root_node, source)))
    _Walker(source, via, depth, out).visit(tree.root_node, (), (), None)


def _error_span(node: Any, source: bytes) -> str:
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type == "ERROR" or current.is_missing:
            return source[current.start_byte:current.end_byte].decode(errors="replace")[:80]
        stack.extend(current.children)
    return source.decode(errors="replace")[:80]


class _Walker:
    def __init__(self, source: bytes, via: tuple[str, ...], depth: int, out: _Out) -> None:
        self.source = source
        self.via = via
        self.depth = depth
        self.out = out

    def text(self, node: Any) -> str:
        return self.source[node.start_byte:node.end_byte].decode(errors="replace")

    def visit(self, node: Any, piped_from: tuple[str, ...], redirects: tuple[tuple[str, str], ...],
              feed: str | None) -> None:
        kind = node.type
        if kind == "pipeline":
            upstream: list[str] = []
            fed: str | None = None
            for child in node.named_children:
                self.visit(child, tuple(upstream), redirects, fed)
                upstream.extend(self._programs_of(child))
                fed = self._echoed(child)
            return
        if kind == "redirected_statement":
            self._redirected(node, piped_from, redirects, feed)
            return
        if kind == "command":
            self._command(node, piped_from, redirects, feed)
            for child in node.named_children:  # substitutions inside arguments run too
                self._visit_substitutions(child)
            return
        if kind == "variable_assignment":
            self._assignment(node)
        elif kind == "declaration_command":
            for child in node.named_children:
                if child.type == "variable_assignment":
                    self._assignment(child)
        for child in node.named_children:
            self.visit(child, piped_from, redirects, None)

    def _redirected(self, node: Any, piped_from: tuple[str, ...], redirects: tuple[tuple[str, str], ...],
                    feed: str | None) -> None:
        own = tuple(self._redirects(node))
        body = node.child_by_field_name("body")
        fed = self._fed_text(node, body)
        for child in node.named_children:
            if body is not None and _same(child, body):
                self.visit(child, piped_from, redirects + own, fed if fed is not None else feed)
            elif child.type not in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
                self.visit(child, piped_from, redirects, None)
            else:
                self._visit_substitutions(child)

    def _visit_substitutions(self, node: Any) -> None:
        if node.type in ("command_substitution", "process_substitution"):
            for child in node.named_children:
                self.visit(child, (), (), None)
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

    def _echoed(self, node: Any) -> str | None:
        """The static text `echo ...` writes into a pipe, so `echo 'rm -rf /' | sh` is read as the script it is."""
        if node.type != "command":
            return None
        name = node.child_by_field_name("name")
        if name is None or self.static(name) not in ECHOES:
            return None
        words = [self.static(arg) for arg in node.children_by_field_name("argument")]
        if any(word is None for word in words):
            return None
        text = [w for w in words if w is not None and not re.match(r"^-[neE]+$", w)]
        if self.static(name) == "printf" or any("\\" in w for w in text):
            return None  # escapes and formats change the text: not followed (the shell stays unanalysable)
        return " ".join(text)

    def _redirects(self, node: Any) -> Iterator[tuple[str, str]]:
        for child in node.named_children:
            yield from self._redirects_single(child)

    def _redirects_single(self, node: Any) -> Iterator[tuple[str, str]]:
        if node.type == "file_redirect":
            operator = "".join(self.text(c) for c in node.children if not c.is_named).strip() or ">"
            destination = node.child_by_field_name("destination")
            target = self.static(destination) if destination is not None else None
            yield operator, target if target is not None else DYNAMIC

    def _fed_text(self, node: Any, body: Any) -> str | None:
        """A here-doc or here-string's text (what the command reads on its standard input)."""
        for child in node.named_children:
            if child.type == "heredoc_redirect":
                for part in child.named_children:
                    if part.type == "heredoc_body":
                        return self.text(part)
            if child.type == "herestring_redirect":
                values = [self.static(part) for part in child.named_children]
                return values[0] if values and values[0] is not None else DYNAMIC
        return None

    def static(self, node: Any) -> str | None:
        """The word's value if it is fully static (quotes and escapes resolved), else None. `$HOME` is `~`."""
        kind = node.type
        if kind == "command_name":
            return self.static(node.named_children[0]) if node.named_children else None
        if kind == "word":
            return re.sub(r"\\(.)", r"\1", self.text(node), flags=re.DOTALL)
        if kind == "raw_string":
            return self.text(node)[1:-1]
        if kind == "string":
            return self._static_string(node)
        if kind == "number":
            return self.text(node)
        if kind in ("simple_expansion", "expansion"):
            return "~" if self.text(node) in ("$HOME", "${HOME}") else None
        if kind == "concatenation":
            pieces = [self.static(child) for child in node.named_children]
            return None if any(piece is None for piece in pieces) else "".join(p for p in pieces if p)
        return None  # substitutions, other expansions, ansi_c_string ($'\x72m'): not static

    def _static_string(self, node: Any) -> str | None:
        if not node.named_children:
            return re.sub(r'\\([$`"\\\n])', r"\1", self.text(node)[1:-1])
        pieces = []
        for part in node.named_children:
            if part.type == "string_content":
                pieces.append(re.sub(r'\\([$`"\\\n])', r"\1", self.text(part)))
            elif part.type in ("simple_expansion", "expansion") and self.text(part) in ("$HOME", "${HOME}"):
                pieces.append("~")
            else:
                return None
        return "".join(pieces)

    def loose(self, node: Any) -> str:
        """A value as written, outer quotes removed: for grading assignments whose value is not static."""
        value = self.static(node)
        if value is not None:
            return value
        text = self.text(node)
        return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'" else text

    def _assignment(self, node: Any, via: tuple[str, ...] | None = None) -> None:
        name_node = node.child_by_field_name("name")
        value_node = node.child_by_field_name("value")
        if name_node is None:
            return
        value = self.loose(value_node) if value_node is not None else ""
        self._assign(self.text(name_node), value, self.text(node), via if via is not None else self.via)

    def _assign(self, name: str, value: str, span: str, via: tuple[str, ...]) -> None:
        self.out.assignments.append(Assignment(name, value, span, via))
        if name in COMMAND_VARIABLES and value:
            _analyse_into(value, (*via, f"{name}="), self.depth + 1, self.out)

    def _command(self, node: Any, piped_from: tuple[str, ...], redirects: tuple[tuple[str, str], ...],
                 feed: str | None) -> None:
        span = self.text(node)
        for child in node.named_children:
            if child.type == "variable_assignment":
                self._assignment(child)
        name_node = node.child_by_field_name("name")
        if name_node is None:  # only assignments (FOO=bar): nothing runs
            return
        program = self.static(name_node)
        args = list(node.children_by_field_name("argument"))
        words = [w for arg in args for w in self._expanded(arg)]
        if program is not None and _basename(program) in INTERPRETERS and any(
                arg.type in ("process_substitution", "command_substitution") for arg in args):
            self.out.problems.append((f"{_basename(program)} runs code produced by a substitution", span))
        dynamic = any(word is None for word in words)
        values = tuple(word if word is not None else DYNAMIC for word in words)
        for arg in node.children_by_field_name("redirect"):
            redirects = redirects + tuple(self._redirects_single(arg))
        fed = self._fed_text(node, None)
        feed = fed if fed is not None else feed
        if program is None or TEMPLATE_WORD in program or GLOB_IN_NAME.search(program):
            reason = ("the shell expands the command name (a glob or brace pattern)" if program and
                      TEMPLATE_WORD not in program else "the command name is not static (a variable, substitution "
                                                            "or escape)")
            self.out.problems.append((reason, span))
            self.out.invocations.append(Invocation(None, values, span, piped_from, redirects, self.via, dynamic))
            return
        self._emit(program, values, _Context(span, piped_from, redirects, self.via, dynamic, feed))

    def _expanded(self, node: Any) -> list[str | None]:
        """A word's values: brace expansion of a static unquoted word (/{etc,usr} is /etc and /usr)."""
        value = self.static(node)
        if value is None or node.type not in ("word", "concatenation") or "{" not in value:
            return [value]
        return list(_braces(value))

    def _emit(self, written: str, words: tuple[str, ...], context: _Context) -> None:
        program = _basename(written)
        if program == TEMPLATE_WORD:
            self.out.problems.append(("the command name is not static (a template)", context.span))
            return
        reading = read_program(program, words)
        inline = inline_code(program, words) or self._stdin_code(program, words, context)
        if inline is not None and DYNAMIC in inline[2]:
            self.out.problems.append((f"{program} runs inline code that is not static", context.span))
        inline_reading = read_inline(*inline) if inline else None
        kinds, hosts = network_use(program, words)
        if inline_reading is not None:
            kinds, hosts = (*kinds, *inline_reading.network), (*hosts, *inline_reading.hosts)
        invocation = Invocation(
            program, words, context.span, context.piped_from, context.redirects, context.via, context.dynamic,
            path=_program_path(written), writes=tuple(reading.writes) + tuple(
                (f"{program} code", path) for path in (inline_reading.writes if inline_reading else ())),
            code_options=tuple(reading.code_options),
            inline=tuple(dict.fromkeys(inline_reading.findings)) if inline_reading else (),
            network=tuple(dict.fromkeys(kinds)), hosts=tuple(dict.fromkeys(hosts)), risk_only=context.risk_only)
        self.out.invocations.append(invocation)
        for name, value in reading.assignments:
            self._assign(name, value, context.span, (*context.via, program))
        self._stdin(program, words, context)
        self._follow(program, words, reading.nested, context)
        if inline_reading is not None:
            self._follow_inline(program, inline_reading, context)
        if program in SHELLS or program == "eval":
            self._nested_script(program, words, context)

    def _stdin_code(self, program: str, words: tuple[str, ...], context: _Context) -> tuple[str, str, str] | None:
        """Interpreter code fed on standard input (python3 <<EOF ... EOF), when static."""
        if context.feed is None or context.feed == DYNAMIC or program in SHELLS or not _reads_stdin(program, words):
            return None
        flag = "-c" if program.startswith("python") else "-r" if program == "php" else "-e"
        found = inline_code(program, (flag, context.feed))
        return (found[0], "<stdin>", found[2]) if found else None

    def _stdin(self, program: str, words: tuple[str, ...], context: _Context) -> None:
        """A shell or interpreter reading its script from standard input: a here-doc, here-string or pipe."""
        if program not in INTERPRETERS or not _reads_stdin(program, words):
            return
        feed = context.feed
        if feed is not None and feed != DYNAMIC:
            if program in SHELLS:
                _analyse_into(feed, (*context.via, f"{program} <stdin>"), self.depth + 1, self.out)
            return
        if feed == DYNAMIC:
            self.out.problems.append((f"{program} runs a here-string that is not static", context.span))
        elif context.piped_from:
            self.out.problems.append((f"{program} reads its script from a pipe (from "
                                      f"{', '.join(context.piped_from)})", context.span))

    def _follow(self, program: str, words: tuple[str, ...], nested: list[Nested], context: _Context) -> None:
        module = python_module(words) if program.startswith("python") else None
        if module:
            nested = [*nested, Nested(f"{program} -m", argv=module)]
        for item in nested:
            via = (*context.via, item.via)
            if item.script is not None:
                if DYNAMIC in item.script:
                    self.out.problems.append((f"{item.via} runs a command that is not static", context.span))
                else:
                    _analyse_into(item.script, via, self.depth + 1, self.out)
                continue
            argv = (*item.argv, DYNAMIC) if item.dynamic else item.argv
            if argv[0] == DYNAMIC or GLOB_IN_NAME.search(argv[0]):
                self.out.problems.append((f"{item.via} runs a command that is not static", context.span))
                continue
            if self.depth + 1 > MAX_DEPTH:
                self.out.problems.append(("nested too deeply (wrappers)", context.span))
                continue
            inner = replace(context, via=via, dynamic=context.dynamic or item.dynamic,
                            risk_only=item.via.endswith(" -m"))
            _Walker(self.source, via, self.depth + 1, self.out)._emit(argv[0], argv[1:], inner)

    def _follow_inline(self, program: str, reading: InlineReading, context: _Context) -> None:
        label = f"{program} {reading.flag}"
        via = (*context.via, label)
        for script in reading.scripts:
            _analyse_into(script, via, self.depth + 1, self.out)
        synthetic: list[tuple[str, ...]] = [("rm", "-r", "-f", path) if recursive else ("rm", "-f", path)
                                            for path, recursive in reading.deletes]
        synthetic += [("cat", path) for path in reading.reads]  # reading a file is graded like `cat` of it
        for argv in synthetic:
            inner = replace(context, via=via)
            _Walker(self.source, via, self.depth + 1, self.out)._emit(argv[0], argv[1:], inner)

    def _nested_script(self, program: str, words: tuple[str, ...], context: _Context) -> None:
        script = " ".join(words) if program == "eval" else _shell_script(words)
        if script is None or not script:
            return
        if DYNAMIC in script:
            self.out.problems.append((f"{program} runs a script that is not static", context.span))
            return
        _analyse_into(script, (*context.via, f"{program} -c" if program != "eval" else "eval"), self.depth + 1,
                      self.out)


@dataclass(frozen=True)
class _Context:
    span: str
    piped_from: tuple[str, ...]
    redirects: tuple[tuple[str, str], ...]
    via: tuple[str, ...]
    dynamic: bool
    feed: str | None = None  # what arrives on standard input, when static (a here-doc, echo 'x' | …)
    risk_only: bool = False


SHELL_VALUE_OPTIONS = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})


def _shell_script(words: tuple[str, ...]) -> str | None:
    """The script of `sh [options] -c SCRIPT [name args...]`, options (-o pipefail, -eux) skipped."""
    has_c, index = False, 0
    while index < len(words):
        word = words[index]
        if word == "--":
            index += 1
            break
        if word in SHELL_VALUE_OPTIONS:
            index += 2
            continue
        if word[:1] in "-+" and len(word) > 1:
            has_c = has_c or (word[0] == "-" and not word.startswith("--") and "c" in word[1:])
            index += 1
            continue
        break
    if not has_c:
        return None
    return words[index] if index < len(words) else ""


def _reads_stdin(program: str, words: tuple[str, ...]) -> bool:
    """An interpreter with no script argument (or `-`) runs whatever arrives on standard input."""
    if program in ("source", ".", "eval"):
        return False
    invocation = Invocation(program, words, "")
    if invocation.flags & {"-c", "-e", "-m", "-r", "-p", "-E"}:
        return False
    positionals = [w for w in invocation.positionals if not (program in SHELLS and w in ("pipefail", "errexit"))]
    return not positionals or positionals[0] == "-" or (program in SHELLS and "-s" in invocation.flags)


def _downloads_run(invocations: list[Invocation]) -> list[Invocation]:
    """Mark commands that run a file an earlier command downloaded (curl -o f …; sh f), across lines and lists."""
    downloaded: dict[str, str] = {}
    result = []
    for invocation in invocations:
        target = _runs_file(invocation)
        if target is not None and (_norm(target) in downloaded or posixpath.basename(target) in downloaded):
            invocation = replace(invocation, runs_download=target)
        result.append(invocation)
        for path in _downloads(invocation):
            downloaded[_norm(path)] = path
            downloaded[posixpath.basename(path)] = path
    return result


FETCHERS = frozenset({"curl", "wget", "aria2c", "fetch", "nc", "ncat", "socat"})


def _downloads(invocation: Invocation) -> Iterator[str]:
    """Files a command fills from the network: curl -o f, wget URL, curl … > f, curl … | tee f."""
    fed = bool(FETCHERS & set(invocation.piped_from))
    if not fed and "fetch" not in invocation.network and "upload" not in invocation.network:
        return
    for option, target in invocation.writes:
        if (fed or option.startswith(("curl", "wget"))) and target not in ("-", "/dev/null"):
            yield target
    for operator, target in invocation.redirects:
        if operator in (">", ">>", ">|", "&>") and target != DYNAMIC:
            yield target
    if invocation.program == "curl" and invocation.flags & {"-O", "--remote-name", "--remote-name-all"}:
        yield from (_url_file(w) for w in invocation.words if "://" in w)
    if invocation.program == "wget" and not invocation.flags & {"-O", "--output-document"}:
        yield from (_url_file(w) for w in invocation.words if "://" in w)


def _runs_file(invocation: Invocation) -> str | None:
    """The file a command runs: the program itself (./i.sh) or an interpreter's script argument (sh i.sh)."""
    if invocation.path:
        return invocation.path
    if invocation.program in INTERPRETERS or (invocation.program or "").startswith("python"):
        positionals = [w for w in invocation.words if not w.startswith("-")]
        return positionals[0] if positionals and not invocation.flags & {"-c", "-e", "-m"} else None
    return None


def _url_file(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "index.html"


def _norm(path: str) -> str:
    return posixpath.normpath(path)


def _braces(word: str, limit: int = 64) -> Iterator[str]:
    """bash brace expansion of one word ({a,b} and nesting; not sequences), at most `limit` results."""
    found = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if found is None:
        yield word
        return
    count = 0
    for option in found.group(1).split(","):
        for expanded in _braces(word[:found.start()] + option + word[found.end():], limit):
            count += 1
            if count > limit:
                return
            yield expanded


def _program_path(written: str) -> str:
    if "/" not in written:
        return ""
    return written if written.startswith(("./", "../")) else posixpath.normpath(written)


def _same(first: Any, second: Any) -> bool:
    """tree-sitter hands out a new wrapper object on every access: compare nodes by where they are."""
    return bool((first.start_byte, first.end_byte, first.type) == (second.start_byte, second.end_byte, second.type))


def _basename(program: str) -> str:
    return program.rsplit("/", 1)[-1]
