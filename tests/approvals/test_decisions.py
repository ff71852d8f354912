"""Deciding gates: SSH signatures, N of M, self-approval, expiry, digest binding and concurrent approvers.

Real OpenSSH keys and `ssh-keygen -Y`, a real SQLite state store; no VM is needed to decide a gate.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.approvals.decide import DecisionRefused, SignedDecision, decide, sign_decision
from lg.approvals.signing import SignatureRefused
from lg.errors import InvalidInput
from lg.runs.gates import Gate, GateRules, GateStore
from lg.runs.states import RunStatus
from lg.runs.store import RunRecord, RunStore
from tests.stores import StoreBackend, state_env


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, store_backend: StoreBackend) -> RunStore:
    return store_backend.open(tmp_path / "state")


@pytest.fixture
def run(store: RunStore, tmp_path: Path) -> RunRecord:
    return store.create_run("deploy", tmp_path / "p.yaml", tmp_path, "alice@example.com", [("build", "build"),
                                                                                          ("ship", "ship")])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Ed25519 keys for three people; mallory's is not in allowed_signers."""
    directory = tmp_path_factory.mktemp("keys")
    paths = {}
    for name in ("alice", "bob", "mallory"):
        path = directory / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
        paths[name] = path
    lines = [f"{name}@example.com {(directory / f'{name}.pub').read_text().split(' ', 2)[0]} "
             f"{(directory / f'{name}.pub').read_text().split(' ', 2)[1]}" for name in ("alice", "bob")]
    (directory / "allowed_signers").write_text("\n".join(lines) + "\n")
    paths["allowed_signers"] = directory / "allowed_signers"
    return paths


def open_gate(store: RunStore, run: RunRecord, clock: Clock, step: str = "ship", **rules: Any) -> Gate:
    subject = {"run": run.id, "step": step, "script_sha256": "ab" * 32, "changes": [{"path": "x", "sha256": "cd"}]}
    card = {"run": run.id, "gate": f"{step}.effects", "step": step, "kind": "effects", "level": "orange"}
    return GateStore(store, clock).open(run.id, step, "effects", subject, card, GateRules(**rules))


def audit_kinds(store: RunStore) -> list[str]:
    return [record.kind for record in store.audit_log.records()]


# --- signatures --------------------------------------------------------------------------------------------


def test_a_valid_signature_approves_as_the_key_s_principal(store: RunStore, run: RunRecord, clock: Clock,
                                                           keys: dict[str, Path]) -> None:
    gate = open_gate(store, run, clock, require_signature=True, allowed_signers=str(keys["allowed_signers"]))
    signed = sign_decision(gate, "approve", "looks right", keys["bob"])
    settled = decide(GateStore(store, clock), run, gate, "approve", None, signed=signed)
    assert settled.status == "approved" and settled.outcome == "approved by bob@example.com"
    (decision,) = GateStore(store, clock).decisions(settled)
    assert (decision.signed_by, decision.comment) == ("bob@example.com", "looks right")
    assert store.audit_log.verify() == []


def test_a_key_not_in_allowed_signers_is_refused(store: RunStore, run: RunRecord, clock: Clock,
                                                 keys: dict[str, Path]) -> None:
    gate = open_gate(store, run, clock, require_signature=True, allowed_signers=str(keys["allowed_signers"]))
    signed = sign_decision(gate, "approve", None, keys["mallory"])
    with pytest.raises(SignatureRefused, match="not in"):
        decide(GateStore(store, clock), run, gate, "approve", None, signed=signed)
    assert GateStore(store, clock).gate(run.id, gate.gate_id).status == "open"  # type: ignore[union-attr]


def test_a_tampered_payload_is_refused(store: RunStore, run: RunRecord, clock: Clock, keys: dict[str, Path]) -> None:
    gate = open_gate(store, run, clock, require_signature=True, allowed_signers=str(keys["allowed_signers"]))
    signed = sign_decision(gate, "reject", "no", keys["bob"])
    forged = SignedDecision(signed.payload.replace('"reject"', '"approve"'), signed.signature)
    with pytest.raises(SignatureRefused, match="does not match its content"):
        decide(GateStore(store, clock), run, gate, "approve", None, signed=forged)


