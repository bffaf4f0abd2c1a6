#!/usr/bin/env bash
# Builds Tessera's container images from this checkout, with no registry needed:
#
#   deploy/images/build.sh [--release] [--base IMAGE] [--tag TAG] [--prometheus]
#
#   tessera-coordinator:TAG   FROM scratch + a static `tessera` (coordinator.Dockerfile)
#   tessera-agent:TAG         IMAGE + the same binary (agent.Dockerfile, ARG BASE)
#
# --release   optimized build (what you deploy); without it the debug profile, quicker to build
#             (the tests use it)
# --base      the agent's base image: your build image with the tools your suites need
#             [default: the Debian 12 image that deploy/images/debian-base.sh makes]
# --tag       also tag both images TAG (e.g. a version) besides their content tag
# --prometheus  also tessera-prometheus:TAG, this host's `prometheus` binary on the agent's base
#             (prometheus.Dockerfile), for hosts that cannot pull prom/prometheus
#
# ONE static binary serves both images: glibc linked in with `-C target-feature=+crt-static`
# for the x86_64-unknown-linux-gnu target (checked with `file` and `ldd` below). Each image's
# content tag is a hash of its inputs (binary, Dockerfile, base image id), so an unchanged
# checkout builds nothing new. The last lines printed are `coordinator=IMAGE`, `agent=IMAGE`
# and with --prometheus `prometheus=IMAGE` (scripts read them).
set -euo pipefail

profile=dev
base=
extra_tag=
prometheus=
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release ;;
    --base) base="$2"; shift ;;
    --tag) extra_tag="$2"; shift ;;
    --prometheus) prometheus="$(command -v prometheus)" || {
      echo "build.sh: --prometheus needs a prometheus binary on PATH (Debian: prometheus)" >&2
      exit 1
    } ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target=x86_64-unknown-linux-gnu

# 1. The static binary (its own target dir under target/x86_64-unknown-linux-gnu, so the host
#    build in target/debug is untouched). The variable, not RUSTFLAGS, so build scripts and
#    proc macros stay dynamic and only the target binary is static.
echo "build.sh: static tessera ($profile)" >&2
(cd "$repo" && CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --profile "$profile" --target "$target" --bin tessera >&2)
dir="$([ "$profile" = dev ] && echo debug || echo release)"
bin="$repo/target/$target/$dir/tessera"
if ! file "$bin" | grep -Eq 'statically linked|static-pie linked' ||
  ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "build.sh: $bin is not static:" >&2
  file "$bin" >&2
  ldd "$bin" >&2 || true
  exit 1
fi

if [ -z "$base" ]; then
  base="$("$here/debian-base.sh")"
fi
base_id="$(docker image inspect --format '{{.Id}}' "$base")"

# 2. The build contexts: the binary and an empty directory (the coordinator's data dir and
#    /tmp); Prometheus gets its own.
context="$(mktemp -d "${TMPDIR:-/tmp}/tessera-images.XXXXXX")"
trap 'rm -rf "$context"' EXIT
mkdir "$context/tessera" "$context/tessera/data" "$context/prometheus"
cp "$bin" "$context/tessera/tessera"
tessera_hash="$(sha256sum "$bin" | cut -c1-64)"

# build NAME DOCKERFILE CONTEXT INPUTS [docker build args...]: tags NAME:HASH (a hash of the
# Dockerfile and INPUTS, which name everything else the image is made of) and prints it.
build() {
  local name="$1" dockerfile="$2" dir="$3" inputs="$4"
  shift 4
  local tag
  tag="$( (cat "$here/$dockerfile"; echo "$inputs") | sha256sum | cut -c1-12)"
  local image="$name:$tag"
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "build.sh: docker build $image" >&2
    docker build --quiet -f "$here/$dockerfile" -t "$image" "$@" "$dir" >&2
  fi
  if [ -n "$extra_tag" ]; then
    docker tag "$image" "$name:$extra_tag"
  fi
  echo "$image"
}

coordinator="$(build tessera-coordinator coordinator.Dockerfile "$context/tessera" "$tessera_hash")"
agent="$(build tessera-agent agent.Dockerfile "$context/tessera" "$tessera_hash $base_id" \
  --build-arg "BASE=$base")"
echo "coordinator=$coordinator"
echo "agent=$agent"
if [ -n "$prometheus" ]; then
  cp "$prometheus" "$context/prometheus/prometheus"
  prometheus_hash="$(sha256sum "$prometheus" | cut -c1-64)"
  echo "prometheus=$(build tessera-prometheus prometheus.Dockerfile "$context/prometheus" \
    "$prometheus_hash $base_id" --build-arg "BASE=$base")"
fi
