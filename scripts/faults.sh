#!/usr/bin/env bash
# Fault injection: FAULT_RUNS (or the first argument; default 300) applies and disables
# killed with SIGKILL at random moments, in a test build (the fault switches exist only
# there: a release build ignores them). Prints the seed (FAULT_SEED=... replays a run),
# the number of runs and of failures (expected 0).
set -euo pipefail
cd "$(dirname "$0")/.."
FAULT_RUNS=${1:-${FAULT_RUNS:-300}} cargo test --test faults -- --nocapture
