"""What the server answers when a request cannot be served: a 4xx (or 5xx) JSON error naming the problem.

Every refusal is raised as ApiError before anything is written, so a refused request leaves the state and the
audit log as they were.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An HTTP error with a stable machine-readable code and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def forbidden(code: str, message: str) -> ApiError:
    return ApiError(403, code, message)
