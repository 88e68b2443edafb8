#!/usr/bin/env bash
# Fuzz the patch metadata parser with cargo-fuzz (libFuzzer), seeded with the sample
# patches. Usage: scripts/fuzz.sh [SECONDS] (default 600). cargo-fuzz needs nightly
# features; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
corpus=fuzz/corpus/patch_metadata
mkdir -p "$corpus"
for src in patches/*.c; do
	cc -shared -fPIC -O2 -I patches/include -o "$corpus/$(basename "$src" .c).so" "$src"
done
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz run patch_metadata -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536
