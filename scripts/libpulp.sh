#!/usr/bin/env bash
# Build SUSE libpulp (the peer livepatcher of the side-by-side benchmarks) from the
# tarball in /work/shared/peers (see its README.md) with libpulp's own autotools, and
# cache it under target/libpulp: src/ (unpacked tree, built in place), install/ (the
# prefix: bin/ulp, lib/libpulp.so) and stamp (the tarball's sha256). A second run with
# the same tarball does nothing. Installs missing Debian packages with apt-get (as root).
# libpulp's own test suite is not built or run.
# Usage: scripts/libpulp.sh [TARBALL]   (or LIBPULP_TARBALL=...)
# Prints the install prefix on stdout, one line, and nothing else; the rest goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's ../shared/peers, else the machine's /work/shared/peers.
peer=libpulp-91791f5d.tar.gz
default=../shared/peers/$peer
[ -f "$default" ] || default=/work/shared/peers/$peer
tarball=${1:-${LIBPULP_TARBALL:-$default}}
root=$PWD/target/libpulp
prefix=$root/install
stamp=$root/stamp

[ -f "$tarball" ] || { echo "libpulp: no tarball at $tarball" >&2; exit 1; }
sum=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] &&
	[ -x "$prefix/bin/ulp" ] && [ -f "$prefix/lib/libpulp.so" ]; then
	echo "libpulp: already built from $(basename "$tarball") ($sum)" >&2
	echo "$prefix"
	exit 0
fi

# Everything below writes its chatter to stderr; fd 3 is the real stdout.
exec 3>&1 1>&2

# g++: configure insists on a working C++ compiler.
pkgs=(autoconf autoconf-archive automake libtool make gcc g++ python3 python3-psutil
	python3-pexpect libjson-c-dev libelf-dev libseccomp-dev)
need=()
for p in "${pkgs[@]}"; do
	[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] ||
		need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "libpulp: please install: ${need[*]}" >&2
		exit 1
	fi
	echo "libpulp: installing ${need[*]} with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q --no-install-recommends "${need[@]}" ||
		{ apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; }
fi

echo "libpulp: building $(basename "$tarball") into $prefix" >&2
start=$(date +%s)
rm -rf "$root"
mkdir -p "$root/src"
tar -xzf "$tarball" -C "$root/src" --strip-components=1
cd "$root/src"
# bootstrap is libtoolize+aclocal+autoheader+automake+autoconf; autoreconf does the same.
if [ -x ./bootstrap ] || [ -f ./bootstrap ]; then sh ./bootstrap; else autoreconf -fi; fi
# The system python: another python3 on PATH (pyenv, venv) may lack psutil/pexpect,
# which configure requires.
./configure --prefix="$prefix" PYTHON=/usr/bin/python3
make -j2
make install
[ -x "$prefix/bin/ulp" ] && [ -f "$prefix/lib/libpulp.so" ] ||
	{ echo "libpulp: build finished but $prefix/bin/ulp or lib/libpulp.so is missing" >&2; exit 1; }
echo "$sum" >"$stamp"
echo "libpulp: built in $(($(date +%s) - start))s" >&2
echo "$prefix" >&3
