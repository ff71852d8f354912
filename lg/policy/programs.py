"""What programs do with their arguments, beyond running: the command a wrapper runs, the code an option runs,
the files an option writes. Facts about programs (from their manuals), not judgements: the policy grades them.

A wrapper's command is unwrapped by skipping the wrapper's own options, so each wrapper lists the options that
take a value (`sudo -u root rm` runs `rm`, not `root`). A wrapper not listed here is still looked through by the
grader when its arguments name a program the policy knows (lg.policy.grade), so the list is a help, not a wall.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

DYNAMIC = "$DYNAMIC"  # a word whose value is not static (a variable, a substitution)
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox-sh", "fish", "rbash"})


@dataclass(frozen=True)
class Nested:
    """Something a program runs: a command (argv) or a shell script, reached `via` a wrapper or an option."""

    via: str
    argv: tuple[str, ...] = ()
    script: str | None = None
    dynamic: bool = False  # the command gets arguments no one can see (xargs appends what it reads)


@dataclass
class Reading:
    """What a program's words say it does besides running: nested commands, code options, writes."""

    nested: list[Nested] = field(default_factory=list)
    code_options: list[str] = field(default_factory=list)  # options through which it runs code (core.pager...)
    writes: list[tuple[str, str]] = field(default_factory=list)  # (option, file) it is told to write
    assignments: list[tuple[str, str]] = field(default_factory=list)  # env's VAR=value
    problems: list[str] = field(default_factory=list)  # what cannot be followed


@dataclass(frozen=True)
class Wrapper:
    values: frozenset[str] = frozenset()  # its options that take a value
    positional: int = 0  # positional arguments before the command (timeout's duration, chroot's root)
    script_options: frozenset[str] = frozenset()  # options whose value is a shell script (su -c)
    joins: bool = False  # the command words are joined and run by a shell (watch)
    dynamic: bool = False  # appends arguments read at run time (xargs, parallel)
    lookup: frozenset[str] = frozenset()  # flags that make it look the command up instead (command -v)
    argv_only: bool = True  # False: positionals are not a command (su's user, script's log file)


def _w(values: str = "", **kwargs: object) -> Wrapper:
    script = frozenset(str(kwargs.pop("script", "")).split())
    lookup = frozenset(str(kwargs.pop("lookup", "")).split())
    return Wrapper(frozenset(values.split()), script_options=script, lookup=lookup, **kwargs)  # type: ignore[arg-type]


