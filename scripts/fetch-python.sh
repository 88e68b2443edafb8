#!/usr/bin/env bash
# Fetch Debian's python3.11 interpreter and its debug symbols (the -dbg package carries
# the separate debug file of /usr/bin/python3.11), of one version, unpacked into DIR
# (default target/real/python3.11) without installing anything: the real-program tests
# patch this interpreter, built as Debian builds it (-O3, LTO, PGO, .cold splits,
# stripped). Cached: does nothing when DIR is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/real/python3.11}
[ -x "$dir/usr/bin/python3.11" ] && [ -d "$dir/usr/lib/debug/.build-id" ] && exit 0
command -v apt-get >/dev/null || { echo "fetch-python: needs apt-get (Debian)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
# apt's download user must be able to write there.
(cd "$tmp" && apt-get download -q python3.11-minimal python3.11-dbg >/dev/null 2>&1) ||
	{ apt-get update -qq && (cd "$tmp" && apt-get download -q python3.11-minimal python3.11-dbg >/dev/null); }
mkdir -p "$tmp/root"
for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/root"; done
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
mv "$tmp/root" "$dir"
