"""The fixtures of tests/server (a real `lg serve` over a project with a paused run), shared by importing them:
a `pytest_plugins` line would register tests/server/conftest.py a second time when both directories are
collected in one session, which pytest refuses."""

from tests.server.conftest import keys, project, serve, server_backend  # fixtures, found by name

__all__ = ["keys", "project", "serve", "server_backend"]
