"""Inline interpreter code (`python3 -c`, `perl -e`, `node -e`, `ruby -e`, `php -r`, awk programs): what it does
that a reviewer wants to see. Python is parsed with its own grammar (`ast`); the others are scanned for the
operations that matter (their grammars are not dependencies of lg), and anything that builds code or names at
run time is reported as "dynamic", which the policy grades at the gate: what cannot be told is not assumed safe.

Findings: `spawn` (runs a process; a static command line is also analysed as shell), `delete` (deletes a path
that is not static; static paths become an `rm` the policy grades by its target), `dynamic` (evaluates code
or resolves names at run time), `unparsed` (Python that does not parse).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

PYTHONS = re.compile(r"^(python[0-9.]*|pypy[0-9.]*)$")
PERLS = frozenset({"perl", "perl5"})
RUBIES = frozenset({"ruby", "jruby"})
NODES = frozenset({"node", "nodejs", "bun", "deno"})
PHPS = frozenset({"php", "php-cli"})
AWKS = frozenset({"awk", "gawk", "mawk", "nawk"})


@dataclass
class InlineReading:
    language: str
    flag: str  # the option that carried the code (-c, -e, or "program" for awk)
    scripts: list[str] = field(default_factory=list)  # shell command lines the code runs
    deletes: list[tuple[str, bool]] = field(default_factory=list)  # (static path, recursive)
    writes: list[str] = field(default_factory=list)  # static paths it writes
    reads: list[str] = field(default_factory=list)  # static paths it opens to read (a secret read is graded)
    findings: list[str] = field(default_factory=list)  # spawn, delete, dynamic, unparsed
    network: list[str] = field(default_factory=list)  # fetch, upload, raw
    hosts: list[str] = field(default_factory=list)


def inline_code(program: str, words: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(language, flag, code) when `program words` runs code given on the command line."""
    if PYTHONS.match(program):
        return _python_code(words)
    if program in PERLS or program in RUBIES:
        return _perl_or_ruby_code(program, words)
    if program in NODES:
        return _node_code(program, words)
    if program in PHPS:
        found = _value_after(words, ("-r",))
        return ("php", "-r", found) if found is not None else None
    if program in AWKS:
        return _awk_code(words)
    return None


def python_module(words: tuple[str, ...]) -> tuple[str, ...] | None:
    """`python3 -m pip install x` runs the module pip: (pip, install, x)."""
    for index, word in enumerate(words):
        if word == "-m" and index + 1 < len(words):
            return (words[index + 1], *words[index + 2:])
        if word.startswith("-m") and len(word) > 2 and not word.startswith("--"):
            return (word[2:], *words[index + 1:])
        if not word.startswith("-") or word in ("-c",) or re.match(r"^-[A-Za-z]*c", word):
            return None
        if word in ("-W", "-X") and index + 1 < len(words):
            continue
    return None


def _python_code(words: tuple[str, ...]) -> tuple[str, str, str] | None:
    index = 0
    while index < len(words):
        word = words[index]
        cluster = re.match(r"^-[bBdEhiIOPqsSuvR]*c(.*)$", word, re.DOTALL)
        if cluster and not word.startswith("--"):
            code = cluster.group(1) or (words[index + 1] if index + 1 < len(words) else "")
            return "python", "-c", code
        if not word.startswith("-") or word.startswith("-m"):
            return None
        index += 2 if word in ("-W", "-X") else 1
    return None


def _perl_or_ruby_code(program: str, words: tuple[str, ...]) -> tuple[str, str, str] | None:
    language = "perl" if program in PERLS else "ruby"
    pieces, uses, index = [], [], 0
    while index < len(words):
        word = words[index]
        if not word.startswith("-") or word == "--":
            break
        if re.match(r"^-[a-zA-Z0-9]*[eE]$", word) and index + 1 < len(words):
            pieces.append(words[index + 1])
            index += 2
            continue
        if word.startswith("-M") and language == "perl":
            uses.append(f"use {word[2:].split('=')[0]};")
        elif word.startswith("-r") and language == "ruby":
            module = word[2:] or (words[index + 1] if index + 1 < len(words) else "")
            uses.append(f"require '{module}'")
            index += 0 if word[2:] else 1
        index += 1
    if not pieces:
        return None
    return language, "-e", "\n".join([*uses, *pieces])


