#!/bin/sh
# tests/fuzz/run.sh: replay the regression inputs, then fuzz every harness,
# one at a time (the CI machine and the dev VMs have 2 shared cores).
#
#   run.sh --short            CI: 6 s per harness (11 harnesses: 66 s in all)
#   run.sh --long SECONDS     local: SECONDS per harness
#   run.sh --replay           only replay tests/fuzz/regressions/
#   options after the mode:   --only NAME[,NAME]  fuzz just these harnesses
#
# Regressions (tests/fuzz/regressions/<harness>/*) are always replayed first;
# each must run clean. Seeds come from tests/fuzz/corpus/<harness>/ (read
# only); what libFuzzer adds goes to $OUT/corpus/<harness>/ and persists
# between local runs. A crash, leak, sanitizer report or FUZZ_CHECK failure
# is a finding: its input is saved to $OUT/artifacts/<harness>/, the run
# goes on with the next harness, and the script exits 1. The last line is
# "fuzz: N harnesses, M execs, K findings"; $OUT/results.tsv holds the
# per-harness numbers (execs, cov, ft, corpus, seconds, findings).
# OUT defaults to build-fuzz/ at the repo root; harnesses are (re)built by
# build.sh when missing or older than their sources.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
OUT=${FUZZ_OUT:-$root/build-fuzz}
HARNESSES="base64 pyjson timeutil message_envelope message_body telemetry config redis_url ch_url ch_describe control"

mode=${1:---short}
secs=6
case "$mode" in
    --short) secs=6; shift 2>/dev/null || true ;;
    --long) secs=${2:?"--long needs SECONDS (per harness)"}; shift 2 ;;
    --replay) secs=0; shift ;;
    *) echo "usage: $0 --short | --long SECONDS | --replay [--only a,b]" >&2; exit 2 ;;
esac
if [ "${1:-}" = --only ]; then HARNESSES=$(echo "${2:?}" | tr , ' '); fi

# Build when a harness is missing or any source is newer than it.
need_build=0
for h in $HARNESSES; do
    [ -x "$OUT/fuzz_$h" ] || need_build=1
done
if [ $need_build = 0 ] && [ -n "$(find "$root/common" "$root/broker" "$root/clickhouse" "$root/tasks" \
        "$root/worker" "$here" -name '*.[ch]' -newer "$OUT/libptel_fuzz.a" 2>/dev/null | head -1)" ]; then
    need_build=1
fi
if [ $need_build = 1 ]; then
    "$here/build.sh" "$OUT" >/dev/null || { echo "fuzz: build failed"; exit 1; }
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

findings=0
total_execs=0
nh=0

# ---- 1. replay regressions ----------------------------------------------------
if [ -d "$here/regressions" ]; then
    for dir in "$here"/regressions/*/; do
        [ -d "$dir" ] || continue
        h=$(basename "$dir")
        files=$(find "$dir" -type f ! -name '*.md' | sort)
        [ -n "$files" ] || continue
        if [ ! -x "$OUT/fuzz_$h" ]; then
            "$here/build.sh" "$OUT" >/dev/null || { echo "fuzz: build failed"; exit 1; }
        fi
        n=$(echo "$files" | wc -l)
        # shellcheck disable=SC2086
        if "$OUT/fuzz_$h" -runs=1 $files >"$OUT/replay_$h.log" 2>&1; then
            echo "replay $h: $n inputs ok"
        else
            echo "replay $h: FAILED (see $OUT/replay_$h.log)"
            tail -40 "$OUT/replay_$h.log"
            findings=$((findings + 1))
        fi
    done
fi

# ---- 2. fuzz --------------------------------------------------------------------
printf 'harness\texecs\tcov\tft\tcorpus\tseconds\tfindings\n' >"$OUT/results.tsv"
if [ "$secs" -gt 0 ]; then
    for h in $HARNESSES; do
        [ -x "$OUT/fuzz_$h" ] || { echo "fuzz $h: no binary (skipped)"; continue; }
        nh=$((nh + 1))
        work="$OUT/corpus/$h"
        art="$OUT/artifacts/$h"
        mkdir -p "$work" "$art"
        log="$OUT/fuzz_$h.log"
        start=$(date +%s)
        "$OUT/fuzz_$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
            -print_final_stats=1 -artifact_prefix="$art/" "$work" "$here/corpus/$h" >"$log" 2>&1
        rc=$?
        el=$(($(date +%s) - start))
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -1)
        [ -n "$execs" ] || execs=0
        last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1)
        cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
        ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
        corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
        f=0
        if [ $rc -ne 0 ]; then
            f=1
            findings=$((findings + 1))
            echo "fuzz $h: FINDING (exit $rc), input in $art/, log $log"
            grep -E 'ERROR: |FUZZ_CHECK|SUMMARY|runtime error|^    #[0-9] ' "$log" | head -25
        fi
        total_execs=$((total_execs + execs))
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$h" "$execs" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$el" "$f" \
            >>"$OUT/results.tsv"
        printf 'fuzz %-17s %9s execs  cov %-5s ft %-6s corp %-5s %3ss  %s\n' "$h" "$execs" "${cov:-?}" \
            "${ft:-?}" "${corp:-?}" "$el" "$([ $f = 0 ] && echo ok || echo FINDING)"
    done
fi

echo "fuzz: $nh harnesses, $total_execs execs, $findings findings"
[ "$findings" -eq 0 ]
