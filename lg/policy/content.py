"""Effects rules that read what changed, not only which paths: lines added to a requirements file, a hook added to
package.json's scripts, hashes that disappear from a lock file, a secret in added content.

What the step wrote is read from its held files, what it replaced from the host workspace (`DirContent`), or from
the change list itself in golden files and `lg policy explain --effects` (`content` and `old_content` keys).
Secrets are found by detect-secrets (Yelp's maintained detector: its plugins, but the entropy ones, and its default
filters): a secret is "added" when the new text holds one the old text did not (compared by the detector's hash,
never by value).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from lg.model import FileChange

MAX_CONTENT_BYTES = 1024 * 1024  # larger files are not read: path rules still grade them
MAX_SECRET_SCANS = 20000  # files scanned for secrets per step (about 0.4 ms each); more fails closed
UNREADABLE = object()  # the file exists but is binary or too large
Scan = Callable[[str, str, "Path | None"], list[tuple[str, int, str]]]


class ContentReader(Protocol):
    """The text of a path before (`old`) and after (`new`) the step; None when absent, UNREADABLE when not text."""

    def old(self, path: str) -> str | object | None: ...

    def new(self, path: str) -> str | object | None: ...

    def new_file(self, path: str) -> Path | None: ...


@dataclass(frozen=True)
class DirContent:
    """Content from disk: the step's held files (new) and the host workspace (old), both workspace-relative."""

    workspace: Path
    held: Path

    def old(self, path: str) -> str | object | None:
        return _read(self.workspace.joinpath(*PurePosixPath(path).parts))

    def new(self, path: str) -> str | object | None:
        return _read(self.held.joinpath(*PurePosixPath(path).parts))

    def new_file(self, path: str) -> Path | None:
        return self.held.joinpath(*PurePosixPath(path).parts)


@dataclass(frozen=True)
class InlineContent:
    """Content given with the changes (golden files, `lg policy explain --effects`)."""

    new_text: Mapping[str, str] = field(default_factory=dict)
    old_text: Mapping[str, str] = field(default_factory=dict)

    def old(self, path: str) -> str | object | None:
        return self.old_text.get(path)

    def new(self, path: str) -> str | object | None:
        return self.new_text.get(path)

    def new_file(self, path: str) -> Path | None:
        return None


def split_content(raw: Mapping[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """A change mapping without its `content`/`old_content` keys, and those texts."""
    change = {key: value for key, value in raw.items() if key not in ("content", "old_content")}
    return change, raw.get("content"), raw.get("old_content")


def _read(path: Path) -> str | object | None:
    if path.is_symlink() or not path.is_file():
        return None
    if path.stat().st_size > MAX_CONTENT_BYTES:
        return UNREADABLE
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return UNREADABLE
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return UNREADABLE


@dataclass(frozen=True)
class ContentMatch:
    """Conditions on the text of a change, all of which must hold (any that is set)."""

    added_regex: re.Pattern[str] | None = None  # some added line matches (search)
    count_drops: re.Pattern[str] | None = None  # fewer matches in the new text than in the old (hashes lost)
    changed_keys: tuple[str, ...] = ()  # JSON/TOML dotted keys (globs per level) whose value changed
    secrets: bool = False  # detect-secrets finds a secret in the new text that was not in the old

    def hits(self, change: FileChange, reader: ContentReader, scan: Scan | None = None,
             fail_closed: bool = True) -> str | None:
        """What matched (for the explanation), or None. A file named by the rule whose text cannot be read (binary,
        over 1 MiB) matches: fail closed. A rule for any file (secrets, private keys) reads text files only."""
        old, new = reader.old(change.path), reader.new(change.path)
        if change.kind == "deleted" or new is None:  # nothing written there to read (or not given)
            return None
        if new is UNREADABLE or old is UNREADABLE:
            return f"{change.path}: content not readable" if fail_closed and not self.secrets else None
        old_text = old if isinstance(old, str) else ""
        assert isinstance(new, str)  # noqa: S101 - narrowed above
        file = reader.new_file(change.path)
        found = [detail for detail in self._details(change.path, old_text, new, file, scan) if detail is not None]
        wanted = sum(1 for condition in (self.added_regex, self.count_drops, self.changed_keys or None, self.secrets
                                         or None) if condition is not None)
        return "; ".join(found) if found and len(found) == wanted else None

    def _details(self, path: str, old: str, new: str, file: Path | None,
                 scan: Scan | None) -> Iterator[str | None]:
        if self.added_regex is not None:
            yield _added(path, old, new, self.added_regex)
        if self.count_drops is not None:
            before, after = len(self.count_drops.findall(old)), len(self.count_drops.findall(new))
            yield f"{path}: {before - after} of {before} lost" if after < before else None
        if self.changed_keys:
            yield _changed_keys(path, old, new, self.changed_keys)
        if self.secrets and scan is not None:
            yield secrets_added(path, old, new, scan, file)


def _added(path: str, old: str, new: str, pattern: re.Pattern[str]) -> str | None:
    before = set(old.splitlines())
    for number, line in enumerate(new.splitlines(), start=1):
        if line not in before and pattern.search(line):
            return f"{path}:{number}: {line.strip()}"
    return None


def _changed_keys(path: str, old: str, new: str, keys: tuple[str, ...]) -> str | None:
    parse = _parser_for(path)
    try:
        before, after = (parse(old) if old else {}), parse(new)
    except ValueError:
        return f"{path}: does not parse (cannot tell what changed)"
    changed = [key for key in sorted(set(_flatten(before)) | set(_flatten(after)))
               if _flatten(before).get(key) != _flatten(after).get(key) and _any_key(key, keys)]
    return f"{path}: {', '.join(changed)} changed" if changed else None


def _parser_for(path: str) -> Callable[[str], Any]:
    return tomllib.loads if path.endswith(".toml") else json.loads


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value} if prefix else {}
    flat: dict[str, Any] = {prefix: "<table>"} if prefix else {}
    for key, inner in value.items():
        flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _any_key(key: str, patterns: tuple[str, ...]) -> bool:
    parts = key.split(".")
    for pattern in patterns:
        wanted = pattern.split(".")
        if len(parts) >= len(wanted) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=False)):
            return True
    return False


