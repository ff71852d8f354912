"""Measures `lg serve` as real processes over a real state store, and prints JSON:

- approve_to_continue_s: a `lg run --wait` waits at a gate; from sending the approval to the API to the runner
  recording `run.continued` (what the approver feels). The run's steps execute on the fake backend
  (tests/runner/lg_on_fake.py): booting a VM comes after the measured span and is measured by vm_bench.py.
- approve_request_s: the approval's HTTP request alone (token check, audit check, decision, commit).
- pending_gates: GET /api/v1/gates with 1,000 runs stored (PENDING_OPEN of them paused at an open gate, the rest
  decided), CLIENTS concurrent keep-alive clients, ROUNDS rounds of REQUESTS requests: p50 / p99 / max latency and rate
  of each round, and the medians over the rounds.
- idle_rss_mib: the lg serve process's resident memory after start, and after the load above.

Usage: python benchmarks/server_bench.py  (from the repository root)
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lg.runs.gates import GateRules, GateStore  # noqa: E402
from lg.runs.store import RunStore  # noqa: E402
from lg.runs.tokens import Role, TokenStore  # noqa: E402

SAMPLES = 5
RUNS = 1000
PENDING_OPEN = 50
CLIENTS = 50
REQUESTS = 2000  # per round
ROUNDS = 5  # the machines are shared: one round can meet another job's burst
PIPELINE = """\
name: server-bench
steps:
  - id: gated
    approve: {reason: benchmark}
    run: echo approved > approved.txt