def test_a_signature_replayed_onto_another_gate_or_twice_is_refused(store: RunStore, run: RunRecord, clock: Clock,
                                                                    keys: dict[str, Path]) -> None:
    rules = {"require_signature": True, "allowed_signers": str(keys["allowed_signers"]), "count": 2}
    first = open_gate(store, run, clock, "build", **rules)
    second = open_gate(store, run, clock, "ship", **rules)
    signed = sign_decision(first, "approve", None, keys["bob"])
    gates = GateStore(store, clock)
    decide(gates, run, first, "approve", None, signed=signed)
    with pytest.raises(SignatureRefused, match=r"gate 'build\.effects', not 'ship\.effects'"):
        decide(gates, run, second, "approve", None, signed=signed)
    with pytest.raises(InvalidInput, match="never counted twice"):
        decide(gates, run, first, "approve", None, signed=signed)
    assert [d.approver for d in gates.decisions(first)] == ["bob@example.com"]


def test_unsigned_decisions_are_refused_when_the_policy_asks_for_signatures(
        store: RunStore, run: RunRecord, clock: Clock, keys: dict[str, Path]) -> None:
    gate = open_gate(store, run, clock, require_signature=True, allowed_signers=str(keys["allowed_signers"]))
    with pytest.raises(DecisionRefused, match="requires a signed decision"):
        decide(GateStore(store, clock), run, gate, "approve", None, user="bob@example.com")


