from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lg.config.pipeline import load_pipeline
from lg.config.secrets import Masker, resolve_secrets
from lg.errors import InvalidInput


def test_values_come_from_env_and_files_and_are_masked(write: Callable[..., Path]) -> None:
    write("key.txt", "line-one-of-the-key\nline-two-of-the-key\n")
    path = write("p.yaml", """\
        name: x
        secrets:
          TOKEN: {env: CI_TOKEN}
          KEY: {file: key.txt}
        steps: [{id: a, run: echo}]
        """)
    secrets = resolve_secrets(load_pipeline(path), {"CI_TOKEN": "s3cr3t-value"})
    assert "s3cr3t" not in repr(secrets)
    mask = secrets.masker()
    assert mask("token=s3cr3t-value; key line: line-two-of-the-key") == "token=***; key line: ***"


def test_missing_secret_is_an_input_error(write: Callable[..., Path]) -> None:
    path = write("p.yaml", "name: x\nsecrets: [NPM_TOKEN]\nsteps: [{id: a, run: echo}]\n")
    with pytest.raises(InvalidInput, match="secret NPM_TOKEN: environment variable NPM_TOKEN is not set"):
        resolve_secrets(load_pipeline(path), {})


def test_masking_prefers_the_longest_value_and_handles_bytes() -> None:
    mask = Masker(["abcd", "abcdefgh"])
    assert mask("xabcdefghx abcd") == "x***x ***"
    assert mask.bytes(b"\xffabcd") == b"\xff***"
    assert Masker([])("nothing") == "nothing"
