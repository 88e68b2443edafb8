#!/usr/bin/env bash
# Fetch the Debian source package PKG (bookworm) into DIR (default target/real/PKG): its
# upstream tree unpacked in DIR/orig, its Debian patches in DIR/patches. The tests of
# `rlivepatch build` patch real programs built from these trees with their own build
# systems, from the security fixes Debian ships as patches. Needs only apt-get and the
# Debian mirror (a private sources list; the machine's apt configuration is untouched).
# Cached: does nothing when DIR is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=${1:?usage: fetch-source.sh PKG [DIR]}
dir=${2:-target/real/$pkg}
[ -f "$dir/.complete" ] && exit 0
command -v apt-get >/dev/null || { echo "fetch-source: needs apt-get (Debian)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt's download user must be able to write there.
chmod 755 "$tmp"
mkdir -p "$tmp/lists/partial"
echo "deb-src http://deb.debian.org/debian bookworm main" >"$tmp/sources.list"
apt=(apt-get -qq -o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=-
	-o Dir::State::Lists="$tmp/lists" -o APT::Sandbox::User=root)
"${apt[@]}" update >/dev/null
(cd "$tmp" && "${apt[@]}" source --download-only "$pkg" >/dev/null)
rm -rf "$dir"
mkdir -p "$dir/orig" "$dir/patches"
orig=$(ls "$tmp"/*.orig.tar.* | head -1)
tar -xf "$orig" -C "$dir/orig" --strip-components=1
deb=$(ls "$tmp"/*.debian.tar.* | head -1)
tar -xf "$deb" -C "$tmp"
cp "$tmp"/debian/patches/* "$dir/patches/"
touch "$dir/.complete"
