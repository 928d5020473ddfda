#!/usr/bin/env bash
# Creates (idempotently) the Python virtualenv used by the SDK compatibility
# test (tests/sdk/python, run by crates/culvert/tests/sdk_python.rs) and prints
# the path of its python.
#
#   scripts/setup-python-sdk.sh [VENV_DIR]      (default: target/sdk-venv)
#   export CULVERT_SDK_PYTHON="$(scripts/setup-python-sdk.sh | tail -n1)"
#
# Needs only python3 (with the venv module) and PyPI. A venv that already has
# the pinned versions is left alone, so a second run takes well under a second.
set -euo pipefail

# The official Cloudflare Python SDK (Stainless-generated). 5.9.0 is the
# version shared/spec/sdk-clients.md was recorded against.
CLOUDFLARE_VERSION="5.9.0"
PYTEST_VERSION="9.2.0"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/target/sdk-venv}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
py="$venv/bin/python"

installed() {
    # Exit 0 when the venv's python imports both pinned packages at their versions.
    "$py" - "$CLOUDFLARE_VERSION" "$PYTEST_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
assert version("cloudflare") == sys.argv[1], version("cloudflare")
assert version("pytest") == sys.argv[2], version("pytest")
import cloudflare, pytest  # noqa: F401  (the packages must import, not just be recorded)
PY
}

if [ -x "$py" ] && installed; then
    echo "$py"
    exit 0
fi

if [ ! -x "$py" ]; then
    echo "creating virtualenv $venv" >&2
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
fi
echo "installing cloudflare==$CLOUDFLARE_VERSION pytest==$PYTEST_VERSION into $venv" >&2
"$py" -m pip install --quiet --disable-pip-version-check \
    "cloudflare==$CLOUDFLARE_VERSION" "pytest==$PYTEST_VERSION" >&2
installed || { echo "error: the packages did not install correctly into $venv" >&2; exit 1; }
echo "$py"