WRAPPERS: dict[str, Wrapper] = {
    "sudo": _w("-u -g -h -p -C -D -r -t -U -T --user --group --host --prompt --close-from --chdir --role --type "
               "--other-user --command-timeout"),
    "doas": _w("-u -C"),
    "env": _w("-u --unset -C --chdir -S --split-string"),
    "timeout": _w("-s --signal -k --kill-after", positional=1),
    "nice": _w("-n --adjustment"),
    "ionice": _w("-c -n -p -P -u --class --classdata --pid --pgid --uid"),
    "nohup": _w(), "setsid": _w(), "unbuffer": _w(), "builtin": _w(), "catchsegv": _w(), "dbus-run-session": _w(),
    "tini": _w(), "dumb-init": _w(), "fakeroot": _w("-l -s -i --lib --faked"), "valgrind": _w(),
    "command": _w(lookup="-v -V"),
    "exec": _w("-a"),
    "stdbuf": _w("-i -o -e --input --output --error"),
    "time": _w("-f -o --format --output"),
    "xargs": _w("-I -n -P -d -a -E -L -s --max-args --max-procs --delimiter --arg-file --replace --max-lines "
                "--max-chars --eof --process-slot-var", dynamic=True),
    "parallel": _w("-j -S -a --jobs --sshlogin --arg-file --joblog --results --delay --timeout --tmpdir",
                   dynamic=True),
    "chroot": _w("--userspec --groups", positional=1),
    "flock": _w("-w --timeout -E --conflict-exit-code", positional=1, script="-c --command"),
    "su": _w("-s --shell -g --group -G --supp-group -w --whitelist-environment", script="-c --command",
             argv_only=False),
    "runuser": _w("-u --user -g --group -G --supp-group -s --shell -w", script="-c --command"),
    "sg": _w("", positional=1, script="-c", joins=True),
    "script": _w("-E -I -O -T -B -t --log-in --log-out --log-io --log-timing --echo", script="-c --command",
                 argv_only=False),
    "watch": _w("-n --interval -d --differences -q --equexit -s --shell", joins=True),
    "strace": _w("-o -e -p -s -u -a -b -E -I -O -P -S -X"),
    "ltrace": _w("-o -e -p -s -u -a -n"),
    "taskset": _w("", positional=1),
    "chrt": _w("", positional=1),
    "numactl": _w("-C -N -m -p -i --physcpubind --cpunodebind --membind --preferred --interleave"),
    "prlimit": _w("-p --pid"),
    "proxychains": _w("-f"), "proxychains4": _w("-f"), "torsocks": _w("-u -p -a -P"),
    "faketime": _w("-f", positional=1),
    "xvfb-run": _w("-n -s -f -e -p --server-num --server-args --auth-file --error-file"),
    "setpriv": _w("--reuid --regid --groups --inh-caps --ambient-caps --bounding-set --securebits --pdeathsig "
                  "--selinux-label --apparmor-profile"),
    "systemd-run": _w("-p -u -E -M --unit --property --setenv --uid --gid --machine --description --slice"),
    "ssh-agent": _w("-a -E -t -P"),
    "gosu": _w("", positional=1), "su-exec": _w("", positional=1), "setuidgid": _w("", positional=1),
    "nsenter": _w("-t --target -S -G --setuid --setgid"),
    "unshare": _w(), "firejail": _w(), "caffeinate": _w("-t -w"),
    "busybox": _w(), "toybox": _w(),  # multi-call binaries: the first argument is the applet
    "nix-shell": _w("-p -A -I --arg --argstr --packages --attr", script="--run --command", argv_only=False),
    "doppler": _w(), "chpst": _w("-u -U -b -e -n -l -L -m -d -o -p -f -c -r -t"),
}
# Tools that run a command in a prepared environment: `poetry run pytest` runs pytest.
RUNNERS: dict[str, frozenset[str]] = {
    "poetry": frozenset({"run"}), "pipenv": frozenset({"run"}), "uv": frozenset({"run"}),
    "pdm": frozenset({"run"}), "hatch": frozenset({"run"}), "rye": frozenset({"run"}), "pixi": frozenset({"run"}),
    "conda": frozenset({"run"}), "mamba": frozenset({"run"}), "micromamba": frozenset({"run"}),
    "bundle": frozenset({"exec"}), "npm": frozenset({"exec", "x"}), "pnpm": frozenset({"exec", "dlx"}),
    "yarn": frozenset({"exec", "dlx"}), "pipx": frozenset({"run"}), "opam": frozenset({"exec"}),
    "stack": frozenset({"exec"}), "cabal": frozenset({"exec"}), "mise": frozenset({"exec", "x"}),
    "asdf": frozenset({"exec"}), "devbox": frozenset({"run"}), "direnv": frozenset({"exec"}),
    "aws-vault": frozenset({"exec"}), "op": frozenset({"run"}), "nix": frozenset({"develop", "shell"}),
}
RUNNER_VALUES = frozenset({"-n", "--name", "-p", "--prefix", "-e", "--env", "--environment", "-c", "--config",
                           "--with", "--python", "--package", "--project", "--directory", "--cwd", "-C", "--spec"})
RUNNER_POSITIONAL = {"direnv": 1, "aws-vault": 1}  # direnv exec DIR cmd; aws-vault exec PROFILE -- cmd
PACKAGE_RUNNERS = frozenset({"npx", "pnpx", "bunx", "uvx"})  # npx eslint . runs eslint

