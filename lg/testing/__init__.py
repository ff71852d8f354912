"""Test helpers shipped with lg, importable by any backend's or project's tests (as tox ships tox/pytest.py).

lg.testing.fake: FakeHypervisor, a backend with no VM (commands run on the host; no isolation, tests only).
lg.testing.conformance: the checks every backend must pass, with a way to run them all from pytest.

lg's runtime code never imports this package (a test keeps it so).
"""
