#!/usr/bin/env bash
# Benchmarks: writes BENCHMARKS.md and BENCHMARKS-pause.png (see examples/bench/ for
# what is measured and how). Arguments go to the benchmark: --runs N, --gdb-runs N,
# --server-secs N, --quick (a short run that skips the largest cases, written to
# target/bench/BENCHMARKS-quick.md: the committed BENCHMARKS.md stays as measured),
# --only-build and --only-exec (print one section: `rlivepatch build`, or programs started
# under `rlivepatch watch`), --only-single and --only-fleet (one process, and fleets, side
# by side with SUSE libpulp, which scripts/libpulp.sh builds from ../shared/peers and
# caches under target/libpulp), --fleet-sizes 10,100,... and --fleet-runs N (before
# --only-fleet).
# Installs what it needs (gdb, gnuplot) on a fresh Debian machine, and says so first.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "bench: checking for the tools it needs (scripts/setup.sh; installs with apt-get what is missing: gdb, gnuplot, clang...)" >&2
RLIVEPATCH_SETUP_BENCH=1 scripts/setup.sh
echo "bench: building rlivepatch (release)" >&2
cargo build --release --quiet
cargo run --release --quiet --example bench -- "$@"
