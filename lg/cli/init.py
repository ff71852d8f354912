"""`lg init [DIR]`: start a project of one's own (lg.inputs.scaffold)."""

from __future__ import annotations

from pathlib import Path

import click

from lg.errors import ExitCode


@click.command()
@click.argument("directory", metavar="DIR", required=False, default=".", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace files that exist already (refused otherwise, exit 2).")
@click.option("--image", default="default", show_default=True, help="The guest image recipe lg.yaml names.")
def init(directory: Path, force: bool, image: str) -> int:
    """Write lg.yaml, an example pipeline.yaml and copies of the shipped VM profiles, risk policies, seccomp
    and AppArmor profiles and schemas into DIR (default: here), to edit in version control.

    \b
    The project's own profiles are used before the shipped ones from then on.
    Exit codes: 0 written; 2 a file exists already (nothing is written; --force replaces) or DIR is a file.
    """
    from lg.inputs.scaffold import init_project  # noqa: PLC0415

    scaffold = init_project(directory, force=force, image=image)
    root = scaffold.directory
    click.echo(f"wrote {len(scaffold.written)} files into {root.resolve()}:")
    tops = dict.fromkeys(path.relative_to(root).parts[0] for path in scaffold.written)
    for top in tops:  # lg.yaml, pipeline.yaml, then the folders of copies
        click.echo(f"  {top}{'/' if (root / top).is_dir() else ''}")
    click.echo(f"next: cd {root} && lg validate pipeline.yaml && lg run pipeline.yaml")
    return ExitCode.OK
