#!/usr/bin/env bash
# The demo: build rlivepatch and the counter fixture, start it, patch it while it runs,
# show the output change, take the patch back, show it change back.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building rlivepatch (cargo build --release: a minute or two the first time)"
cargo build --release
echo "== building the counter fixture and its patch"
mkdir -p build
cc -O2 -fomit-frame-pointer -o build/counter fixtures/counter.c
cc -shared -fPIC -O2 -I patches/include -o build/counter-fix.so patches/counter-fix.c
rlp=target/x86_64-unknown-linux-gnu/release/rlivepatch

build/counter 200 > build/counter.out &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT

# Wait until the counter prints a line that satisfies the awk condition (i: index, v: value).
wait_for() {
	for _ in $(seq 100); do
		if tail -n 1 build/counter.out | awk -F'[()= ]+' "NF >= 3 { i = \$2; v = \$3; exit !($1) } { exit 1 }"; then
			tail -n 3 build/counter.out | sed 's/^/    /'
			return 0
		fi
		sleep 0.1
	done
	echo "demo: the counter did not print what was expected ($1)" >&2
	exit 1
}

echo "== the counter fixture runs (pid $pid): compute(i) = i + 1"
wait_for 'v == i + 1'
echo
echo "== rlivepatch info build/counter-fix.so"
$rlp info build/counter-fix.so
echo
echo "== rlivepatch apply $pid build/counter-fix.so"
$rlp apply "$pid" build/counter-fix.so
wait_for 'v == i * 100'
echo
echo "== rlivepatch list $pid"
$rlp list "$pid"
echo
echo "== rlivepatch disable $pid counter-fix"
$rlp disable "$pid" counter-fix
wait_for 'v == i + 1'
echo
echo "demo: the running counter was patched and unpatched without a restart"
