#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests, which start their own private
# PostgreSQL cluster from the installed binaries (installed here first if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bash deploy/local/deps.sh
# grpcurl, when installed (deps.sh --tools), is exercised by the reflection tests.
[ -d .state/tools/bin ] && export PATH="$root/.state/tools/bin:$PATH"
exec cargo test --workspace --locked "$@"
