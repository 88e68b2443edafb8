#!/usr/bin/env bash
# Stress: OPS (default 1000) random apply / disable / atomic-replace operations on a
# 64-thread busy target. Prints the seed (STRESS_SEED=... replays a run), operations per
# second, and fails if the target crashed, returned an invalid result, or did not get
# its maps and fds back.
set -euo pipefail
cd "$(dirname "$0")/.."
STRESS_OPS=${1:-${STRESS_OPS:-1000}} cargo test --release --test stress -- --nocapture
