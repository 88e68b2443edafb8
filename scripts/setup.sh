#!/usr/bin/env bash
# Install what building and testing rlivepatch needs and a fresh Debian machine may lack:
# a C compiler and binutils (fixtures, patches, the runtime), clang (fixtures built the
# way LLVM builds programs: in-place signature changes), musl (the test that musl
# processes are refused), strace and gdb (tests with another tracer, the gdb benchmark),
# gnuplot (the benchmark plot), make, patch and cmake (`rlivepatch build` runs a
# project's build and applies its diffs; expat builds with cmake), ansible-core (the
# contrib playbook is run against localhost). Idempotent: does nothing when everything is there.
set -euo pipefail
need=()
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v g++ >/dev/null || need+=(g++)
command -v clang >/dev/null || need+=(clang)
command -v objcopy >/dev/null || need+=(binutils)
command -v make >/dev/null || need+=(make)
command -v patch >/dev/null || need+=(patch)
command -v python3 >/dev/null || need+=(python3)
command -v dpkg-buildflags >/dev/null || need+=(dpkg-dev)
command -v cmake >/dev/null || need+=(cmake)
command -v ansible-playbook >/dev/null || need+=(ansible-core)
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v strace >/dev/null || need+=(strace)
command -v gdb >/dev/null || need+=(gdb)
[ "${RLIVEPATCH_SETUP_BENCH:-0}" = 1 ] && { command -v gnuplot >/dev/null || need+=(gnuplot-nox); }
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup: please install: ${need[*]}" >&2
		exit 1
	fi
	echo "setup: installing ${need[*]} with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}"; }
fi
