#!/bin/sh
# The tox environments of the translated workflow, with Python's standard library only (the guest is offline).
set -eu
case "$1" in
  py*) PYTHONPATH=src python3 -m unittest discover -s tests -p 'check_*.py' -v ;;
  typing)
    # Stands for mypy: byte-compile everything, and keep a stamp in the cached directory.
    if [ -f .mypy_cache/stamp ]; then echo "typing: cache restored from $(cat .mypy_cache/stamp)"; fi
    PYTHONPYCACHEPREFIX=.mypy_cache/pycache python3 -m compileall -q src tests
    mkdir -p .mypy_cache && date -u +%s > .mypy_cache/stamp ;;
  *) echo "unknown tox environment $1" >&2; exit 2 ;;
esac
