#!/usr/bin/env bash
# Installs the system packages Tessera's tests need on a fresh Debian 12 machine.
# Idempotent and quick when everything is already present (no apt-get at all then).
#   - bazel-bootstrap: Debian's Bazel 4.2.3 (/usr/bin/bazel), for the real-client tests
#     under tests/fixtures/bazel (it pulls in a JDK; the build needs gcc/g++ too)
#   - iproute2 (ip), python3, gcc/g++ (cc_test in the Bazel fixture), zip/unzip (test outputs.zip)
# Set TESSERA_SKIP_BAZEL=1 to skip Bazel (e.g. on machines that only run unit tests).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive

pkgs=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || pkgs+=("$2")
}

if [ "${TESSERA_SKIP_BAZEL:-0}" != 1 ]; then
  need bazel bazel-bootstrap
fi
need ip iproute2
need python3 python3
need gcc gcc
need g++ g++
need unzip unzip
need zip zip          # test-setup.sh zips TEST_UNDECLARED_OUTPUTS_DIR

if [ "${#pkgs[@]}" -eq 0 ]; then
  echo "install-deps: all present"
  exit 0
fi

echo "install-deps: installing ${pkgs[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
if [ "${TESSERA_SKIP_BAZEL:-0}" != 1 ]; then
  bazel --version
fi