# Options whose value is code, per program (values are run by a shell or as a program and its arguments).
CODE_OPTIONS: dict[str, dict[str, str]] = {
    "sort": {"--compress-program": "argv"},
    "rg": {"--pre": "argv"},
    "tar": {"--to-command": "script", "--use-compress-program": "argv", "-I": "argv", "--info-script": "script",
            "--new-volume-script": "script", "-F": "script", "--rsh-command": "argv",
            "--checkpoint-action": "tar-exec"},
    "zip": {"--unzip-command": "argv", "-TT": "argv"},
    "rsync": {"-e": "argv", "--rsh": "argv", "--rsync-path": "script"},
    "ssh": {"-o": "ssh-option"},
    "scp": {"-S": "argv", "-o": "ssh-option"},
    "sftp": {"-S": "argv", "-o": "ssh-option"},
    "man": {"-P": "script", "--pager": "script", "-H": "argv", "--html": "argv"},
    "split": {"--filter": "script"},
    "tcpdump": {"-z": "argv"},
    "gdb": {"-ex": "gdb", "--eval-command": "gdb"},
    "npm": {"--script-shell": "argv"},
    "apt-get": {"-o": "apt-option"}, "apt": {"-o": "apt-option"},
    "vim": {"-c": "vim", "--cmd": "vim"}, "vi": {"-c": "vim", "--cmd": "vim"}, "nvim": {"-c": "vim", "--cmd": "vim"},
    "ex": {"-c": "vim"},
    "git": {"--exec-path": "path"},
}
# Files a program is told to write, by option (a redirection by another name).
WRITE_OPTIONS: dict[str, frozenset[str]] = {
    "sort": frozenset({"-o", "--output"}), "curl": frozenset({"-o", "--output"}),
    "wget": frozenset({"-O", "--output-document"}), "time": frozenset({"-o", "--output"}),
    "strace": frozenset({"-o"}), "patch": frozenset({"-o", "--output"}), "uniq": frozenset(),
    "tar": frozenset({"-C", "--directory"}), "unzip": frozenset({"-d"}),
}
WRITES_POSITIONALS = frozenset({"tee", "truncate", "touch"})  # every positional is a file written
WRITES_LAST = frozenset({"cp", "mv", "install", "ln", "rsync"})  # the last positional is written


def option_values(words: tuple[str, ...], spellings: frozenset[str] | set[str]) -> Iterator[tuple[str, str]]:
    """(option, value) for each use of an option taking a value: `--opt=v`, `--opt v`, `-Xv`, `-X v`."""
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            return
        for spelling in spellings:
            if word == spelling and index + 1 < len(words):
                yield spelling, words[index + 1]
                index += 1
                break
            if spelling.startswith("--") and word.startswith(spelling + "="):
                yield spelling, word[len(spelling) + 1:]
                break
            if len(spelling) == 2 and word.startswith(spelling) and len(word) > 2 and not word.startswith("--"):
                yield spelling, word[2:]
                break
            cluster = _in_cluster(word, spelling[1]) if len(spelling) == 2 else None
            if cluster is not None:  # -qO file, -qO-: the letter taking a value may end a cluster of flags
                if cluster or index + 1 < len(words):
                    yield spelling, cluster or words[index + 1]
                    index += 0 if cluster else 1
                break
        index += 1


def _in_cluster(word: str, letter: str) -> str | None:
    """For `-abX…`: what follows X (maybe ''), when X is in a cluster of single-letter flags; else None."""
    if not re.match(r"^-[A-Za-z]{2,}", word) or word.startswith("--") or word[1] == letter:
        return None
    position = word.find(letter, 2)
    return None if position < 0 or not word[1:position].isalpha() else word[position + 1:]


def unwrap(program: str, words: tuple[str, ...], spec: Wrapper) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """The command a wrapper runs (its argv) and env-style VAR=value words before it."""
    assignments: list[tuple[str, str]] = []
    positional = spec.positional
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            index += 1
            break
        if (word.startswith("-") or (program == "env" and word == "-")) and len(word) > 1:
            index += 2 if word in spec.values or word in spec.script_options else 1
            continue
        if program == "env" and "=" in word and not word.startswith("="):
            name, value = word.split("=", 1)
            assignments.append((name, value))
            index += 1
            continue
        if positional:
            positional -= 1
            index += 1
            continue
        break
    return words[index:], assignments


# Programs that are another by a different name: `rimraf x` is `rm -rf x` (npx rimraf / deletes the root).
EQUIVALENTS: dict[str, tuple[str, ...]] = {"rimraf": ("rm", "-r", "-f"), "del-cli": ("rm", "-r", "-f"),
                                           "trash": ("rm", "-r", "-f"), "srm": ("rm", "-r", "-f")}


def read_program(program: str, words: tuple[str, ...]) -> Reading:
    """Everything lg knows about what `program words...` runs and writes, besides itself."""
    reading = Reading()
    if program in EQUIVALENTS:
        reading.nested.append(Nested(f"{program} (as {' '.join(EQUIVALENTS[program])})",
                                     argv=(*EQUIVALENTS[program], *words)))
    if program in WRAPPERS:
        _wrapper(program, words, WRAPPERS[program], reading)
    elif program in RUNNERS or program in PACKAGE_RUNNERS:
        _runner(program, words, reading)
    if program in CODE_OPTIONS:
        _code_options(program, words, reading)
    if program == "git":
        _git(words, reading)
    elif program == "find":
        _find(words, reading)
    elif program == "sed":
        _sed(words, reading)
    elif program in ("trap", "alias"):
        _trap_or_alias(program, words, reading)
    _writes(program, words, reading)
    return reading


