#!/usr/bin/env bash
# Runs every test: unit and property tests, and the integration tests (one binary per crate,
# control-plane/tests/it and worker/tests/it), each of which starts its own private PostgreSQL
# cluster from the installed binaries (installed here first if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bash deploy/local/deps.sh
# grpcurl, when installed (deps.sh --tools), is exercised by the reflection tests.
[ -d .state/tools/bin ] && export PATH="$root/.state/tools/bin:$PATH"
exec cargo test --workspace --locked "$@"
