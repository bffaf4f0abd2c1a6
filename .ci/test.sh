#!/usr/bin/env bash
# The test command (README "Testing"): installs what the tests need on a fresh Debian 12
# machine, builds, and runs every test. Under CI=true a test that needs a missing tool fails
# instead of skipping.
#
# TESSERA_CI_RUNNER chooses how the tests run (README "Our own suite through `tessera run`"):
#   nextest  `cargo nextest run` then `cargo test --doc`, on this machine directly.
#   tessera  `tessera run -- cargo test` on the embedded cluster, with `tessera` built from this
#            commit; then `tessera-bench crosscheck` holds the tests it ran against `cargo
#            nextest list` and `cargo test --doc -- --list` (any test missing, extra or not
#            passed fails CI, named). The listing needs the test binaries built here too.
# The default is the faster cold (CI starts from a fresh clone), measured on this project's
# 2-core machine, nextest against `tessera run -- cargo test`, each with its build, in one run
# (README "Our own suite through `tessera run`" and Benchmarks `self` have the tables):
#   whole workspace, before `tessera-bench self` (other builds running): nextest 440 s,
#   tessera 495 s (the full `self` run could not finish on the shared machine);
#   tessera-cas + tessera-agent (`self -p ...`, idle, 254 tests): nextest 275.8 s, tessera
#   266.2 s (0.97x); warm: nextest 66.3 s, tessera 0.24 s;
# and mode tessera pays a second build on top (the test binaries here, for the cross-check's
# `cargo nextest list`): about as long as nextest's own build. So: nextest.
# Only one mode runs: CI's time limit is shared by everything.
#
# TESSERA_CI_PACKAGES="a b" restricts the tests to those packages (for trying a mode out; CI
# leaves it empty: the whole workspace).
set -euo pipefail
cd "$(dirname "$0")/.."

runner=${TESSERA_CI_RUNNER:-nextest}
if [ -n "${TESSERA_CI_PACKAGES:-}" ]; then
  read -r -a names <<<"$TESSERA_CI_PACKAGES"
  selection=()
  for name in "${names[@]}"; do selection+=(-p "$name"); done
else
  selection=(--workspace)
fi

bash .ci/install-deps.sh

case "$runner" in
nextest)
  cargo build --workspace --all-targets --locked
  cargo nextest run "${selection[@]}" --locked --no-fail-fast
  cargo test "${selection[@]}" --locked --doc
  ;;
tessera)
  # tessera and the cross-check from this commit; the tests are built on the cluster's agent.
  cargo build --locked -p tessera-cli -p tessera-bench
  out=target/ci
  mkdir -p "$out"
  # Variables the tests read that `tessera run` does not pass on its own (it passes PATH, HOME,
  # USER, CI and the tools' variables: README "Running test suites", Environment).
  pass=()
  for name in TESSERA_WORLD_CACHE TESSERA_SKIP_BAZEL DOCKER_HOST; do
    if [ -n "${!name+set}" ]; then pass+=(--env "$name"); fi
  done
  # --network: our tests reach services they start (Docker containers' published ports, the
  # Compose fleet) and the world suites' downloads; nextest runs them with the host's network.
  # --timeout: nextest's longest (the Compose story, .config/nextest.toml).
  # The embedded cluster of this build, with its state beside the outputs: never a `tessera
  # up` or a coordinator configured on the machine (their build may differ from this commit).
  status=0
  env -u TESSERA_COORDINATOR -u TESSERA_CLIENT_CONFIG \
    XDG_CACHE_HOME="$PWD/$out/cache" XDG_CONFIG_HOME="$PWD/$out/config" \
    ./target/debug/tessera run --json --junit "$out/tessera.xml" --network --timeout 20m \
    "${pass[@]}" -- cargo test "${selection[@]}" --locked >"$out/tessera.jsonl" || status=$?
  # The human summary, from the JSON (--json prints nothing else on stdout).
  python3 - "$out/tessera.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == "test" and e["final"] and e["outcome"] not in ("passed", "skipped"):
        print(f"--- {e['test']}: {e['outcome']}\n{e['output'][-4000:]}")
    elif e["event"] == "finished":
        print(f"tessera run: {e['result']} {e['message']}: {e['passed']} passed, {e['failed']} "
              f"failed, {e['errors']} errors, {e['skipped']} skipped, {e['flaky']} flaky, "
              f"{e['not_run']} not run in {e['wall_ms'] / 1000:.1f} s")
PY
  cargo nextest list "${selection[@]}" --locked --message-format json >"$out/nextest-list.json"
  cargo test "${selection[@]}" --locked --doc -- --list >"$out/doc-list.txt" 2>&1
  ./target/debug/tessera-bench crosscheck --events "$out/tessera.jsonl" \
    --junit "$out/tessera.xml" --nextest-list "$out/nextest-list.json" \
    --doc-list "$out/doc-list.txt"
  if [ "$status" -ne 0 ]; then
    echo "test.sh: tessera run exited with $status" >&2
    exit "$status"
  fi
  ;;
*)
  echo "test.sh: TESSERA_CI_RUNNER must be nextest or tessera, not '$runner'" >&2
  exit 2
  ;;
esac