# --- detect-secrets ------------------------------------------------------------------------------------------


def secrets_added(path: str, old: str, new: str, scan: Scan, file: Path | None = None) -> str | None:
    """`path:line (type)` of the first secret in `new` that `old` did not hold. Never the value."""
    found = scan(path, new, file)
    if not found:
        return None
    before = {secret_hash for secret_hash, _line, _kind in scan(path, old, None)} if old else set()
    for secret_hash, line, kind in found:
        if secret_hash not in before:
            return f"{path}:{line}: {kind}"
    return None


# detect-secrets' entropy plugins flag any long random-looking string: every checksum file, lock-file hash and
# encoded fixture a build writes (a `sha256sum` output held a build for review in lg's own tests). The plugins
# that know a credential's shape (AWS, GitHub, Slack, private keys, JWTs...) and its keyword detector do not.
NOISY_PLUGINS = frozenset({"Base64HighEntropyString", "HexHighEntropyString"})


@contextlib.contextmanager
def _detector() -> Iterator[Scan]:
    """detect-secrets with its plugins (but the entropy ones) and default filters, set up once per change set."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class  # noqa: PLC0415
    from detect_secrets.core.scan import scan_file  # noqa: PLC0415 - 0.2 s to import: only when content is read
    from detect_secrets.settings import transient_settings  # noqa: PLC0415

    classes: list[type] = list(get_mapping_from_secret_type_to_class().values())
    plugins = [{"name": plugin.__name__} for plugin in classes if plugin.__name__ not in NOISY_PLUGINS]
    with tempfile.TemporaryDirectory(prefix="lg-secrets-") as scratch, transient_settings({"plugins_used": plugins}):
        def scan(path: str, text: str, file: Path | None) -> list[tuple[str, int, str]]:
            if file is None:  # the detector's filters read the file's name (lock files...): keep it
                file = Path(scratch) / PurePosixPath(path).name
                file.write_text(text)
            return [(secret.secret_hash, secret.line_number, secret.type) for secret in scan_file(str(file))]

        yield scan


def content_changes(changes: Sequence[FileChange], matcher: ContentMatch, reader: ContentReader,
                    fail_closed: bool = True) -> list[tuple[FileChange, str]]:
    """The changes whose content matches, with what matched (see ContentMatch.hits for `fail_closed`)."""
    if not matcher.secrets:
        return _collect(changes, matcher, reader, None, fail_closed)
    readable = [change for change in changes if change.kind != "deleted"]
    if len(readable) > MAX_SECRET_SCANS:  # fail closed: not scanned is not clean
        return [(readable[0], f"{len(readable)} changed files, more than the {MAX_SECRET_SCANS} lg scans for "
                              "secrets: not scanned")]
    with _detector() as scan:
        return _collect(readable, matcher, reader, scan, fail_closed)


def _collect(changes: Sequence[FileChange], matcher: ContentMatch, reader: ContentReader,
             scan: Scan | None, fail_closed: bool) -> list[tuple[FileChange, str]]:
    found = []
    for change in changes:
        detail = matcher.hits(change, reader, scan, fail_closed)
        if detail is not None:
            found.append((change, detail))
    return found