def _node_code(program: str, words: tuple[str, ...]) -> tuple[str, str, str] | None:
    if program == "deno" and words[:1] == ("eval",):
        return ("node", "eval", words[1]) if len(words) > 1 else None
    found = _value_after(words, ("-e", "--eval", "-p", "--print"))
    if found is None:
        return None
    modules = [f"require('{value}')" for value in _values_after(words, ("-r", "--require", "--import"))]
    return "node", "-e", "\n".join([*modules, found])


def _awk_code(words: tuple[str, ...]) -> tuple[str, str, str] | None:
    index = 0
    sources = list(_values_after(words, ("-e", "--source")))
    while index < len(words):
        word = words[index]
        if word in ("-f", "--file") or word.startswith("--file="):
            return ("awk", "program", "\n".join(sources)) if sources else None
        if word == "--":
            index += 1
            break
        if not word.startswith("-") or word == "-":
            break
        index += 2 if word in ("-F", "-v", "--field-separator", "--assign", "-e", "--source") else 1
    if index < len(words) and not sources:
        sources.append(words[index])
    return ("awk", "program", "\n".join(sources)) if sources else None


def _value_after(words: tuple[str, ...], options: tuple[str, ...]) -> str | None:
    return next(iter(_values_after(words, options)), None)


def _values_after(words: tuple[str, ...], options: tuple[str, ...]) -> list[str]:
    found = []
    for index, word in enumerate(words):
        if word in options and index + 1 < len(words):
            found.append(words[index + 1])
        elif word.startswith("--") and word.split("=", 1)[0] in options and "=" in word:
            found.append(word.split("=", 1)[1])
    return found


def read_inline(language: str, flag: str, code: str) -> InlineReading:
    reading = InlineReading(language, flag)
    if language == "python":
        _PythonReader(reading).read(code)
    else:
        _scan(reading, code, SCANNERS[language])
    _urls(reading, code)
    return reading


# --- Python, with its own grammar --------------------------------------------------------------------------

