#!/usr/bin/env bash
# The test command (README "Testing"): installs what the tests need on a fresh Debian 12
# machine, builds everything, and runs every test. Under CI=true a test that needs a missing
# tool fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps.sh
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast
cargo test --workspace --locked --doc
