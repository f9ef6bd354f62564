#!/usr/bin/env bash
# tests/fresh/chroot-check.sh: does scripts/run work on a fresh Debian 12?
#
#   tests/fresh/chroot-check.sh [ROOTDIR]     default ROOTDIR /tmp/fresh-root
#
# As root: builds a minimal Debian 12 root with `debootstrap --variant=minbase
# bookworm` (skipped when ROOTDIR already holds one; delete it for a truly
# fresh check), copies this checkout in without build*/ var/ .git (to
# /root/ptel-worker), then inside it via chroot runs, as a fresh machine would:
#
#   scripts/run --demo-only      install the packages, build, start redis and
#                                ClickHouse in var/, schema, worker, demo, report
#   scripts/test --unit          the Check unit tests
#
# Logs go to ROOTDIR.logs/ (run-demo.log, test-unit.log). The chroot gets
# /proc, /sys and /dev (rbind, rslave) mounted and an /usr/sbin/policy-rc.d
# that stops package installs from starting system services (a real machine
# would start redis-server on 6379 and clickhouse-server on 8123/9000: they
# do not clash with scripts/run's ports). The chroot shares the host's
# network, so scripts/run gets free ports (PTEL_RUN_*_PORT) instead of
# 6390/8124/9124. Everything still running inside ROOTDIR at the end is
# stopped by pid and the mounts are removed.
#
# Environment: PTEL_FRESH_MIRROR (default: the first Debian URI in the
# host's apt sources, else http://deb.debian.org/debian); PTEL_FRESH_SHARED=DIR
# copies DIR (the shared docs: protocol captures the broker unit tests read
# from ../shared, outside this repository) to /root/shared; by default it is
# not copied, as on a fresh clone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
R=${1:-/tmp/fresh-root}
LOGS="$R.logs"
say() { printf '==> %s\n' "$*"; }
die() { printf 'chroot-check: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "run as root (debootstrap, chroot, mount)"

host_mirror() {
    local uri
    uri=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list.d/*.list 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?' | head -n 1)
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${PTEL_FRESH_MIRROR:-$(host_mirror)}
SECURITY=${MIRROR%/debian*}/debian-security

# ---- the root ----------------------------------------------------------------------

if [[ ! -f "$R/etc/debian_version" ]]; then
    command -v debootstrap >/dev/null || {
        say "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap </dev/null
    }
    say "debootstrap --variant=minbase bookworm $R $MIRROR"
    debootstrap --variant=minbase bookworm "$R" "$MIRROR"
else
    say "reusing the Debian root in $R ($(cat "$R/etc/debian_version"))"
fi
mkdir -p "$LOGS"

# The sources a Debian 12 install has: main, updates, security.
cat >"$R/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 755 "$R/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"

say "copying the checkout to $R/root/ptel-worker (no build*, var, .git)"
rm -rf "$R/root/ptel-worker"
mkdir -p "$R/root/ptel-worker"
tar -C "$ROOT" --exclude='./build*' --exclude=./var --exclude=./.git --exclude='__pycache__' \
    -cf - . | tar -C "$R/root/ptel-worker" -xf -

rm -rf "$R/root/shared"
if [[ -n "${PTEL_FRESH_SHARED:-}" ]]; then
    say "copying $PTEL_FRESH_SHARED to $R/root/shared (PTEL_FRESH_SHARED)"
    cp -a "$PTEL_FRESH_SHARED" "$R/root/shared"
fi

# ---- mounts and cleanup --------------------------------------------------------------

MOUNTED=()
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    local rc=$? pid link m i
    trap - EXIT INT TERM
    # Processes whose root is the chroot were started by this script.
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        link=$(readlink "/proc/$pid/root" 2>/dev/null) || continue
        [[ "$link" == "$R" ]] || continue
        echo "chroot-check: stopping pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-80))" >&2
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 1
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        m=${MOUNTED[i]}
        umount -R "$m" 2>/dev/null || umount -R -l "$m" || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mount -t proc proc "$R/proc" && MOUNTED+=("$R/proc")
mount -t sysfs sysfs "$R/sys" && MOUNTED+=("$R/sys")
mount --rbind /dev "$R/dev" && mount --make-rslave "$R/dev" && MOUNTED+=("$R/dev")

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

in_chroot() {
    chroot "$R" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PTEL_RUN_REDIS_PORT="$(free_port)" PTEL_RUN_CLICKHOUSE_PORT="$(free_port)" \
        PTEL_RUN_CLICKHOUSE_TCP_PORT="$(free_port)" \
        bash -c "cd /root/ptel-worker && $1"
}

status=0
say "chroot: scripts/run --demo-only (log: $LOGS/run-demo.log)"
start=$(date +%s)
if in_chroot 'scripts/run --demo-only' >"$LOGS/run-demo.log" 2>&1 </dev/null; then
    say "scripts/run --demo-only: OK in $(($(date +%s) - start)) s"
else
    rc=$?
    status=1
    say "scripts/run --demo-only: FAILED (exit $rc) after $(($(date +%s) - start)) s; last lines:"
    tail -n 30 "$LOGS/run-demo.log"
fi
grep -E '^==> (drain result|dead-letter stream)' "$LOGS/run-demo.log" || true

say "chroot: scripts/test --unit (log: $LOGS/test-unit.log)"
start=$(date +%s)
if in_chroot 'scripts/test --unit' >"$LOGS/test-unit.log" 2>&1 </dev/null; then
    say "scripts/test --unit: OK in $(($(date +%s) - start)) s"
else
    rc=$?
    status=1
    say "scripts/test --unit: FAILED (exit $rc) after $(($(date +%s) - start)) s"
fi
grep -E '^(FAILED|unit:|[0-9]+ passed)' "$LOGS/test-unit.log" || true
exit "$status"
