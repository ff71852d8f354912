"""The keys of a step that move data around it: `cache:` (directories kept between runs) and
`artifacts_from:` (artifacts of needed steps delivered into its VM). Checked here, at load time, so that
`lg validate` reports them at their line like every other key.

A cache key is a template. Everything in it renders at load time except hashFiles('glob', ...), which reads the
host workspace and so must wait until the step runs: it renders to a marker that the runner replaces with the
hash (lg.runner.step_cache). The marker survives only when hashFiles() is used as a whole value, which is
checked here.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any

from lg.config import templates
from lg.config.yamlsource import KeyPath
from lg.model import CacheSpec

HASH_FILES_MARKER = re.compile(r"\x00hashFiles(\[.*?\])\x00")
RESERVED_GUEST_DIRS = ("/workspace", "/proc", "/sys", "/dev", "/run")
DEFAULT_ARTIFACTS_DIR = "/artifacts"
GLOB_CHARACTERS = "*?["

Fail = Callable[[KeyPath, str], None]
TemplateFail = Callable[[KeyPath, templates.TemplateProblem], None]


def hash_files_marker(*patterns: object) -> str:
    """What hashFiles(...) renders to at load time; replaced by the hash when the step runs."""
    if not patterns or not all(isinstance(pattern, str) and pattern for pattern in patterns):
        raise templates.TemplateProblem("hashFiles() takes one or more glob patterns, as strings", None)
    return f"\x00hashFiles{json.dumps(list(patterns))}\x00"


def deferred_patterns(key: str) -> list[list[str]]:
    """The pattern lists of the hashFiles() calls left in a loaded cache key."""
    return [json.loads(found) for found in HASH_FILES_MARKER.findall(key)]


def cache_spec(raw: Mapping[str, Any] | None, key_path: KeyPath, context: Mapping[str, Any],
               fail: Fail, template_fail: TemplateFail) -> CacheSpec | None:
    if raw is None:
        return None
    key_text = str(raw["key"])
    try:
        parsed = templates.parse(key_text)
        if "steps" in parsed.names:
            fail((*key_path, "cache", "key"), "a cache key cannot read step outputs (steps.*): it is decided "
                                              "before the step runs, from vars, env, matrix and hashFiles()")
            return None
        key = templates.render(key_text, {**context, "hashFiles": hash_files_marker})
    except templates.TemplateProblem as problem:
        template_fail((*key_path, "cache", "key"), problem)
        return None
    if "\x00" in HASH_FILES_MARKER.sub("", key):
        fail((*key_path, "cache", "key"), "hashFiles() must be used as a whole value in a cache key "
                                          "(not sliced or filtered)")
    paths = []
    for position, path in enumerate(raw["paths"]):
        where = (*key_path, "cache", "paths", position)
        normal = posixpath.normpath(path)
        if path.startswith(("/", "~")) or normal == ".." or normal.startswith("../") or normal == ".":
            fail(where, f"{path!r}: a cache path is a directory inside the workspace (relative, no '..'); for a "
                        "non-root step $HOME is the workspace, so ~/.cache/pip is .cache/pip")
        elif any(character in path for character in GLOB_CHARACTERS):
            fail(where, f"{path!r}: a cache path is a directory or file, not a glob")
        else:
            paths.append(normal)
    return CacheSpec(key=key, paths=tuple(paths))


def artifacts_from(raw: Mapping[str, Any] | None, key_path: KeyPath, step_id: str,
                   shards: Mapping[str, list[str]], upstream: set[str], keeps_artifacts: Callable[[str], bool],
                   fail: Fail) -> dict[str, str]:
    """Needed step id -> where its artifacts appear in this step's VM. A matrix step's base id names all of its
    shards, each under PATH/SHARD_ID."""
    if not raw:
        return {}
    delivered: dict[str, str] = {}
    for source, path in raw.items():
        where = (*key_path, "artifacts_from", source)
        guest_path = _guest_path(path if path is not None else f"{DEFAULT_ARTIFACTS_DIR}/{source}", where, fail)
        ids = shards.get(source)
        if ids is None:
            fail(where, f"unknown step {source!r}")
            continue
        for shard in ids:
            if shard not in upstream:
                fail(where, f"step {step_id!r} receives the artifacts of {shard!r} but does not need it "
                            f"(add {source!r} to 'needs')")
            elif not keeps_artifacts(shard):
                fail(where, f"step {shard!r} keeps no artifacts (it has no 'artifacts:')")
            elif guest_path is not None:
                delivered[shard] = guest_path if ids == [source] else f"{guest_path}/{shard}"
    return delivered


def _guest_path(path: Any, where: KeyPath, fail: Fail) -> str | None:
    text = str(path)
    normal = posixpath.normpath(text)
    if not text.startswith("/") or ".." in text.split("/") or normal == "/":
        fail(where, f"{text!r}: where artifacts appear in the VM is an absolute path other than '/', without '..'")
        return None
    if any(normal == reserved or normal.startswith(reserved + "/") for reserved in RESERVED_GUEST_DIRS):
        fail(where, f"{text!r} is inside {', '.join(RESERVED_GUEST_DIRS)}: received artifacts must not land in "
                    "the workspace (they would count as the step's changes) or in the guest's system directories")
        return None
    return normal
