#!/usr/bin/env bash
# Benchmarks: writes BENCHMARKS.md and BENCHMARKS-pause.png (see examples/bench/ for
# what is measured and how). Arguments go to the benchmark: --runs N, --gdb-runs N,
# --server-secs N, --quick (a short run that skips the largest cases).
# Installs what it needs (gdb, gnuplot) on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RLIVEPATCH_SETUP_BENCH=1 scripts/setup.sh
cargo build --release --quiet
cargo run --release --quiet --example bench -- "$@"