PY_SHELL = frozenset({"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                      "commands.getoutput", "asyncio.create_subprocess_shell", "os.popen2", "os.popen3"})
PY_ARGV = re.compile(r"^(subprocess\.(run|call|check_call|check_output|Popen)|os\.(exec|spawn|posix_spawn)\w*"
                     r"|pty\.spawn|asyncio\.create_subprocess_exec|os\.startfile|os\.fork\w*)$")
PY_DELETE = {"os.remove": False, "os.unlink": False, "os.rmdir": False, "os.removedirs": True,
             "shutil.rmtree": True, "shutil.move": False}
PY_DELETE_METHODS = {"unlink": False, "rmdir": False, "rmtree": True}
PY_DYNAMIC = re.compile(r"^(eval|exec|compile|__import__|importlib\.import_module|importlib\.__import__|getattr"
                        r"|marshal\.loads?|pickle\.loads?|ctypes\..*|builtins\..*|globals|vars|setattr|"
                        r"runpy\..*|code\..*|types\.FunctionType|types\.CodeType|zipimport\..*)$")
PY_RAW = re.compile(r"^(socket\..*|ssl\..*socket.*|telnetlib\..*|ftplib\..*|smtplib\..*|paramiko\..*|"
                    r"asyncio\.open_connection|asyncio\.start_server|http\.server\..*|socketserver\..*|"
                    r"xmlrpc\..*)$")
PY_FETCH = re.compile(r"^(urllib\.request\.(urlopen|urlretrieve|Request)|urllib\.urlopen|requests\.\w+|httpx\.\w+"
                      r"|urllib3\..*|http\.client\..*|aiohttp\..*|pip\._internal.*)$")
PY_UPLOAD_METHODS = frozenset({"post", "put", "patch", "delete", "request", "stream"})


class _PythonReader(ast.NodeVisitor):
    def __init__(self, reading: InlineReading) -> None:
        self.reading = reading
        self.names: dict[str, str] = {}  # local name -> dotted origin (import os as o: o -> os)

    def read(self, code: str) -> None:
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError):
            self.reading.findings.append("unparsed")
            return
        self.visit(tree)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                alias.name.split(".")[0]
            self._module(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self.reading.findings.append("dynamic")
                continue
            self.names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        self._module(node.module or "")

    def _module(self, module: str) -> None:
        dotted = f"{module}.x"
        if PY_RAW.match(dotted):
            self.reading.network.append("raw")

    def visit_Call(self, node: ast.Call) -> None:
        name = self._dotted(node.func)
        if name is not None:
            self._call(name, node)
        elif isinstance(node.func, ast.Attribute) and node.func.attr in PY_DELETE_METHODS:
            self._delete(_path_receiver(node.func.value), PY_DELETE_METHODS[node.func.attr])
        self.generic_visit(node)

    def _call(self, name: str, node: ast.Call) -> None:
        if name in PY_SHELL:
            self._spawn(_static_string(node.args[0]) if node.args else None)
        elif PY_ARGV.match(name):
            self._spawn(_static_argv(node.args[0]) if node.args else None)
        elif name in PY_DELETE:
            self._delete(_static_string(node.args[0]) if node.args else None, PY_DELETE[name])
        elif name.endswith((".unlink", ".rmdir", ".rmtree")):
            self._delete(None, name.endswith(".rmtree"))
        elif PY_DYNAMIC.match(name) and not _static_getattr(name, node):
            self.reading.findings.append("dynamic")
        elif PY_RAW.match(name):
            self.reading.network.append("raw")
        elif PY_FETCH.match(name):
            upload = name.rsplit(".", 1)[-1].lower() in PY_UPLOAD_METHODS or any(k.arg == "data" for k in node.keywords)
            self.reading.network.append("upload" if upload or len(node.args) > 1 else "fetch")
        elif name in ("open", "io.open", "pathlib.Path", "Path"):
            path = _static_string(node.args[0]) if node.args else None
            if path is not None:
                writes = name.endswith("open") and _writes_mode(node)
                (self.reading.writes if writes else self.reading.reads).append(path)

    def _spawn(self, script: str | None) -> None:
        self.reading.findings.append("spawn")
        if script is not None:
            self.reading.scripts.append(script)

    def _delete(self, path: str | None, recursive: bool) -> None:
        if path is None:
            self.reading.findings.append("delete")
        else:
            self.reading.deletes.append((path, recursive))

    def _dotted(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.names.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return f"{base}.{node.attr}" if base is not None else None
        return None


def _static_string(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _static_argv(node: ast.expr) -> str | None:
    """A command given as a list of literals becomes a command line (quoted); a string is a command line."""
    if isinstance(node, ast.List | ast.Tuple):
        parts = [_static_string(element) for element in node.elts]
        if any(part is None for part in parts):
            return None
        return " ".join("'" + str(part).replace("'", "'\\''") + "'" for part in parts)
    return _static_string(node)


def _path_receiver(node: ast.expr) -> str | None:
    """Path('x').unlink(): the path, when the receiver is a Path of a literal."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Name | ast.Attribute):
        return _static_string(node.args[0])
    return None


def _static_getattr(name: str, node: ast.Call) -> bool:
    """getattr(obj, "literal") names its attribute: not dynamic."""
    return name == "getattr" and len(node.args) >= 2 and _static_string(node.args[1]) is not None


def _writes_mode(node: ast.Call) -> bool:
    mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
    text = _static_string(mode) if mode is not None else "r"
    return text is None or any(letter in text for letter in "wax+")


# --- other languages: scanned ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scanner:
    spawn: re.Pattern[str]  # a spawn; group "cmd" (if present) is a static command line
    delete: re.Pattern[str]  # a deletion; group "path" (if present) is a static path
    network_raw: re.Pattern[str]
    network_fetch: re.Pattern[str]
    upload: re.Pattern[str]
    dynamic: re.Pattern[str]
    writes: re.Pattern[str] | None = None  # group "path"


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.DOTALL)


def _quoted(name: str) -> str:
    """A static string literal, its text in a group named `name`, `name2`...: "..." without interpolation, '...',
    and Perl's q(...), q{...}, q/.../ (and qq, qx)."""
    return (rf"""(?:"(?P<{name}>[^"\\$@]*)"|'(?P<{name}2>[^'\\]*)'|q[qx]?\s*\((?P<{name}3>[^)]*)\)"""
            rf"""|q[qx]?\s*\{{(?P<{name}4>[^}}]*)\}}|q[qx]?\s*/(?P<{name}5>[^/]*)/)""")


SCANNERS = {
    "perl": Scanner(
        spawn=_rx(r"\b(?:system|exec)\b\s*\(?\s*" + _quoted("cmd") + r"|\b(?:system|exec|fork)\b|`|\bqx\b"
                  r"|\bopen\s*\(?[^;]*(?:['\"]\s*\||\|\s*['\"]|-\|)"),
        delete=_rx(r"\b(?:unlink|rmdir|rmtree|remove_tree)\b\s*\(?\s*(?:glob\s*\(?\s*)?" + _quoted("path")
                   + r"|\b(?:unlink|rmdir|rmtree|remove_tree)\b"),
        network_raw=_rx(r"IO::Socket|\bsocket\s*\(|\bSocket\b|Net::(?:SSH|Telnet|FTP|SMTP)"),
        network_fetch=_rx(r"LWP|HTTP::Tiny|\bgetprint\b|\bgetstore\b|Net::HTTP|Mojo::UserAgent|\bhttps?://"),
        upload=_rx(r"\bpost\b|\bput\b|POST|PUT"),
        dynamic=_rx(r"\beval\s*[^\s{]|\beval\s*$|\bdo\s+[\"'$]|&\s*\{|&\s*\$|->\s*\$|\$\w+\s*->\s*\(|\bchr\s*\("
                    r"|\bpack\s*\(|\\x[0-9a-f]{2}|\\[0-7]{3}|\brequire\s+\$|\bsyscall\b|\bsprintf\b.*&|\bUNIVERSAL::"),
        writes=_rx(r"\bopen\s*\(?\s*[\$\w]+\s*,\s*['\"](?:>|>>|\+<)['\"]\s*,\s*" + _quoted("path")),
    ),
    "ruby": Scanner(
        spawn=_rx(r"\b(?:system|exec|spawn)\b\s*\(?\s*" + _quoted("cmd") + r"|\b(?:system|exec|spawn|fork)\b"
                  r"|`|%x|IO\.popen|Open3|Process\.spawn|PTY\.spawn|\bopen\s*\(\s*['\"]\|"),
        delete=_rx(r"(?:File\.(?:delete|unlink)|FileUtils\.(?:rm\w*|remove\w*)|Dir\.(?:rmdir|delete|unlink))\s*\(?\s*"
                   + _quoted("path") + r"|File\.(?:delete|unlink)|FileUtils\.(?:rm|remove)|Dir\.(?:rmdir|delete)"
                   r"|\.rmtree\b|\.unlink\b"),
        network_raw=_rx(r"TCPSocket|UDPSocket|\bSocket\b|TCPServer|Net::(?:SSH|Telnet|FTP|SMTP)"),
        network_fetch=_rx(r"Net::HTTP|open-uri|URI\.open|Faraday|HTTParty|RestClient|\bhttps?://"),
        upload=_rx(r"\bpost\b|\bput\b|Post\b|Put\b"),
        dynamic=_rx(r"\beval\b|instance_eval|class_eval|module_eval|instance_exec|\bsend\s*[(:]|__send__|public_send"
                    r"|const_get|\.pack\b|\\x[0-9a-f]{2}|\bbinding\b|\bmethod\s*\(|define_method|\bload\s*\(?\s*[^'\"]"
                    r"|Kernel\.|ObjectSpace|\.constantize"),
    ),
    "node": Scanner(
        spawn=_rx(r"\b(?:execSync|exec|execFileSync|execFile|spawnSync|spawn)\s*\(\s*" + _quoted("cmd")
                  + r"|child_process|\bexecSync\b|\bspawnSync\b|\bexecFile|\bfork\s*\(|Bun\.spawn"
                  r"|Deno\.(?:run|Command)"),
        delete=_rx(r"\b(?:rmSync|rm|rmdirSync|rmdir|unlinkSync|unlink)\s*\(\s*" + _quoted("path")
                   + r"|\b(?:rmSync|rmdirSync|unlinkSync|unlink|rmdir)\s*\(|\bfs\.rm\b|\.rm\s*\(|Deno\.remove"),
        network_raw=_rx(r"require\s*\(\s*['\"](?:node:)?(?:net|dgram|tls)['\"]|\bnet\.(?:connect|createConnection|"
                        r"createServer|Socket)|WebSocket|Deno\.connect|Bun\.connect|Bun\.listen"),
        network_fetch=_rx(r"require\s*\(\s*['\"](?:node:)?https?['\"]|\bfetch\s*\(|axios|XMLHttpRequest|"
                          r"\bhttps?\.(?:get|request)|\bhttps?://"),
        upload=_rx(r"method\s*:\s*['\"](?:post|put|patch|delete)|\.post\s*\(|\.put\s*\(|\.write\s*\("),
        dynamic=_rx(r"\beval\s*\(|\bFunction\s*\(|new\s+Function|\bvm\.|require\s*\(\s*[^'\"\s)]|\bimport\s*\("
                    r"|process\.binding|process\.dlopen|fromCharCode|\batob\s*\(|base64|\\x[0-9a-f]{2}|\\u[0-9a-f]{4}"
                    r"|\[\s*['\"`][^'\"`]*['\"`]\s*\+|\[\s*\w+\s*\]\s*\(|globalThis\s*\[|global\s*\[|Reflect\."),
        writes=_rx(r"\b(?:writeFileSync|writeFile|appendFileSync|appendFile|createWriteStream)\s*\(\s*"
                   + _quoted("path")),
    ),
    "php": Scanner(
        spawn=_rx(r"\b(?:system|exec|shell_exec|passthru|popen|proc_open|pcntl_exec)\s*\(\s*" + _quoted("cmd")
                  + r"|\b(?:system|exec|shell_exec|passthru|popen|proc_open|pcntl_exec|pcntl_fork)\s*\(|`"),
        delete=_rx(r"\b(?:unlink|rmdir)\s*\(\s*" + _quoted("path") + r"|\b(?:unlink|rmdir)\s*\("),
        network_raw=_rx(r"fsockopen|stream_socket_client|stream_socket_server|socket_create|ssh2_"),
        network_fetch=_rx(r"curl_exec|curl_init|file_get_contents\s*\(\s*['\"]https?:|fopen\s*\(\s*['\"]https?:"
                          r"|\bhttps?://"),
        upload=_rx(r"CURLOPT_POST|CURLOPT_UPLOAD|CURLOPT_PUT|'method'\s*=>\s*'(?:POST|PUT)'"),
        dynamic=_rx(r"\beval\s*\(|\bassert\s*\(|create_function|preg_replace\s*\(\s*['\"](.).*\1[a-z]*e|"
                    r"call_user_func|\$\w+\s*\(|base64_decode|str_rot13|gzinflate|gzuncompress|\\x[0-9a-f]{2}|"
                    r"\bchr\s*\(|\b(?:include|require)(?:_once)?\s*\(?\s*\$|\$\{"),
        writes=_rx(r"\bfile_put_contents\s*\(\s*" + _quoted("path")),
    ),
    "awk": Scanner(
        spawn=_rx(r"\bsystem\s*\(\s*" + _quoted("cmd") + r"|\"(?P<cmdline>[^\"]*)\"\s*\|\s*getline|\|&?\s*"
                  + _quoted("cmdpipe") + r"|\bsystem\s*\(|\|\s*getline|\|&|\bprint[f]?\b[^;{}]*\|"),
        delete=_rx(r"(?!x)x"),
        network_raw=_rx(r"/inet[46]?/"),
        network_fetch=_rx(r"(?!x)x"),
        upload=_rx(r"(?!x)x"),
        dynamic=_rx(r"@load|@include|@\w+\s*\("),
        writes=_rx(r"\bprint[f]?\b[^;{}|]*?>>?\s*" + _quoted("path")),
    ),
}


def _scan(reading: InlineReading, code: str, scanner: Scanner) -> None:
    for found in scanner.spawn.finditer(code):
        reading.findings.append("spawn")
        command = _group(found, "cmd") or _group(found, "cmdline") or _group(found, "cmdpipe")
        if command:
            reading.scripts.append(command)
    for found in scanner.delete.finditer(code):
        path = _group(found, "path")
        if path:
            reading.deletes.append((path, bool(re.search(r"tree|rm_r|rm_rf|recursive", found.group(0), re.I))))
        else:
            reading.findings.append("delete")
    if scanner.network_raw.search(code):
        reading.network.append("raw")
    if scanner.network_fetch.search(code):
        reading.network.append("upload" if scanner.upload.search(code) else "fetch")
    if scanner.dynamic.search(code):
        reading.findings.append("dynamic")
    if scanner.writes is not None:
        reading.writes.extend(path for found in scanner.writes.finditer(code) if (path := _group(found, "path")))


def _group(found: re.Match[str], name: str) -> str | None:
    """The first of the named alternatives (name, name2, name3...) that matched."""
    for key, value in found.groupdict().items():
        if key.rstrip("0123456789") == name and value is not None:
            return value
    return None


URL = re.compile(r"\b(?:https?|ftp|wss?)://([A-Za-z0-9.-]+)")


def _urls(reading: InlineReading, code: str) -> None:
    reading.hosts.extend(URL.findall(code))