def _wrapper(program: str, words: tuple[str, ...], spec: Wrapper, reading: Reading) -> None:
    if spec.lookup and any(word in spec.lookup for word in words):
        return  # `command -v rm` looks rm up; nothing runs
    for option, value in option_values(words, spec.script_options):
        reading.nested.append(Nested(f"{program} {option}", script=value))
    if program == "env":
        for _option, value in option_values(words, {"-S", "--split-string"}):
            reading.nested.append(Nested("env -S", script=value))
    inner, assignments = unwrap(program, words, spec)
    reading.assignments.extend(assignments)
    if program == "parallel" and ":::" in inner:  # the arguments after ::: are given, not read at run time
        position = inner.index(":::")
        reading.nested.append(Nested(program, script=" ".join(inner[:position] + inner[position + 1:])))
        return
    if not inner or not spec.argv_only:
        return
    if spec.joins:
        reading.nested.append(Nested(program, script=" ".join(inner), dynamic=spec.dynamic))
    else:
        reading.nested.append(Nested(program, argv=inner, dynamic=spec.dynamic))


def _runner(program: str, words: tuple[str, ...], reading: Reading) -> None:
    index = 0
    if program in RUNNERS:
        while index < len(words) and words[index].startswith("-"):
            index += 1
        if index >= len(words) or words[index] not in RUNNERS[program]:
            return
        index += 1
    skip = RUNNER_POSITIONAL.get(program, 0)
    while index < len(words):
        word = words[index]
        if word == "--":
            index += 1
            break
        if word.startswith("-"):
            index += 2 if word in RUNNER_VALUES else 1
            continue
        if skip:
            skip, index = skip - 1, index + 1
            continue
        break
    if index < len(words):
        reading.nested.append(Nested(program, argv=words[index:]))


def _code_options(program: str, words: tuple[str, ...], reading: Reading) -> None:
    options = CODE_OPTIONS[program]
    for option, value in option_values(words, set(options)):
        script = _option_script(options[option], value)
        if script is None:
            continue
        reading.code_options.append(f"{program} {option}")
        if script:
            reading.nested.append(Nested(f"{program} {option}", script=script))


def _option_script(kind: str, value: str) -> str | None:
    """The code in an option's value; None when this use of the option runs nothing; '' when code runs but
    is not shell (a directory of helpers)."""
    if kind == "tar-exec":
        return value.split("=", 1)[1] if value.startswith("exec=") else None
    if kind == "ssh-option":
        key, _, rest = value.replace(" ", "=", 1).partition("=")
        return rest if key.lower() in ("proxycommand", "localcommand", "knownhostscommand") else None
    if kind == "apt-option":
        key, _, rest = value.partition("=")
        return rest if "invoke" in key.lower() else None
    if kind == "gdb":
        stripped = value.lstrip()
        for prefix in ("shell ", "!", "pipe ", "python ", "source "):
            if stripped.startswith(prefix):
                return stripped[len(prefix):] if prefix in ("shell ", "!") else DYNAMIC
        return None
    if kind == "vim":
        stripped = value.lstrip(": ")
        return stripped[1:] if stripped.startswith("!") else DYNAMIC if stripped.startswith(("sh", "te")) else None
    if kind == "path":
        return ""
    return value


# --- git ---------------------------------------------------------------------------------------------------

# Configuration keys whose value git runs (or that load configuration or hooks from elsewhere). From git-config(1).
GIT_CODE_KEYS = re.compile(
    r"^(core\.(pager|editor|sshcommand|fsmonitor|hookspath|askpass|gitproxy|alternaterefscommand)|sequence\.editor"
    r"|diff\.external|diff\..+\.(textconv|command)|merge\..+\.driver|filter\..+\.(clean|smudge|process)"
    r"|credential(\..+)?\.helper|alias\..+|pager\..+|gpg(\..+)?\.program|uploadpack\.packobjectshook"
    r"|protocol\..*allow|include(if\..+)?\.path|init\.templatedir|web\.browser|browser\..+\.(cmd|path)"
    r"|man\..+\.(cmd|path)|remote\..+\.(uploadpack|receivepack|proxy)|sendemail\..*(smtpserver|tocmd|cccmd)"
    r"|difftool\..+\.cmd|mergetool\..+\.cmd|submodule\..+\.update)$", re.IGNORECASE)
