"""A tool-call gate's card (lg.approvals.card, kind "tool"): the call in full, the model's stated reason, the
diff of a write, secrets masked, in `lg show`'s text and in `lg review`'s document; its subject binds the call."""

from __future__ import annotations

from lg.approvals.card import CardInput, build, render
from lg.config.project import load_project_config
from lg.config.secrets import SecretValues
from lg.review.cardlines import card_document
from lg.security.profile import load_vm_profile
from tests.conftest import REPO

SECRET = "tok-0123456789abcdefghij"  # noqa: S105 - a stand-in, to see it masked


def tool_card(content: str) -> tuple[dict[str, object], dict[str, object]]:
    profile = load_vm_profile("default", load_project_config(REPO), REPO)
    call = {"id": "call_1", "name": "write_file", "reason": "fix the workflow",
            "arguments": {"path": ".github/workflows/ci.yml", "content": content, "reason": "fix the workflow"}}
    diff = f"--- a/.github/workflows/ci.yml\n+++ b/.github/workflows/ci.yml\n@@ -1 +1 @@\n-on: pull\n+{content}"
    return build(CardInput("run-1", "fix", "fix", "tool", "fix.tool-3", "write_file .github/workflows/ci.yml",
                           profile, None, ("graded orange",), call=call, call_diff=diff),
                 SecretValues({"T": SECRET}).masker())


def test_the_card_shows_the_call_its_reason_and_its_diff_masked() -> None:
    subject, card = tool_card(f"on: push  # {SECRET}")
    assert card["call"] == {"name": "write_file", "reason": "fix the workflow",
                            "arguments": {"path": ".github/workflows/ci.yml", "content": "on: push  # ***"}}
    assert card["diff"] == ["--- a/.github/workflows/ci.yml", "+++ b/.github/workflows/ci.yml", "@@ -1 +1 @@",
                            "-on: pull", "+on: push  # ***"]
    text = render(card, digest="d" * 64, status="open", outcome=None, colour=False, width=100)
    assert "tool-call gate" in text and "call: write_file" in text
    assert "reason (the model's): fix the workflow" in text and "+on: push  # ***" in text
    assert SECRET not in text and SECRET not in str(subject)
    document = card_document(card, "d" * 64)
    sections = {line.section for line in document.lines}
    assert {"call", "diff"} <= sections
    assert any("on: push  # ***" in line.text.plain for line in document.lines if line.section == "call")


def test_the_subject_binds_the_call() -> None:
    first, _ = tool_card("on: push")
    second, _ = tool_card("on: [push, pull_request]")
    assert first["call_sha256"] != second["call_sha256"]
