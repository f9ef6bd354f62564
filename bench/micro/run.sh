#!/bin/sh
# bench/micro/run.sh [entries]: builds event_cost.c from the checkout's
# sources at -O3 (as meson's release build) and prints, per stage, CPU
# ns/event (best of 5 rounds) and callgrind's instruction count per event
# (repeatable; counts only the stage function, not the generator).
set -e
root=$(cd "$(dirname "$0")/../.." && pwd)
n=${1:-2000}
out=${TMPDIR:-/tmp}/ptel-event-cost.$$
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
cd "$root"
cc -O3 -g -D_GNU_SOURCE -I. -o "$out/event_cost" bench/micro/event_cost.c \
   common/pyjson.c common/buf.c common/mem.c common/log.c common/timeutil.c \
   tasks/telemetry.c clickhouse/encode.c clickhouse/event_row.c \
   clickhouse/schema.c clickhouse/client.c clickhouse/chdb.c \
   -lcurl -lz -lm -ldl -lpthread
"$out/event_cost" --entries "$n"
if command -v valgrind >/dev/null; then
    cn=$((n / 10))
    for s in parse doc entry encode; do
        valgrind --tool=callgrind --callgrind-out-file="$out/cg.$s" \
            --toggle-collect="stage_$s" "$out/event_cost" --entries "$cn" --rounds 1 --only "$s" \
            > "$out/log.$s" 2>&1
        ev=$(sed -n 's/^[0-9]* entries, \([0-9]*\) events.*/\1/p' "$out/log.$s")
        ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out/cg.$s")
        echo "$s: callgrind $(( ir / ev )) instructions/event ($cn entries, $ev events)"
    done
fi
