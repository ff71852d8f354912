"""Issue 18: a step's outputs never hold a declared secret: masked when recorded, and the log says so."""

from __future__ import annotations

from dataclasses import replace

from lg.config.secrets import Masker, SecretValues
from lg.errors import ExitCode
from lg.runner.engine import run_pipeline
from lg.runner.secret_outputs import mask_outputs
from tests.runner.test_engine_fake import Project, project  # noqa: F401 - the fixture

SECRET = "s3cr3t-t0ken-value"  # noqa: S105 - a test value, declared as a secret below


def test_mask_outputs_names_what_it_masked() -> None:
    masked, names = mask_outputs({"a": f"x{SECRET}y", "b": "plain"}, Masker([SECRET]))
    assert masked == {"a": "x***y", "b": "plain"} and names == ["a"]


def test_a_secret_written_to_an_output_is_stored_masked_and_passed_on_masked(project: Project) -> None:  # noqa: F811
    request = project.request("""\
        name: leak
        secrets:
          - TOKEN
        steps:
          - id: leak
            run: echo "token=$TOKEN" >> "$LG_OUTPUT"
            outputs: [token]
          - id: use
            needs: [leak]
            run: echo "{{ steps.leak.outputs.token }}" > used.txt
        """)
    outcome = run_pipeline(replace(request, secrets=SecretValues({"TOKEN": SECRET})), project.store)
    assert outcome.exit_code == ExitCode.OK
    assert project.store.step(outcome.run.id, "leak").outputs == {"token": "***"}
    assert (project.root / "used.txt").read_text() == "***\n"
    assert any("output token held a declared secret: masked" in line for line in project.echoed)
    stored = b"".join(path.read_bytes() for path in (project.root / ".lg").rglob("*") if path.is_file())
    assert SECRET.encode() not in stored  # not in the database, the logs, the audit log or a card
