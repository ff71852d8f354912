"""`lg init` (issue #19 item 8): a project of one's own, with copies of the shipped profiles, that validates and
runs; existing files are never overwritten without --force."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lg.config.project import BUILTIN_ROOT, load_project_config
from lg.policy.load import load_policy


def test_init_writes_a_project_that_validates_and_uses_its_own_copies(
        lg: Callable[..., Any], tmp_path: Path) -> None:
    project = tmp_path / "mine"
    result = lg("init", project)
    assert result.code == 0, result.err
    assert (project / "lg.yaml").is_file() and (project / "pipeline.yaml").is_file()
    for shipped in (BUILTIN_ROOT / "profiles").rglob("*"):
        if shipped.is_file():
            copy = project / "profiles" / shipped.relative_to(BUILTIN_ROOT / "profiles")
            assert copy.read_bytes() == shipped.read_bytes() and not copy.is_symlink()
    assert (project / "schemas" / "pipeline.schema.json").is_file()
    assert (project / ".gitignore").read_text() == ".lg/\n"
    validated = lg("validate", project / "pipeline.yaml", project / "lg.yaml")
    assert validated.code == 0, validated.err
    config = load_project_config(project)
    assert config.paths.vm_profiles[0] == (project / "profiles" / "vm").resolve()
    assert load_policy("default", config, project).path == (project / "profiles" / "risk" / "default.yaml").resolve()


def test_init_refuses_to_overwrite_and_force_replaces(lg: Callable[..., Any], tmp_path: Path) -> None:
    project = tmp_path / "mine"
    project.mkdir()
    (project / "lg.yaml").write_text("image: tiny\n")
    (project / ".gitignore").write_text("build/")
    refused = lg("init", project)
    assert refused.code == 2
    assert f"1 file(s) exist already and are left as they are:\n  {project / 'lg.yaml'}" in refused.err
    assert "nothing was written; --force replaces them" in refused.err
    assert sorted(p.name for p in project.iterdir()) == [".gitignore", "lg.yaml"]
    assert (project / "lg.yaml").read_text() == "image: tiny\n"
    forced = lg("init", "--force", project)
    assert forced.code == 0, forced.err
    assert "image: default" in (project / "lg.yaml").read_text()
    assert (project / ".gitignore").read_text() == "build/\n.lg/\n"
    assert lg("init", "--force", project).code == 0
    assert (project / ".gitignore").read_text() == "build/\n.lg/\n"  # not added twice


def test_init_into_a_file_is_refused(lg: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = lg("init", tmp_path / "afile")
    assert result.code == 2 and "not a directory" in result.err


def test_the_shipped_folders_are_the_top_level_ones_in_a_checkout() -> None:
    repo = Path(__file__).resolve().parents[2]
    for folder in ("profiles", "schemas", "images"):
        assert (BUILTIN_ROOT / folder).resolve() == repo / folder
