#!/usr/bin/env bash
# tests/chdb/fetch.sh: install chDB (ClickHouse as a library) for the chdb://
# backend and its tests (clickhouse/test_chdb).
#
#   tests/chdb/fetch.sh [DIR]     default DIR: ./var/chdb (relative to the repo root)
#
# chDB ships its Linux x86-64 build as the npm package @chdb/lib-linux-x64-gnu
# (libchdb.so only, ~560 MB unpacked, 167 MB download; no C header: the C API
# the backend uses is declared in clickhouse/chdb.c). The version is pinned so
# the tests always meet the same ClickHouse (26.5.x); bump it deliberately.
# Idempotent: a DIR that already holds this version is left alone. Afterwards
# point PTEL_CHDB_LIB at DIR/libchdb.so (./var/chdb/libchdb.so is found
# without it when the worker runs from the repo root).
set -euo pipefail

PKG=@chdb/lib-linux-x64-gnu
VERSION=26.5.3

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=${1:-$ROOT/var/chdb}

if ! command -v npm >/dev/null 2>&1; then
    echo "tests/chdb/fetch.sh: npm is not installed; it is needed to download $PKG" >&2
    echo "  (Debian: apt-get install npm)" >&2
    exit 1
fi
case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *)
        echo "tests/chdb/fetch.sh: $PKG is built for Linux x86-64 only, not $(uname -s)-$(uname -m)" >&2
        exit 1
        ;;
esac

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
if [[ -f "$DEST/libchdb.so" && "$(cat "$DEST/VERSION" 2>/dev/null)" == "$VERSION" ]]; then
    echo "$DEST/libchdb.so: chDB $VERSION already installed"
    exit 0
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ptel-chdb-fetch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
echo "downloading $PKG@$VERSION (about 170 MB) ..."
if ! (cd "$TMP" && npm pack --silent "$PKG@$VERSION" >pack.out 2>pack.err); then
    # Say why (registry unreachable, TLS trust, proxy...), not just that it failed.
    echo "tests/chdb/fetch.sh: npm pack $PKG@$VERSION failed:" >&2
    grep -v '^npm ERR! *$' "$TMP/pack.err" | head -n 5 >&2
    exit 1
fi
TARBALL=$TMP/$(tail -n 1 "$TMP/pack.out")
[[ -f "$TARBALL" ]] || { echo "tests/chdb/fetch.sh: npm pack produced no tarball" >&2; exit 1; }
tar -xzf "$TARBALL" -C "$TMP" package/libchdb.so
# A header, should a later version ship one.
tar -xzf "$TARBALL" -C "$TMP" --wildcards 'package/*.h' 2>/dev/null || true

# Replace atomically, so a half-copied library is never picked up.
mv -f "$TMP/package/libchdb.so" "$DEST/libchdb.so.tmp"
mv -f "$DEST/libchdb.so.tmp" "$DEST/libchdb.so"
for h in "$TMP"/package/*.h; do
    [[ -f "$h" ]] && cp -f "$h" "$DEST/"
done
echo "$VERSION" >"$DEST/VERSION"
echo "$DEST/libchdb.so: chDB $VERSION installed; use PTEL_CHDB_LIB=$DEST/libchdb.so"
