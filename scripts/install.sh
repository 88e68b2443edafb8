#!/usr/bin/env bash
# Install rlivepatch under PREFIX (default /usr/local): the binary in PREFIX/bin, the SDK
# header in PREFIX/include, the man pages (rlivepatch.1 and one per command) in
# PREFIX/share/man/man1, shell completions for
# bash, zsh and fish in their usual places. DESTDIR is honoured (packaging). Builds in
# release mode first, unless RLIVEPATCH_BIN names a binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-${PREFIX:-/usr/local}}
root=${DESTDIR:-}
bin=${RLIVEPATCH_BIN:-}
if [ -z "$bin" ]; then
	echo "install: building rlivepatch (release)" >&2
	cargo build --release --quiet
	bin=target/x86_64-unknown-linux-gnu/release/rlivepatch
fi
d="$root$prefix"
install -D -m 755 "$bin" "$d/bin/rlivepatch"
install -D -m 644 patches/include/rlivepatch.h "$d/include/rlivepatch.h"
mkdir -p "$d/share/man/man1" "$d/share/bash-completion/completions" \
	"$d/share/zsh/site-functions" "$d/share/fish/vendor_completions.d"
"$bin" manpage --dir "$d/share/man/man1"
"$bin" completions bash >"$d/share/bash-completion/completions/rlivepatch"
"$bin" completions zsh >"$d/share/zsh/site-functions/_rlivepatch"
"$bin" completions fish >"$d/share/fish/vendor_completions.d/rlivepatch.fish"
echo "install: rlivepatch in $d/bin, rlivepatch.h in $d/include, man pages and completions under $d/share" >&2
echo "install: build a patch with: cc \$(rlivepatch sdk --cflags) -o fix.so fix.c" >&2
