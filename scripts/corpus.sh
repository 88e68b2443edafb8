#!/usr/bin/env bash
# The corpus of real published fixes (see scripts/corpus.py and CORPUS.md): builds
# rlivepatch, then fetches, builds and runs every row of corpus/projects/*.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "corpus: needs python3" >&2; exit 1; }
cargo build --quiet
exec python3 scripts/corpus.py "$@"
