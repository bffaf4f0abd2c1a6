#!/usr/bin/env bash
# Makes a Debian 12 base image for the agent from Debian packages, for machines where no image
# registry is reachable (the tests here): debootstrap --variant=minbase, then `docker import`.
#
#   deploy/images/debian-base.sh            # prints the image name, e.g. tessera-debian-base:3f2a9c1e04b7
#
# The image carries what the tests' workloads need on an agent: bash and coreutils (minbase),
# cargo + rustc + gcc for a cargo suite, g++, python3 and zip for the Bazel fixture's actions
# (tests/fixtures/bazel: cc_test, test-setup.sh zips undeclared outputs). A real fleet uses its
# own build image instead (agent.Dockerfile takes it as BASE).
#
# The tag is a hash of this script (packages, suite, mirror), so a second run finds the image and
# does nothing: debootstrap takes minutes, it runs once per machine. Needs root and debootstrap.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
packages=bash,coreutils,ca-certificates,gcc,g++,libc6-dev,cargo,rustc,python3,zip,unzip,procps

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tag="$( (cat "$here/debian-base.sh"; echo "$mirror") | sha256sum | cut -c1-12)"
image="tessera-debian-base:$tag"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

root="$(mktemp -d "${TMPDIR:-/tmp}/tessera-debian-base.XXXXXX")"
trap 'rm -rf "$root"' EXIT

echo "debian-base: debootstrap $suite into $root (once per machine)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >&2
# What only the build of the image needed: package lists and downloaded .debs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar -C "$root" --numeric-owner -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$image" >&2
echo "$image"
