"""Runs read through `lg serve`: what `lg status` and `lg logs` print, as they print it locally."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from lg.client.gates import run_path
from lg.client.http import ApiClient, ServerRefused
from lg.errors import InvalidInput


@dataclass(frozen=True)
class RemoteRuns:
    client: ApiClient

    def runs(self, limit: int) -> list[dict[str, Any]]:
        """Recent runs, newest first, each as `lg runs --json` prints it (the server keeps at most 1,000)."""
        documents: list[dict[str, Any]] = self.client.get_json("/api/v1/runs", {"limit": str(min(limit, 1000)),
                                                                               "records": "1"})
        return documents

    def status(self, run_id: str) -> dict[str, Any]:
        """The run as `lg status --json` prints it (lg.runs.report.status_document, built on the server)."""
        document: dict[str, Any] = self.client.get_json(f"{run_path(run_id)}/status")
        return document

    def nobody_waits(self, run_id: str) -> bool:
        """No lg process holds the run (it paused and its process left): someone has to resume it."""
        run: dict[str, Any] = self.status(run_id)["run"]
        return run.get("pid") is None or bool(run.get("abandoned"))

    def logs(self, run_id: str, step_id: str | None) -> dict[str, str | None]:
        """Each step's output (secrets masked), of the steps that have run: None for a log that has gone."""
        steps: list[dict[str, Any]] = self.client.get_json(f"{run_path(run_id)}/steps")
        if step_id is not None:
            steps = [step for step in steps if step["step"] == step_id]
            if not steps:
                raise InvalidInput(f"run {run_id} has no step {step_id!r}")
        return {step["step"]: self._log(run_id, step["step"]) for step in steps if step["has_log"]}

    def _log(self, run_id: str, step_id: str) -> str | None:
        try:
            answer = self.client.get_bytes(f"{run_path(run_id)}/steps/{quote(step_id, safe='')}/log")
        except ServerRefused as refused:
            if refused.code == "no_log":  # recorded, but the file is gone: `lg logs` shows it as null too
                return None
            raise
        return answer.body.decode("utf-8", errors="replace")
