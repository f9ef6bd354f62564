#!/bin/sh
# tests/fuzz/build.sh: build the libFuzzer harnesses (ASan + UBSan) without
# meson: the project's library sources are compiled once into a static
# archive with sanitizer and coverage instrumentation, then each harness
# links against it (the linker pulls only the objects it needs).
#
# Usage: tests/fuzz/build.sh [OUTDIR]   (default: build-fuzz/ at the repo root,
#        ignored by git as /build*/). Needs clang and libclang-rt-14-dev.
# Env:   CC (default clang), FUZZ_CFLAGS (extra flags).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/build-fuzz}
CC=${CC:-clang}
mkdir -p "$out/obj"

# Every library source a harness can reach. control.c needs transport.c and
# events.c for symbols; the rest of broker/ and clickhouse/ comes along so
# the archive resolves whatever a parser calls. chdb.c (the chdb:// backend)
# is listed for its symbols only: fuzz_ch_url never opens a chdb:// URL.
LIB_SOURCES="
common/mem.c common/buf.c common/log.c common/pyjson.c common/timeutil.c common/base64.c common/errbuf.c
broker/url.c broker/message.c broker/transport.c broker/backend.c broker/events.c broker/control.c
clickhouse/client.c clickhouse/schema.c clickhouse/encode.c clickhouse/event_row.c clickhouse/chdb.c
tasks/telemetry.c
worker/config.c
"
HARNESSES="base64 pyjson timeutil message_envelope message_body telemetry config redis_url ch_url ch_describe control"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-g -O1 -std=c11 -D_GNU_SOURCE -DPTEL_VERSION=\"fuzz\" $SAN -I$root $(pkg-config --cflags hiredis msgpack libcjson libcurl uuid zlib) ${FUZZ_CFLAGS:-}"
LIBS="$(pkg-config --libs hiredis msgpack libcjson libcurl uuid zlib) -lbz2 -lm -lpthread -ldl"

objs=""
for src in $LIB_SOURCES; do
    [ -f "$root/$src" ] || { echo "build.sh: $src missing, skipped" >&2; continue; }
    o="$out/obj/$(echo "$src" | tr / _ | sed 's/\.c$/.o/')"
    if [ ! -f "$o" ] || [ "$root/$src" -nt "$o" ] || [ "$0" -nt "$o" ]; then
        echo "  CC $src"
        $CC $CFLAGS -fsanitize=fuzzer-no-link -c "$root/$src" -o "$o"
    fi
    objs="$objs $o"
done
rm -f "$out/libptel_fuzz.a"
ar rcs "$out/libptel_fuzz.a" $objs

for h in $HARNESSES; do
    src="$here/fuzz_$h.c"
    if [ "$h" = control ] && [ ! -f "$root/broker/control.h" ]; then
        echo "build.sh: broker/control.h missing, fuzz_control skipped" >&2
        continue
    fi
    echo "  LD fuzz_$h"
    $CC $CFLAGS -fsanitize=fuzzer "$src" "$out/libptel_fuzz.a" $LIBS -o "$out/fuzz_$h"
done
echo "build.sh: harnesses in $out"
