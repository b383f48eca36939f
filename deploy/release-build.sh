#!/usr/bin/env bash
# Builds the release binaries the images ship, exactly as CI builds them: the same command
# runs in CI (.ci/run) and in deploy/Dockerfile's build stage.
#   deploy/release-build.sh OUT_DIR   # copies agentplane-control-plane and agentplane-worker there
set -euo pipefail
out=${1:?usage: deploy/release-build.sh OUT_DIR}
cd "$(dirname "$0")/.."
cargo build --release --locked -p agentplane-control-plane -p agentplane-worker
mkdir -p "$out"
cp target/release/agentplane-control-plane target/release/agentplane-worker "$out/"