GIT_NOT_SHELL = re.compile(r"^(protocol\.|include|init\.|core\.hookspath|remote\..+\.proxy)", re.IGNORECASE)
GIT_GLOBAL_VALUES = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--super-prefix",
                               "--config-env", "--exec-path", "--list-cmds", "--attr-source"})
GIT_NESTED_SCRIPTS = {("rebase", "-x"): "script", ("rebase", "--exec"): "script", ("difftool", "-x"): "code",
                      ("difftool", "--extcmd"): "code", ("clone", "-u"): "code", ("clone", "--upload-pack"): "code",
                      ("fetch", "--upload-pack"): "code", ("pull", "--upload-pack"): "code",
                      ("ls-remote", "--upload-pack"): "code", ("push", "--receive-pack"): "code",
                      ("push", "--exec"): "code", ("archive", "--exec"): "code"}
GIT_OUTPUT_SUBCOMMANDS = frozenset({"diff", "log", "show", "whatchanged", "format-patch", "range-diff", "archive",
                                    "diff-tree", "diff-files", "diff-index"})


def _git(words: tuple[str, ...], reading: Reading) -> None:
    rest = _git_globals(words, reading)
    if not rest:
        return
    subcommand, args = rest[0], rest[1:]
    if subcommand == "config":
        _git_config(args, reading)
    for option, value in option_values(args, {option for (sub, option) in GIT_NESTED_SCRIPTS if sub == subcommand}):
        if GIT_NESTED_SCRIPTS[(subcommand, option)] == "code":
            reading.code_options.append(f"git {subcommand} {option}")
        reading.nested.append(Nested(f"git {subcommand} {option}", script=value))
    _git_runs(subcommand, args, reading)
    for word in args:
        if word.startswith("ext::"):  # the ext transport runs a command (git-remote-ext(1))
            reading.code_options.append("git ext::")
            reading.nested.append(Nested("git ext::", script=word[5:].replace("%S", "git-upload-pack")))
    if subcommand in GIT_OUTPUT_SUBCOMMANDS:
        reading.writes.extend((f"git {subcommand} {o}", v) for o, v in option_values(args, {"--output", "-o"}))


def _git_globals(words: tuple[str, ...], reading: Reading) -> tuple[str, ...]:
    """Read git's own options (-c key=value among them); the subcommand and its arguments follow."""
    index = 0
    while index < len(words) and words[index].startswith("-"):
        word = words[index]
        if word in ("-c", "--config-env") and index + 1 < len(words):
            _git_setting(words[index + 1], f"git {word}", reading)
        elif word.startswith(("--config-env=", "-c")) and word not in GIT_GLOBAL_VALUES:
            _git_setting(word.split("=", 1)[1] if word.startswith("--") else word[2:], "git -c", reading)
        index += 2 if word in GIT_GLOBAL_VALUES else 1
    return words[index:]


def _git_runs(subcommand: str, args: tuple[str, ...], reading: Reading) -> None:
    """Subcommands that run commands they are given: submodule foreach, bisect run, filter-branch's filters."""
    if subcommand == "submodule" and "foreach" in args:
        script = [w for w in args[args.index("foreach") + 1:] if not w.startswith("--")]
        if script:
            reading.nested.append(Nested("git submodule foreach", script=" ".join(script)))
    if subcommand == "bisect" and args[:1] == ("run",) and len(args) > 1:
        reading.nested.append(Nested("git bisect run", argv=args[1:]))
    if subcommand == "filter-branch":
        for option, value in option_values(args, {f"--{kind}-filter" for kind in
                                                  ("env", "tree", "index", "parent", "msg", "commit", "tag-name")}):
            reading.nested.append(Nested(f"git filter-branch {option}", script=value))


def _git_config(args: tuple[str, ...], reading: Reading) -> None:
    positionals = [word for word in args if not word.startswith("-")]
    if positionals[:1] in (["set"], ["add"]):
        positionals = positionals[1:]
    for option, value in option_values(args, {"--file", "-f"}):
        reading.writes.append((f"git config {option}", value))
    if len(positionals) >= 2:
        _git_setting(f"{positionals[0]}={positionals[1]}", "git config", reading)


def _git_setting(setting: str, via: str, reading: Reading) -> None:
    key, _, value = setting.partition("=")
    if not GIT_CODE_KEYS.match(key):
        return
    if key.lower().startswith("alias.") and not value.startswith("!"):
        return  # an alias of a git subcommand runs git, not a shell
    if key.lower().startswith("pager.") and value.lower() in ("true", "false", "", "1", "0"):
        return  # pager.<cmd> = true only turns paging on
    reading.code_options.append(f"{via} {key}")
    if not GIT_NOT_SHELL.match(key) and value:
        reading.nested.append(Nested(f"{via} {key}", script=value.removeprefix("!")))


