"""A published API's contract as lg's tests wrote it down (tests/vm/contracts/*.json), and the checks of a
request against it: the operation exists, its body has the required fields, no field the document does not
list, each of the type, enum and range the document gives. Also the journal a fake VMM keeps of what it was
sent, which the tests read to fail on any violation."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
JOURNAL_ENV = "LG_FAKE_VMM_JOURNAL"
TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "boolean": (bool,), "object": (dict,),
                                      "array": (list,), "number": (int, float)}


def load_contract(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONTRACTS / name).read_text())
    return data


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # a template: /drives/{drive_id}
    body: str | None  # the definition (schema) of its body
    body_required: bool
    phase: str

    def matches(self, method: str, path: str) -> bool:
        mine, theirs = self.path.split("/"), path.split("?", maxsplit=1)[0].split("/")
        return method == self.method and len(mine) == len(theirs) and all(
            a == b or (a.startswith("{") and a.endswith("}") and b) for a, b in zip(mine, theirs, strict=True))

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"


class Contract:
    def __init__(self, data: dict[str, Any], schemas_key: str = "definitions") -> None:
        self.data = data
        self.schemas: dict[str, Any] = data[schemas_key]
        self.operations = [Operation(o["method"], o["path"], o.get("body"), o.get("body_required", False),
                                     o.get("phase", "any")) for o in data["operations"]]

    def operation(self, method: str, path: str) -> Operation | None:
        return next((op for op in self.operations if op.matches(method, path)), None)

    def check_body(self, operation: Operation, body: Any, present: bool) -> list[str]:
        if not present:
            return [f"{operation.key}: the body is required"] if operation.body_required else []
        if operation.body is None:
            return [f"{operation.key}: takes no body"]
        return self.check(body, {"ref": operation.body}, operation.body)

    def check(self, value: Any, schema: dict[str, Any], where: str) -> list[str]:
        if "ref" in schema:
            return self._check_definition(value, schema["ref"], where)
        problems: list[str] = []
        kind = schema.get("type")
        if kind is not None:
            allowed = TYPES[kind]
            if not isinstance(value, allowed) or (kind in ("integer", "number") and isinstance(value, bool)):
                return [f"{where}: {value!r} is not of type {kind}"]
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
        if "minimum" in schema and isinstance(value, int) and value < schema["minimum"]:
            problems.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and isinstance(value, int) and value > schema["maximum"]:
            problems.append(f"{where}: {value} is above the maximum {schema['maximum']}")
        if kind == "array" and "items" in schema:
            for index, item in enumerate(value):
                problems += self.check(item, schema["items"], f"{where}[{index}]")
        return problems

    def _check_definition(self, value: Any, name: str, where: str) -> list[str]:
        definition = self.schemas[name]
        if "properties" not in definition:
            return self.check(value, {k: v for k, v in definition.items() if k != "required"}, where)
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object ({name})"]
        problems = [f"{where}: required field {field!r} missing" for field in definition.get("required", ())
                    if field not in value]
        for field, item in value.items():
            spec = definition["properties"].get(field)
            if spec is None:
                problems.append(f"{where}: field {field!r} is not in the document's {name}")
            elif spec.get("readOnly"):
                problems.append(f"{where}: field {field!r} is read-only")
            else:
                problems += self.check(item, spec, f"{where}.{field}")
        return problems


class Journal:
    """What a fake VMM was sent and what it answered, one JSON line each, in the file the test names."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else os.environ.get(JOURNAL_ENV)
        self.lock = threading.Lock()

    def record(self, **entry: Any) -> None:
        if not self.path:
            return
        with self.lock, Path(self.path).open("a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), **entry}) + "\n")


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def violations(path: Path) -> list[str]:
    return [f"{entry.get('request', entry.get('argv'))}: {problem}" for entry in read_journal(path)
            for problem in entry.get("violations", ())]
