"""One RunStore used by many threads at once, as a run's steps use it (lg.runner.scheduler): every transition
lands, none is lost or joined to another thread's transaction, and the audit chain and its head stay whole."""

from __future__ import annotations

import threading
from pathlib import Path

from lg.model import FileChange
from lg.runs.gates import GateRules, GateStore
from lg.runs.states import StepStatus
from tests.stores import StoreBackend

THREADS = 8
STEPS_EACH = 6


def test_steps_moved_from_many_threads_at_once_keep_the_records_and_the_chain_whole(
        tmp_path: Path, store_backend: StoreBackend) -> None:
    store = store_backend.open(tmp_path)
    ids = [f"s{t}-{n}" for t in range(THREADS) for n in range(STEPS_EACH)]
    run_id = store.create_run("threads", Path("p.yaml"), tmp_path, "alice", [(i, i) for i in ids]).id
    store.start_run(run_id)
    gates = GateStore(store)
    problems: list[BaseException] = []
    start = threading.Barrier(THREADS + 1)

    def steps_of(thread: int) -> None:
        try:
            start.wait()
            for n in range(STEPS_EACH):
                step = f"s{thread}-{n}"
                store.grade_step(run_id, step, {"level": "green"})
                if n % 3 == 0:  # some wait at a gate that is then cancelled with the step
                    store.wait_at_gate(run_id, step, StepStatus.AWAITING_APPROVAL, f"{step}.before")
                    gates.open(run_id, step, "before", {"n": n}, {}, GateRules())
                    store.cancel_step(run_id, step, "cancelled: another step failed (fail_fast)")
                    continue
                store.start_step(run_id, step, tmp_path / f"{step}.log", "ab" * 32)
                store.applying(run_id, step)
                store.applied(run_id, step, (FileChange(f"{step}.txt", "created"),))
        except BaseException as error:
            problems.append(error)

    def reader(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                assert len(store.steps(run_id)) == len(ids)
                gates.gates(run_id)
                store.run(run_id)
            except BaseException as error:
                problems.append(error)
                return

    workers = [threading.Thread(target=steps_of, args=(t,)) for t in range(THREADS)]
    stop = threading.Event()
    watching = threading.Thread(target=reader, args=(stop,))
    watching.start()
    for worker in workers:
        worker.start()
    start.wait()
    for worker in workers:
        worker.join(timeout=120)
    stop.set()
    watching.join()
    assert problems == []
    statuses = {s.step_id: s.status for s in store.steps(run_id)}
    assert statuses == {step: StepStatus.CANCELLED if int(step.split("-")[1]) % 3 == 0 else StepStatus.SUCCEEDED
                        for step in ids}
    records = [r for r in store.audit_log.records() if r.run_id == run_id]
    assert sum(r.kind == "effects.applied" for r in records) == THREADS * (STEPS_EACH - 2)
    assert sum(r.kind == "step.cancelled" for r in records) == THREADS * 2
    assert [r.seq for r in store.audit_log.records()] == list(range(1, len(list(store.audit_log.records())) + 1))
    assert store.verify_audit() == []
    store.close()
    assert store_backend.open(tmp_path).verify_audit() == []  # the head (on disk, or its row) is the chain's last


def test_a_new_state_directory_opened_by_several_at_once_opens_for_all(tmp_path: Path) -> None:
    """Two lg processes starting together on a new state directory (say `lg run` and `lg serve`): the first
    opener's switch to WAL mode must not fail the others with "database is locked" (SQLite answers that at
    once, without its busy timeout). SQLite only: the race is the file's. Failed 2 rounds in 30 before."""
    from lg.runs.store import RunStore

    for round_ in range(30):
        directory = tmp_path / str(round_)
        start = threading.Barrier(6)
        errors: list[Exception] = []

        def open_it(directory: Path = directory, start: threading.Barrier = start,
                    errors: list[Exception] = errors) -> None:
            start.wait()
            try:
                RunStore(directory).close()
            except Exception as error:
                errors.append(error)

        openers = [threading.Thread(target=open_it) for _ in range(6)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
        assert errors == [], f"round {round_}: {errors[0]}"
