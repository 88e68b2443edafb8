#!/usr/bin/env bash
# Run a command while every CPU is saturated: 4 busy loops per CPU at the same priority
# as the command (not niced), for as long as the command runs and at most
# UNDER_LOAD_MAX seconds (default 3 hours). The loops are this script's children, killed
# by pid when the command ends, however it ends. Exit status: the command's.
#   scripts/under-load.sh cargo test
#   UNDER_LOAD_PER_CPU=2 scripts/under-load.sh cargo test --test busy
set -u
[ $# -gt 0 ] || { echo "usage: under-load.sh CMD [ARGS...]" >&2; exit 2; }
per=${UNDER_LOAD_PER_CPU:-4}
max=${UNDER_LOAD_MAX:-10800}
n=$(( $(nproc) * per ))
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait "${pids[@]}" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
for _ in $(seq "$n"); do
	# A busy loop that ends by itself after $max seconds, should this script be killed
	# with SIGKILL (nothing else can leave one behind).
	timeout "$max" sh -c 'while :; do :; done' &
	pids+=("$!")
done
echo "under-load: $n busy loops on $(nproc) CPUs (load $(cut -d' ' -f1 /proc/loadavg))" >&2
"$@"
status=$?
echo "under-load: the command exited with $status (load $(cut -d' ' -f1 /proc/loadavg))" >&2
exit $status
