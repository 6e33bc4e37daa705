#!/usr/bin/env bash
# requirements.lock: every package of `pip install -e ".[test]"`, pinned, for CPython 3.11 on Linux x86_64,
# compiled by pip-tools from pyproject.toml (run it with a Python 3.11 that has pip-tools: `.venv/bin/python`).
#   scripts/lock.sh            add what pyproject.toml gained, keep every other pin
#   scripts/lock.sh --upgrade  re-resolve everything to the newest allowed versions (then run the tests)
#   scripts/lock.sh --check    exit 1 if pyproject.toml and requirements.lock disagree (nothing is written)
#   scripts/lock.sh --shim     rebuild third_party/wheels/sklearn-*.whl from third_party/sklearn_shim
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
case "${1:-}" in
  --shim)
    rm -f third_party/wheels/sklearn-*.whl
    exec "$PY" -m pip wheel --no-deps third_party/sklearn_shim -w third_party/wheels ;;
esac
compile() {  # $1: output file, then extra pip-compile options
  local out=$1; shift
  # PIP_FIND_LINKS replaces any find-links of the machine's pip config, so only this relative one is written
  CUSTOM_COMPILE_COMMAND=scripts/lock.sh PIP_FIND_LINKS=third_party/wheels \
    "$PY" -m piptools compile --quiet --extra test --strip-extras --allow-unsafe --no-emit-index-url \
    --no-emit-trusted-host --constraint scripts/lock-constraints.txt \
    --output-file "$out" "$@" pyproject.toml
}
case "${1:-}" in
  --check)
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    cp requirements.lock "$tmp/requirements.lock"
    compile "$tmp/requirements.lock" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    if ! diff -u <(grep -v '^#' requirements.lock) <(grep -v '^#' "$tmp/requirements.lock"); then
      echo "error: requirements.lock is out of date with pyproject.toml; run scripts/lock.sh" >&2; exit 1
    fi
    echo "requirements.lock agrees with pyproject.toml" ;;
  --upgrade) compile requirements.lock --upgrade ;;
  "") compile requirements.lock ;;
  *) echo "usage: scripts/lock.sh [--upgrade|--check|--shim]" >&2; exit 2 ;;
esac
