#!/usr/bin/env bash
# Fetches one of the world's suites (tests/it/world_suites.rs) into a cache kept between runs,
# and prints where it is. Nothing here is built by us: the sources come from the registries as
# published.
#
#   fetch.sh pypi NAME VERSION [REQUIREMENT...]
#       the sdist of NAME==VERSION from PyPI (pip download), unpacked, and a virtualenv beside
#       it with the package and REQUIREMENT... installed (pytest among them); prints
#       "SOURCE<TAB>VENV"
#   fetch.sh crate NAME VERSION
#       NAME-VERSION.crate from crates.io, unpacked; prints SOURCE
#   fetch.sh go IMPORT_PATH DEBIAN_PACKAGE
#       the sources Debian's golang-*-dev package installs under /usr/share/gocode/src
#       (.ci/install-deps.sh installs the package); prints SOURCE
#
# The cache is ${TESSERA_WORLD_CACHE:-$HOME/.cache/tessera-world}: outside any project tree
# (the project tree is what `tessera run` snapshots) and outside /tmp (every sandboxed action
# gets a private /tmp, and the virtualenvs must be seen by the agents). An entry counts only
# once complete (a stamp written last, or a rename), so an interrupted fetch is done again.
# Exit codes: 0 ready, 3 something needed is missing or could not be downloaded.
set -euo pipefail

cache=${TESSERA_WORLD_CACHE:-$HOME/.cache/tessera-world}
mkdir -p "$cache"
# One fetch at a time: two tests may want the same suite at once.
exec 9>"$cache/.lock"
flock 9

fail() {
  echo "fetch.sh: $*" >&2
  exit 3
}

need() {
  command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed ($2)"
}

kind=${1:-}
case "$kind" in
pypi)
  [ $# -ge 3 ] || fail "usage: fetch.sh pypi NAME VERSION [REQUIREMENT...]"
  name=$2 version=$3
  shift 3
  need python3 "Debian package python3"
  dir="$cache/pypi/$name-$version"
  # The stamp holds the requirements the venv was made with: changing them remakes it.
  stamp="$name==$version $*"
  if [ "$(cat "$dir/.complete" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$dir"
    mkdir -p "$dir/download" "$dir/src"
    python3 -m pip download --quiet --no-deps --no-binary :all: \
      --dest "$dir/download" "$name==$version" >&2 ||
      fail "could not download the sdist of $name==$version from PyPI"
    sdist=$(find "$dir/download" -maxdepth 1 -name '*.tar.gz' | head -n 1)
    [ -n "$sdist" ] || fail "PyPI gave no .tar.gz sdist for $name==$version"
    tar -xzf "$sdist" -C "$dir/src" --strip-components=1
    # The venv is made in its final place: its scripts name their own path.
    python3 -m venv "$dir/venv" >&2 || fail "python3 -m venv failed (Debian: python3-venv)"
    "$dir/venv/bin/python" -m pip install --quiet "$@" "$sdist" >&2 ||
      fail "pip could not install $name==$version with $*"
    echo "$stamp" >"$dir/.complete"
  fi
  printf '%s\t%s\n' "$dir/src" "$dir/venv"
  ;;
crate)
  [ $# -eq 3 ] || fail "usage: fetch.sh crate NAME VERSION"
  name=$2 version=$3
  need curl "Debian package curl"
  dir="$cache/crates/$name-$version"
  if [ ! -d "$dir" ]; then
    work="$dir.partial.$$"
    rm -rf "$work"
    mkdir -p "$work"
    curl --fail --silent --show-error --location --retry 3 \
      "https://static.crates.io/crates/$name/$name-$version.crate" -o "$work.crate" ||
      fail "could not download $name-$version.crate from crates.io"
    tar -xzf "$work.crate" -C "$work" --strip-components=1
    rm -f "$work.crate"
    mv "$work" "$dir"
  fi
  printf '%s\n' "$dir"
  ;;
go)
  [ $# -eq 3 ] || fail "usage: fetch.sh go IMPORT_PATH DEBIAN_PACKAGE"
  import_path=$2 package=$3
  dir="/usr/share/gocode/src/$import_path"
  [ -d "$dir" ] || fail "$dir is missing: install Debian's $package (.ci/install-deps.sh does)"
  printf '%s\n' "$dir"
  ;;
*)
  fail "unknown kind '${kind}': pypi, crate or go"
  ;;
esac
