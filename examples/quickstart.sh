#!/bin/sh
# The README quick start: builds Tessera, runs examples/rust-suite across the embedded cluster
# (a coordinator and local agents started inside `tessera run`), then runs it again unchanged to
# show the answers coming from the cache.
#
#   sh examples/quickstart.sh
#
# The suite fails on purpose (a wrong answer, a panic) and has a flaky test that fails once and
# then passes, so the first run shows a retry marked flaky and both runs end with exit code 1.
set -u
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)

cargo build --release -p tessera-cli || exit 2
tessera="$root/target/release/tessera"

# The flaky test remembers its first run here (outside /tmp: agents give each action its own).
state="${XDG_STATE_HOME:-$HOME/.local/state}/tessera/quickstart"
rm -rf "$state" && mkdir -p "$state" || exit 2

cd "$root/examples/rust-suite" || exit 2
for run in first second; do
  echo
  echo "=== $run run: tessera run --retries 1 -- cargo test"
  "$tessera" run --retries 1 --env TESSERA_EXAMPLE_STATE_DIR="$state" -- cargo test
  echo "=== exit code $?"
done