"""
DIFF = "".join(f"+line {i} of a held file, as a diff card shows it\n" for i in range(40))


def start_server(state: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "lg", "serve", "--listen", "127.0.0.1:0", "--state",
                                str(state)], text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"lg serve did not start: {line}")
    return process, line.split("listening on ")[1].split()[0]


def request(url: str, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method,  # noqa: S310 - our own local server
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# --- approve through the API to the waiting runner going on ------------------------------------------------------


def approve_sample(project: Path, env: dict[str, str], url: str, token: str) -> dict[str, float]:
    runner = subprocess.Popen([sys.executable, str(REPO / "tests/runner/lg_on_fake.py"), str(project / "vms"),
                               "run", "--wait", "pipeline.yaml"], cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            status, gates = request(url, "GET", "/api/v1/gates", token)
            waiting = [g for g in gates if _waiting(project, g["run"])]
            if waiting:
                break
            if time.monotonic() > deadline or runner.poll() is not None:
                raise SystemExit("the run never waited at its gate")
            time.sleep(0.05)
        gate = waiting[0]
        sent_wall, sent = time.time(), time.perf_counter()
        status, _ = request(url, "POST", f"/api/v1/runs/{gate['run']}/gates/{gate['gate']}/decisions", token,
                            {"verdict": "approve", "digest": gate["digest"]})
        approve_request = time.perf_counter() - sent
        if status != 201 or runner.wait(timeout=120) != 0:
            raise SystemExit(f"the approval or the run failed (HTTP {status}, exit {runner.returncode})")
    finally:
        if runner.poll() is None:
            runner.kill()
    store = RunStore(project / ".lg")
    continued = max(r.ts for r in store.audit_log.records() if r.kind == "run.continued" and r.run_id == gate["run"])
    store.close()
    return {"approve_to_continue_s": continued - sent_wall, "approve_request_s": approve_request}


def _waiting(project: Path, run_id: str) -> bool:
    """The runner is in its wait loop (the pause is recorded with waiting: true)."""
    store = RunStore(project / ".lg")
    try:
        return any(r.kind == "run.paused" and r.run_id == run_id and r.data.get("waiting")
                   for r in store.audit_log.records())
    finally:
        store.close()


def measure_approvals() -> dict[str, Any]:
    from lg.config.project import load_project_config
    from lg.testing.images import stand_in_image

    with tempfile.TemporaryDirectory(prefix="lg-server-bench-") as scratch:
        project = Path(scratch)
        (project / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\npool: {snapshots: false}\n")
        (project / "pipeline.yaml").write_text(PIPELINE)
        env = {**os.environ, "PYTHONPATH": str(REPO), "LG_CACHE_DIR": str(project / "cache"),
               "LG_USER": "ci-bot@example.com"}
        env.pop("LG_STATE_DIR", None)
        os.environ["LG_CACHE_DIR"] = env["LG_CACHE_DIR"]
        stand_in_image(load_project_config(project), "tiny")
        token = TokenStore(RunStore(project / ".lg")).create("approver@example.com", Role.APPROVER, "bench")[1]
        server, url = start_server(project / ".lg")
        try:
            samples = [approve_sample(project, env, url, token) for _ in range(SAMPLES)]
        finally:
            server.terminate()
            server.wait()
    return {key: {"median": round(statistics.median(s[key] for s in samples), 4),
                  "max": round(max(s[key] for s in samples), 4)} for key in samples[0]}


# --- pending gates under load ------------------------------------------------------------------------------------


def fill(state: Path) -> str:
    """RUNS runs, each with a gate; all but PENDING_OPEN decided."""
    store = RunStore(state)
    gates = GateStore(store)
    workspace = state.parent
    for index in range(RUNS):
        run = _new_run(store, workspace)
        subject = {"run": run.id, "step": "deploy", "n": index}
        card = {"run": run.id, "gate": "deploy.effects", "step": "deploy", "kind": "effects", "level": "orange",
                "command": "npm install left-pad@1.3.0 && ./deploy.sh --env production", "rules": [],
                "changes": [{"path": "package.json", "change": "modify", "diff": DIFF}]}
        gate = gates.open(run.id, "deploy", "effects", subject, card, GateRules(allow_self_approval=True))
        if index >= PENDING_OPEN:
            from lg.approvals.decide import decide

            decide(gates, run, gate, "approve", None, user="approver@example.com")
    token = TokenStore(store).create("viewer@example.com", Role.VIEWER, "bench")[1]
    store.close()
    return token


def _new_run(store: RunStore, workspace: Path) -> Any:
    """A run; ids are unique per second to 16 random bits, which a thousand runs a second can repeat."""
    import sqlite3

    while True:
        try:
            return store.create_run("bench", workspace / "pipeline.yaml", workspace, "ci-bot@example.com",
                                    [("deploy", "deploy")])
        except sqlite3.IntegrityError:
            continue


async def _client(host: str, port: int, token: str, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    message = (f"GET /api/v1/gates HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
               ).encode()
    expected = b""
    for _ in range(count):
        started = time.perf_counter()
        writer.write(message)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        if not expected:  # parsed once per client (parsing is the client's time, not the server's)
            if not head.startswith(b"HTTP/1.1 200") or len(json.loads(body)) != PENDING_OPEN:
                raise SystemExit(f"unexpected answer: {head!r}")
            expected = body
        elif body != expected:
            raise SystemExit("the list of open gates changed under a read-only load")
    writer.close()


async def _load(url: str, token: str) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    await _client(host, int(port), token, 20, [])  # warm up: worker threads open their connections
    started = time.perf_counter()
    await asyncio.gather(*(_client(host, int(port), token, REQUESTS // CLIENTS, latencies) for _ in range(CLIENTS)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
            "max_ms": round(latencies[-1] * 1000, 2), "requests_per_s": round(len(latencies) / elapsed, 1)}


def _run_loop(work: Any) -> Any:
    """The clients on uvloop when it is there (as the server is): less of the shared CPU goes to the client."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


def measure_pending() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lg-server-bench-") as scratch:
        state = Path(scratch) / ".lg"
        filled = time.perf_counter()
        token = fill(state)
        fill_s = time.perf_counter() - filled
        server, url = start_server(state)
        try:
            time.sleep(1.0)  # settle before reading the idle size
            process = psutil.Process(server.pid)
            idle = process.memory_info().rss
            rounds = [_run_loop(_load(url, token)) for _ in range(ROUNDS)]
            after = process.memory_info().rss
        finally:
            server.terminate()
            server.wait()
    return {"runs_stored": RUNS, "open_gates": PENDING_OPEN, "clients": CLIENTS, "requests": REQUESTS,
            "p50_ms_median_of_rounds": statistics.median(r["p50_ms"] for r in rounds),
            "p99_ms_median_of_rounds": statistics.median(r["p99_ms"] for r in rounds),
            "rounds": rounds, "fill_s": round(fill_s, 1), "idle_rss_mib": round(idle / 2**20, 1),
            "rss_after_load_mib": round(after / 2**20, 1)}


def main() -> None:
    result = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
              "approve": measure_approvals(), "pending_gates": measure_pending()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
