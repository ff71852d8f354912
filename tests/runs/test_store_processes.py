"""Many processes deciding one gate at once, each with its own connection, as many `lg approve` commands on
different machines would: exactly one transition and one gate.approved record, the others refused. On both
stores (tests/stores.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from lg.runs.gates import GateRules, GateStore
from tests.stores import StoreBackend

PROCESSES = 12
REPO = Path(__file__).resolve().parents[2]

APPROVER = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from lg.errors import InvalidInput
    from lg.runs.gates import Decision, GateStore
    from lg.runs.store import RunStore

    state, url, run_id, gate_id, digest, name = sys.argv[1:]
    store = RunStore(Path(state), url or None)
    gates = GateStore(store)
    gate = gates.gate(run_id, gate_id)
    print("ready", flush=True)
    sys.stdin.readline()  # all start deciding together
    try:
        gates.record(gate, Decision(run_id, gate_id, digest, name, "approve", None, "{}", None, None, time.time()))
        print("recorded")
    except InvalidInput as error:
        print("refused", error)
""")


def test_processes_deciding_one_gate_at_once_make_exactly_one_transition(tmp_path: Path,
                                                                          store_backend: StoreBackend) -> None:
    store = store_backend.open(tmp_path / "state")
    run = store.create_run("deploy", tmp_path / "p.yaml", tmp_path, "alice", [("ship", "Ship")])
    gate = GateStore(store).open(run.id, "ship", "explicit", {"run": run.id}, {}, GateRules(count=1))
    processes = [subprocess.Popen(
        [sys.executable, "-c", APPROVER, str(store.state_dir), store.url or "", run.id, gate.gate_id, gate.digest,
         f"approver-{index}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        for index in range(PROCESSES)]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outcomes = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert Counter(outcome.split()[0] for outcome in outcomes) == {"recorded": 1, "refused": PROCESSES - 1}
    assert all("already approved" in outcome for outcome in outcomes if outcome.startswith("refused"))
    kinds = Counter(record.kind for record in store.audit_log.records())
    assert (kinds["gate.decision"], kinds["gate.approved"]) == (1, 1)
    assert len(GateStore(store).decisions(gate)) == 1
    assert store.verify_audit() == []
