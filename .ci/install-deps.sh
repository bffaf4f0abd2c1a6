#!/usr/bin/env bash
# Installs the system packages Tessera's tests need on a fresh Debian 12 machine.
# Idempotent and quick when everything is already present (no apt-get at all then).
#   - bazel-bootstrap: Debian's Bazel 4.2.3 (/usr/bin/bazel), for the real-client tests
#     under tests/fixtures/bazel (it pulls in a JDK; the build needs gcc/g++ too)
#   - iproute2 (ip), python3, gcc/g++ (cc_test in the Bazel fixture), zip/unzip (test outputs.zip)
#   - golang-go (go test) and pytest >= 8.2 from PyPI (@file node ids): the runner adapters'
#     tests in runners/tests drive the real tools on the projects under examples/
#   - debootstrap (the Debian base image of the agent container in the Compose tests: no image
#     registry is reachable) and systemd (systemd-analyze verify on deploy/systemd/*.service);
#     Docker Engine and docker-compose v1 come with the machine
#   - kubernetes-validate from PyPI (deploy/kubernetes/ manifests, --strict)
#   - chromium (Debian's), playwright and axe-playwright-python from PyPI: the dashboard's
#     browser test (tests/it/dashboard.rs drives tests/fixtures/dashboard_browser.py). Playwright's
#     own browser download is not reachable here, so the script launches /usr/bin/chromium; the
#     axe package bundles axe.min.js, so the accessibility check needs no network either
#   - golang-github-google-go-cmp-dev, golang-github-pkg-errors-dev (Go sources under
#     /usr/share/gocode/src) and curl (crates.io downloads): the world's suites that
#     tests/it/world_suites.rs runs directly and through `tessera run` (tests/world/fetch.sh)
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
need openssl openssl  # security tests: test CA and certificates
need promtool prometheus  # metrics tests: promtool check metrics
need python3 python3
need gcc gcc
need g++ g++
need unzip unzip
need zip zip          # test-setup.sh zips TEST_UNDECLARED_OUTPUTS_DIR
need go golang-go     # runners: go test adapter
need curl curl        # tests/world/fetch.sh: .crate files from crates.io
need debootstrap debootstrap            # deploy tests: the agent's Debian base image, built locally
need systemd-analyze systemd            # deploy tests: systemd-analyze verify on the units
need chromium chromium                  # dashboard tests: the browser Playwright drives
for deb in golang-github-google-go-cmp-dev golang-github-pkg-errors-dev; do
  dpkg -s "$deb" >/dev/null 2>&1 || pkgs+=("$deb") # tests/world/fetch.sh: Go sources
done

if [ "${#pkgs[@]}" -eq 0 ]; then
  echo "install-deps: system packages all present"
else
  echo "install-deps: installing ${pkgs[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
  if [ "${TESSERA_SKIP_BAZEL:-0}" != 1 ]; then
    bazel --version
  fi
fi

# runners: pytest adapter passes node ids through an @file, which needs pytest 8.2 or later.
pytest_ok() {
  python3 - <<'PY' 2>/dev/null
import sys
import pytest
major, minor = (int(x) for x in pytest.__version__.split(".")[:2])
sys.exit(0 if (major, minor) >= (8, 2) else 1)
PY
}
if pytest_ok; then
  echo "install-deps: pytest present"
else
  echo "install-deps: installing pytest>=8.2"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3-pip
  fi
  pip_install() { python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }
  # Debian's own python3 is "externally managed" (PEP 668); Debian 12 packages only pytest 7.
  pip_install 'pytest>=8.2' || pip_install --break-system-packages 'pytest>=8.2'
  python3 -m pytest --version
fi

# deploy tests: every manifest under deploy/kubernetes is checked with kubernetes-validate --strict.
if command -v kubernetes-validate >/dev/null 2>&1; then
  echo "install-deps: kubernetes-validate present"
else
  echo "install-deps: installing kubernetes-validate"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3-pip
  fi
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    kubernetes-validate ||
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --break-system-packages kubernetes-validate
  kubernetes-validate --version
fi

# dashboard tests: Playwright (the Python package only; it drives Debian's chromium) and axe-core.
if python3 -c 'import playwright.sync_api, axe_playwright_python.sync_playwright' >/dev/null 2>&1; then
  echo "install-deps: playwright and axe-playwright-python present"
else
  echo "install-deps: installing playwright and axe-playwright-python"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3-pip
  fi
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    playwright axe-playwright-python ||
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --break-system-packages playwright axe-playwright-python
  python3 -c 'import playwright.sync_api, axe_playwright_python.sync_playwright'
fi
