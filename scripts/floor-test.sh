#!/usr/bin/env bash
# floor-test.sh -- build scripts/floor.c and check it against live targets.
#
# Builds target/floor/floor, a tiny test library and a test target (N idle
# threads in pthread_cond_wait, the main thread among them, plus one busy thread
# printing a counter every 100 ms), then runs `floor PID LIB` RUNS times against
# a 2-thread and a 1001-thread target.  After each run: the target is alive and
# still printing, and the library is no longer mapped (dlclose unmapped it).
# Prints the median microseconds for each size.  All outputs go to target/floor/.
#
#   usage: scripts/floor-test.sh [RUNS]        (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
OUT=$PWD/target/floor
mkdir -p "$OUT"

gcc -O2 -o "$OUT/floor" scripts/floor.c

cat > "$OUT/floor_test_lib.c" <<'EOF'
int floor_test_lib_marker = 42;
__attribute__((constructor)) static void floor_test_lib_init(void) {}
EOF
gcc -O2 -shared -fPIC -o "$OUT/libfloortest.so" "$OUT/floor_test_lib.c"

cat > "$OUT/floor_target.c" <<'EOF'
/* floor_target N: N idle threads (main included) + 1 busy thread printing */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static void idle(void) {
	pthread_mutex_lock(&mu);
	for (;;) pthread_cond_wait(&cv, &mu);
}
static void *idle_thread(void *a) { (void)a; idle(); return NULL; }
static void *busy_thread(void *a) {
	(void)a;
	struct timespec ts = { 0, 100 * 1000 * 1000 };
	for (unsigned long n = 0;; n++) {
		printf("counter %lu\n", n);
		nanosleep(&ts, NULL);
	}
	return NULL;
}
int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 256 * 1024);
	pthread_t t;
	for (int i = 1; i < n; i++)
		if (pthread_create(&t, &at, idle_thread, NULL)) { perror("pthread_create"); return 1; }
	if (pthread_create(&t, &at, busy_thread, NULL)) { perror("pthread_create"); return 1; }
	idle();
}
EOF
gcc -O2 -pthread -o "$OUT/floor_target" "$OUT/floor_target.c"

LIB=$OUT/libfloortest.so
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

fail() { echo "floor-test: FAIL: $*" >&2; exit 1; }
size() { stat -c %s "$1"; }

# wait (up to 5 s) until `file` grows beyond `from` bytes
grows() {
	local file=$1 from=$2 i
	for i in $(seq 50); do
		(( $(size "$file") > from )) && return 0
		sleep 0.1
	done
	return 1
}

run_case() {
	local threads=$1 idle=$(( $1 - 1 ))
	local log=$OUT/target-$threads.out
	"$OUT/floor_target" "$idle" > "$log" 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	local i
	for i in $(seq 100); do
		[[ $(ls /proc/$pid/task | wc -l) -eq $threads && -s $log ]] && break
		sleep 0.1
	done
	[[ $(ls /proc/$pid/task | wc -l) -eq $threads ]] || fail "target $pid did not reach $threads threads"

	local times=() line us n
	for i in $(seq "$RUNS"); do
		line=$("$OUT/floor" "$pid" "$LIB") || fail "floor run $i against $threads threads failed"
		[[ $line =~ ^floor:\ ([0-9]+)\ us,\ ([0-9]+)\ threads$ ]] || fail "bad output: $line"
		us=${BASH_REMATCH[1]} n=${BASH_REMATCH[2]}
		[[ $n -eq $threads ]] || fail "floor saw $n threads, expected $threads"
		kill -0 "$pid" 2>/dev/null || fail "target $pid died after run $i"
		local before
		before=$(size "$log")
		grows "$log" "$before" || fail "target $pid stopped printing after run $i"
		! grep -qF "$LIB" /proc/$pid/maps || fail "$LIB still mapped in $pid after run $i"
		times+=("$us")
	done
	kill -0 "$pid" 2>/dev/null || fail "target $pid died"
	grep -qv '^counter [0-9]*$' "$log" && fail "target $pid printed something unexpected: $(grep -v '^counter' "$log" | head -1)"
	local med
	med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}')
	echo "floor: $threads threads: median $med us over $RUNS runs (min $(printf '%s\n' "${times[@]}" | sort -n | head -1), max $(printf '%s\n' "${times[@]}" | sort -n | tail -1))"
	kill "$pid"; PIDS=()
	wait "$pid" 2>/dev/null || true
}

run_case 2
run_case 1001