def test_a_signed_decision_file_written_elsewhere_can_be_submitted(store: RunStore, run: RunRecord, clock: Clock,
                                                                   keys: dict[str, Path], tmp_path: Path,
                                                                   lg: Callable[..., Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state_env(monkeypatch, store)
    gate = open_gate(store, run, clock, require_signature=True, allowed_signers=str(keys["allowed_signers"]))
    out = tmp_path / "decision.json"
    result = lg("approve", run.id, gate.gate_id, "--key", keys["bob"], "--sign-only", out)
    assert result.code == 0, result.err
    assert json.loads(out.read_text())["signature"].startswith("-----BEGIN SSH SIGNATURE-----")
    assert GateStore(store).gate(run.id, gate.gate_id).status == "open"  # type: ignore[union-attr]
    result = lg("approve", run.id, "--signed", out, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["status"] == "approved"


# --- who may decide ----------------------------------------------------------------------------------------


def test_n_of_m_from_a_group(store: RunStore, run: RunRecord, clock: Clock) -> None:
    gate = open_gate(store, run, clock, approvers=("group:security",), eligible=("bob", "carol", "dave"), count=2)
    gates = GateStore(store, clock)
    assert decide(gates, run, gate, "approve", None, user="bob").status == "open"
    with pytest.raises(InvalidInput, match="already decided"):
        decide(gates, run, gate, "approve", None, user="bob")
    with pytest.raises(DecisionRefused, match="erin may not decide"):
        decide(gates, run, gate, "approve", None, user="erin")
    settled = decide(gates, run, gate, "approve", None, user="carol")
    assert (settled.status, settled.outcome) == ("approved", "approved by bob, carol")
    with pytest.raises(InvalidInput, match="already approved"):
        decide(gates, run, gate, "approve", None, user="dave")
    assert audit_kinds(store).count("gate.approved") == 1


def test_one_rejection_vetoes(store: RunStore, run: RunRecord, clock: Clock) -> None:
    gate = open_gate(store, run, clock, count=3)
    gates = GateStore(store, clock)
    decide(gates, run, gate, "approve", None, user="bob")
    settled = decide(gates, run, gate, "reject", "touches prod", user="carol")
    assert (settled.status, settled.outcome) == ("rejected", "rejected by carol: touches prod")


def test_self_approval_is_refused_unless_allowed_but_self_rejection_is_fine(store: RunStore, run: RunRecord,
                                                                            clock: Clock) -> None:
    gate = open_gate(store, run, clock)
    gates = GateStore(store, clock)
    with pytest.raises(DecisionRefused, match=r"started run .* may not decide"):
        decide(gates, run, gate, "approve", None, user="alice@example.com")
    assert decide(gates, run, gate, "reject", "changed my mind", user="alice@example.com").status == "rejected"
    allowed = open_gate(store, run, clock, "build", allow_self_approval=True)
    assert decide(gates, run, allowed, "approve", None, user="alice@example.com").status == "approved"


# --- time and change ---------------------------------------------------------------------------------------


def test_an_unanswered_gate_expires_and_is_recorded_as_expired(store: RunStore, run: RunRecord, clock: Clock) -> None:
    gate = open_gate(store, run, clock, timeout=3600.0, on_timeout="reject")
    gates = GateStore(store, clock)
    clock.now += 3599
    assert gates.expire_due() == [] and [g.gate_id for g in gates.open_gates()] == ["ship.effects"]
    clock.now += 2
    assert [g.gate_id for g in gates.expire_due()] == ["ship.effects"]
    expired = gates.gate(run.id, gate.gate_id)
    assert expired is not None and expired.status == "expired" and "on_timeout: reject" in (expired.outcome or "")
    with pytest.raises(InvalidInput, match="already expired"):
        decide(gates, run, gate, "approve", None, user="bob")
    kinds = audit_kinds(store)
    assert "gate.expired" in kinds and "gate.rejected" not in kinds


def test_a_decision_arriving_after_the_deadline_expires_the_gate(store: RunStore, run: RunRecord,
                                                                 clock: Clock) -> None:
    gate = open_gate(store, run, clock, timeout=60.0)
    clock.now += 61  # nobody ran expire_due: the decision itself notices
    with pytest.raises(InvalidInput, match="expired before this decision"):
        decide(GateStore(store, clock), run, gate, "approve", None, user="bob")
    assert GateStore(store, clock).gate(run.id, gate.gate_id).status == "expired"  # type: ignore[union-attr]


def test_a_decision_is_bound_to_the_digest_it_was_made_on(store: RunStore, run: RunRecord, clock: Clock) -> None:
    gate = open_gate(store, run, clock, count=2)
    gates = GateStore(store, clock)
    decide(gates, run, gate, "approve", None, user="bob")
    changed = gates.open(run.id, "ship", "effects", {"run": run.id, "changes": [{"path": "x", "sha256": "ef"}]},
                         {"gate": "ship.effects"}, GateRules(count=2))
    assert changed.digest != gate.digest and gates.decisions(changed) == []  # bob's approval was for the old one
    with pytest.raises(InvalidInput, match="changed since it was shown"):
        decide(gates, run, gate, "approve", None, user="carol")
    with pytest.raises(DecisionRefused, match="what you reviewed is not what would be approved"):
        decide(gates, run, changed, "approve", None, user="carol", expected_digest=gate.digest[:16])


@pytest.mark.parametrize("prefix", ["", "0", "deadbeef"])
def test_decide_itself_refuses_a_digest_prefix_too_short_to_bind(store: RunStore, run: RunRecord, clock: Clock,
                                                                 prefix: str) -> None:
    """Fail closed below the CLI too: an empty expected digest used to match any gate."""
    gate = open_gate(store, run, clock)
    gates = GateStore(store, clock)
    with pytest.raises(DecisionRefused, match="at least the first 16 hex digits"):
        decide(gates, run, gate, "approve", None, user="carol", expected_digest=prefix)
    assert gates.gate(run.id, gate.gate_id).is_open  # type: ignore[union-attr]


def test_a_finished_run_s_gates_cannot_be_decided(store: RunStore, run: RunRecord, clock: Clock) -> None:
    from lg.approvals.decide import resolve_gate

    open_gate(store, run, clock)
    store.start_run(run.id)
    store.finish_run(run.id, RunStatus.FAILED, 1, "step(s) failed: build")
    with pytest.raises(DecisionRefused, match="already finished"):
        resolve_gate(GateStore(store, clock), store.run(run.id), None)


# --- concurrency -------------------------------------------------------------------------------------------


def _concurrently(count: int, action: Callable[[int], None]) -> list[BaseException | None]:
    results: list[BaseException | None] = [None] * count
    barrier = threading.Barrier(count)

    def worker(index: int) -> None:
        barrier.wait()
        try:
            action(index)
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_fifty_concurrent_approvals_make_exactly_one_transition(store: RunStore, run: RunRecord, clock: Clock,
                                                                tmp_path: Path) -> None:
    """50 approvers, each with their own database connection, all at once: on a 50-of-50 gate every decision
    counts and the gate opens exactly once; on a 1-of-50 gate exactly one decision wins."""
    everyone = open_gate(store, run, clock, "build", count=50)
    anyone = open_gate(store, run, clock, "ship", count=1)

    def approve(gate: Gate) -> Callable[[int], None]:
        def action(index: int) -> None:
            own = RunStore(store.state_dir, store.url)  # a connection of its own, as a separate `lg approve` has
            try:
                decide(GateStore(own, clock), own.run(run.id), gate, "approve", None, user=f"approver-{index}")
            finally:
                own.close()
        return action

    assert _concurrently(50, approve(everyone)) == [None] * 50
    outcomes = _concurrently(50, approve(anyone))
    assert sum(1 for outcome in outcomes if outcome is None) == 1
    assert all(isinstance(o, InvalidInput) and "already approved" in str(o) for o in outcomes if o is not None)
    gates = GateStore(store, clock)
    assert len(gates.decisions(everyone)) == 50 and len(gates.decisions(anyone)) == 1
    assert audit_kinds(store).count("gate.approved") == 2
    assert store.audit_log.verify() == []
