#!/usr/bin/env bash
# The whole test suite: unit and integration tests of every crate (SQLite
# always; PostgreSQL when CULVERT_TEST_POSTGRES_URL is set) and the official
# Python SDK driven against a real `culvert server`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${CULVERT_SDK_PYTHON:-}" ]; then
    CULVERT_SDK_PYTHON="$(bash scripts/setup-python-sdk.sh | tail -n 1)"
    export CULVERT_SDK_PYTHON
fi
if [ -z "${CULVERT_TEST_POSTGRES_URL:-}" ]; then
    echo "note: CULVERT_TEST_POSTGRES_URL is not set; the PostgreSQL variants will report themselves skipped" >&2
fi
cargo test --workspace --locked "$@"
