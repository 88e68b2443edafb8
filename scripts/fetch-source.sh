#!/usr/bin/env bash
# Fetch the Debian source package PKG (bookworm) into DIR (default target/real/PKG): its
# upstream tree unpacked in DIR/orig, its Debian patches in DIR/patches. PKG=VERSION
# fetches that version. The tests of `rlivepatch build` and the corpus patch real programs
# built from these trees with their own build systems, from the fixes Debian ships as
# patches. Needs only apt-get and the Debian mirror (a private sources list; the
# machine's apt configuration is untouched). Cached: does nothing when DIR is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:?usage: fetch-source.sh PKG[=VERSION] [DIR]}
pkg=${spec%%=*}
dir=${2:-target/real/$pkg}
[ -f "$dir/.complete" ] && exit 0
command -v apt-get >/dev/null || { echo "fetch-source: needs apt-get (Debian)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt's download user must be able to write there.
chmod 755 "$tmp"
mkdir -p "$tmp/lists/partial"
# Point releases carry the security fixes into bookworm itself; the security suite's own
# pool is not always reachable from here.
printf '%s\n' "deb-src http://deb.debian.org/debian bookworm main" \
	"deb-src http://deb.debian.org/debian bookworm-updates main" >"$tmp/sources.list"
apt=(apt-get -qq -o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=-
	-o Dir::State::Lists="$tmp/lists" -o APT::Sandbox::User=root)
"${apt[@]}" update >/dev/null
if ! (cd "$tmp" && "${apt[@]}" source --download-only "$spec" >"$tmp/apt.log" 2>&1); then
	echo "fetch-source: apt-get source $spec failed: $(tail -1 "$tmp/apt.log")" >&2
	exit 1
fi
rm -rf "$dir"
mkdir -p "$dir/orig" "$dir/patches"
# The main upstream tarball (not a component one, orig-NAME.tar.*, nor a signature).
orig=$(ls "$tmp"/*.orig.tar.* | grep -v -e '\.orig-' -e '\.asc$' | head -1)
tar -xf "$orig" -C "$dir/orig" --strip-components=1
deb=$(ls "$tmp"/*.debian.tar.* | head -1)
tar -xf "$deb" -C "$tmp"
if [ -d "$tmp/debian/patches" ]; then
	cp -r "$tmp"/debian/patches/. "$dir/patches/"
fi
ls "$tmp"/*.dsc | sed 's/.*_//; s/\.dsc$//' >"$dir/version"
touch "$dir/.complete"
