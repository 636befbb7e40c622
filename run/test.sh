#!/usr/bin/env bash
# The README's test command (and CI's): install what the tests need, then run them.
#   bash run/test.sh                                # the full suite (what CI runs)
#   bash run/test.sh -m "not slow and not mpi"      # the fast lane (a few minutes once Jittor's cache is warm)
#   bash run/test.sh tests/test_convert.py          # one file
# Installs with run/setup.sh plus requirements-dev.txt (torch 2.13 CPU, safetensors, pytest): idempotent,
# a second run changes nothing. Set JHSSL_SKIP_SETUP=1 to only run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${JHSSL_SKIP_SETUP:-0}" != "1" ]; then
  JHSSL_WITH_TORCH=1 PYTHON="$PY" bash run/setup.sh
fi
# Every torch test must run here: a missing torch fails them instead of skipping (tests/_torch.py).
export JHSSL_REQUIRE_TORCH=1
exec "$PY" -m pytest -q "$@"