# --- find, sed, trap, alias, writes ------------------------------------------------------------------------

FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})
FIND_WRITES = frozenset({"-fprint", "-fprint0", "-fprintf", "-fls"})


def _find(words: tuple[str, ...], reading: Reading) -> None:
    index = 0
    while index < len(words):
        word = words[index]
        if word in FIND_EXEC:
            end = index + 1
            while end < len(words) and words[end] not in (";", "+"):
                end += 1
            if end > index + 1:
                reading.nested.append(Nested(f"find {word}", argv=words[index + 1:end]))
            index = end
        elif word in FIND_WRITES and index + 1 < len(words):
            reading.writes.append((f"find {word}", words[index + 1]))
        index += 1


SED_ADDRESS = r"(?:(?:\d+|\$|/(?:[^/\\]|\\.)*/)(?:\s*,\s*(?:\d+|\$|/(?:[^/\\]|\\.)*/))?)?"
SED_EXEC = re.compile(r"^\s*" + SED_ADDRESS + r"\s*!?\s*e(?:\s+(.*))?$")
SED_SUBST_FLAGS = re.compile(r"s(.)(?:(?!\1)[^\\]|\\.)*\1(?:(?!\1)[^\\]|\\.)*\1([a-zA-Z0-9]*)(?:\s*(.*))?")
SED_WRITE = re.compile(r"^\s*" + SED_ADDRESS + r"\s*!?\s*[wW]\s+(.+)$")


def _sed(words: tuple[str, ...], reading: Reading) -> None:
    """GNU sed's `e` command and `s///e` flag run shell commands; `w FILE` writes a file."""
    scripts = [value for _o, value in option_values(words, {"-e", "--expression"})]
    if not scripts and not any(w in ("-f", "--file") or w.startswith("--file=") for w in words):
        positionals = [w for w in words if not w.startswith("-")]
        scripts = positionals[:1]
    for script in scripts:
        for command in re.split(r"[;\n]", script):
            _sed_command(command, reading)


def _sed_command(command: str, reading: Reading) -> None:
    executed = SED_EXEC.match(command)
    if executed:
        reading.code_options.append("sed e")
        reading.nested.append(Nested("sed e", script=executed.group(1) or DYNAMIC))
        return
    written = SED_WRITE.match(command)
    if written:
        reading.writes.append(("sed w", written.group(1).strip()))
    substituted = SED_SUBST_FLAGS.search(command)
    if substituted and "e" in substituted.group(2):
        reading.code_options.append("sed s///e")
        reading.nested.append(Nested("sed s///e", script=DYNAMIC))  # the pattern space runs as a command
    if substituted and "w" in substituted.group(2) and substituted.group(3):
        reading.writes.append(("sed s///w", substituted.group(3).strip()))


def _trap_or_alias(program: str, words: tuple[str, ...], reading: Reading) -> None:
    """`trap 'cmd' EXIT` runs cmd later; `alias ls='rm -rf /'` defines code (run where aliases expand)."""
    positionals = [w for w in words if not w.startswith("-")]
    if program == "trap" and len(positionals) >= 2 and positionals[0] not in ("", "-"):
        reading.nested.append(Nested("trap", script=positionals[0]))
    if program == "alias":
        for word in positionals:
            if "=" in word:
                reading.nested.append(Nested("alias", script=word.split("=", 1)[1]))


def _writes(program: str, words: tuple[str, ...], reading: Reading) -> None:
    if program in WRITE_OPTIONS:
        reading.writes.extend((f"{program} {o}", v) for o, v in option_values(words, WRITE_OPTIONS[program]))
    positionals = [w for w in words if not w.startswith("-") or w == "-"]
    if program in WRITES_POSITIONALS:
        reading.writes.extend((program, w) for w in positionals)
    elif program in WRITES_LAST and len(positionals) >= 2:
        reading.writes.append((program, positionals[-1]))
    elif program == "dd":
        reading.writes.extend(("dd of=", w[3:]) for w in words if w.startswith("of="))
    elif program == "sed" and any(w.startswith(("-i", "--in-place")) for w in words):
        explicit = any(w in ("-e", "--expression", "-f", "--file") or w.startswith(("--expression=", "--file="))
                       for w in words)
        reading.writes.extend(("sed -i", w) for w in positionals[0 if explicit else 1:])
