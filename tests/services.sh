#!/usr/bin/env bash
# tests/services.sh: private redis-server and clickhouse-server instances for
# the tests (and the building blocks scripts/run uses for its ./var services).
#
# Every instance listens on 127.0.0.1 only, on ports picked free at start
# (never 6379/8123/9000), keeps all its files under one mktemp directory, and
# is stopped by PID, never by name: the system instances are never touched.
#
#   tests/services.sh start [ENVFILE]   start both, write ENVFILE (default:
#                                       <tmpdir>/env, path printed on stdout)
#   tests/services.sh stop ENVFILE      stop what ENVFILE describes, rm tmpdir
#
# Building blocks (used by scripts/run and the pytest clickhouse fixture):
#   clickhouse-config DIR HTTP_PORT TCP_PORT PASSWORD   render config+users
#   clickhouse-start CONFIG HTTP_PORT PIDFILE LOG       start, wait for /ping
#   redis-start PORT DIR PIDFILE [REDIS ARGS]           start, wait for PING
#   stop-pidfile PIDFILE WHAT                           TERM, wait, KILL
#   free-port                                           print a free port
set -euo pipefail

SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services"
PY=/usr/bin/python3
CH_START_TIMEOUT=${PTEL_CLICKHOUSE_START_TIMEOUT:-30}
REDIS_START_TIMEOUT=${PTEL_REDIS_START_TIMEOUT:-10}

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# alive PID: true while the process exists and is not a zombie.
alive() {
    local pid=$1 state
    [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
    state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ "$state" != Z && "$state" != X ]]
}

# cmdline_has PID TEXT: the process's command line contains TEXT (guards
# against signalling a recycled PID that is no longer ours).
cmdline_has() {
    [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"
}

tail_log() {
    local f
    for f in "$@"; do
        [[ -s "$f" ]] || continue
        log "---- last lines of $f ----"
        tail -n 40 "$f" >&2 || true
    done
}

# stop_pid PID WHAT [TIMEOUT]: SIGTERM, wait up to TIMEOUT s, then SIGKILL.
stop_pid() {
    local pid=$1 what=$2 timeout=${3:-30} i
    alive "$pid" || return 0
    if ! cmdline_has "$pid" "$what"; then
        log "pid $pid is not $what any more; leaving it alone"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < timeout * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    log "$what (pid $pid) ignored SIGTERM for ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
}

cmd_stop_pidfile() {
    local pidfile=$1 what=$2 pid
    [[ -f "$pidfile" ]] || return 0
    pid=$(cat "$pidfile")
    stop_pid "$pid" "$what"
    rm -f "$pidfile"
}

# ---- ClickHouse ---------------------------------------------------------------

cmd_clickhouse_config() {
    local dir=$1 http=$2 tcp=$3 password=$4
    mkdir -p "$dir"/data "$dir"/tmp "$dir"/user_files "$dir"/format_schemas
    dir=$(cd "$dir" && pwd)
    sed -e "s|@DIR@|$dir|g" -e "s|@HTTP_PORT@|$http|g" -e "s|@TCP_PORT@|$tcp|g" \
        "$SERVICES_DIR/clickhouse-config.xml.in" >"$dir/config.xml"
    sed -e "s|@PASSWORD@|$password|g" "$SERVICES_DIR/clickhouse-users.xml.in" >"$dir/users.xml"
    chmod 600 "$dir/users.xml"
}

ch_ping() {
    [[ "$(curl -sS --max-time 2 "http://127.0.0.1:$1/ping" 2>/dev/null)" == "Ok." ]]
}

# cmd_clickhouse_start CONFIG HTTP_PORT PIDFILE LOG: start a detached server
# (own session, so a terminal's Ctrl-C reaches only whoever owns it) and wait
# until /ping answers "Ok.". Fails with the server's log tail.
cmd_clickhouse_start() {
    local config=$1 http=$2 pidfile=$3 out=$4 dir pid i
    dir=$(dirname "$config")
    command -v clickhouse-server >/dev/null || die "clickhouse-server is not installed"
    # Run from the config's directory: 18.16 resolves users.xml relative to it.
    (cd "$dir" && exec setsid clickhouse-server --config-file="$config" </dev/null >>"$out" 2>&1) &
    pid=$!
    echo "$pid" >"$pidfile"
    for ((i = 0; i < CH_START_TIMEOUT * 10; i++)); do
        if ch_ping "$http"; then
            return 0
        fi
        if ! alive "$pid"; then
            log "clickhouse-server (pid $pid) exited during start-up"
            tail_log "$out" "$dir/error.log"
            rm -f "$pidfile"
            return 1
        fi
        sleep 0.1
    done
    log "clickhouse-server (pid $pid) did not answer /ping on port $http within ${CH_START_TIMEOUT}s"
    tail_log "$out" "$dir/error.log" "$dir/server.log"
    stop_pid "$pid" clickhouse-server 10
    rm -f "$pidfile"
    return 1
}

# ---- Redis ----------------------------------------------------------------------

cmd_redis_start() {
    local port=$1 dir=$2 pidfile=$3 pid i
    shift 3 # the rest: extra redis-server options (later ones win)
    command -v redis-server >/dev/null || die "redis-server is not installed"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    (cd "$dir" && exec setsid redis-server --port "$port" --bind 127.0.0.1 \
        --save '' --appendonly no --dir "$dir" --daemonize no \
        --logfile "$dir/redis.log" "$@" </dev/null >>"$dir/redis.out" 2>&1) &
    pid=$!
    echo "$pid" >"$pidfile"
    for ((i = 0; i < REDIS_START_TIMEOUT * 10; i++)); do
        if [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]; then
            return 0
        fi
        if ! alive "$pid"; then
            log "redis-server (pid $pid) exited during start-up"
            tail_log "$dir/redis.out" "$dir/redis.log"
            rm -f "$pidfile"
            return 1
        fi
        sleep 0.1
    done
    log "redis-server (pid $pid) did not answer PING on port $port within ${REDIS_START_TIMEOUT}s"
    tail_log "$dir/redis.out" "$dir/redis.log"
    stop_pid "$pid" redis-server 5
    rm -f "$pidfile"
    return 1
}

# ---- start / stop for the test suite ------------------------------------------

cmd_start() {
    local envfile=${1:-} tmp redis_port ch_http ch_tcp password attempt ok
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/ptel-test.XXXXXX")
    chmod 755 "$tmp"
    [[ -n "$envfile" ]] || envfile="$tmp/env"

    ok=0
    for attempt in 1 2 3; do
        redis_port=$(free_port)
        if cmd_redis_start "$redis_port" "$tmp/redis" "$tmp/redis.pid"; then
            ok=1
            break
        fi
        log "redis start attempt $attempt failed"
    done
    if ((!ok)); then
        rm -rf "$tmp"
        die "could not start redis-server"
    fi

    password=$("$PY" -c 'import secrets; print(secrets.token_hex(12))')
    ok=0
    for attempt in 1 2 3; do
        ch_http=$(free_port)
        ch_tcp=$(free_port)
        [[ "$ch_http" != "$ch_tcp" ]] || continue
        cmd_clickhouse_config "$tmp/clickhouse" "$ch_http" "$ch_tcp" "$password"
        if cmd_clickhouse_start "$tmp/clickhouse/config.xml" "$ch_http" \
            "$tmp/clickhouse.pid" "$tmp/clickhouse/stdout.log"; then
            ok=1
            break
        fi
        log "clickhouse start attempt $attempt failed"
    done
    if ((!ok)); then
        cmd_stop_pidfile "$tmp/redis.pid" redis-server
        rm -rf "$tmp"
        die "could not start clickhouse-server (log tail above)"
    fi

    {
        echo "# written by tests/services.sh start; source it, stop with: tests/services.sh stop $envfile"
        printf 'export %s=%q\n' \
            PTEL_TEST_TMPDIR "$tmp" \
            PTEL_TEST_REDIS_URL "redis://127.0.0.1:$redis_port/0" \
            PTEL_TEST_REDIS_PORT "$redis_port" \
            PTEL_TEST_REDIS_PID "$(cat "$tmp/redis.pid")" \
            PTEL_TEST_REDIS_PIDFILE "$tmp/redis.pid" \
            PTEL_TEST_CLICKHOUSE_URL "http://127.0.0.1:$ch_http/" \
            PTEL_TEST_CLICKHOUSE_HTTP_PORT "$ch_http" \
            PTEL_TEST_CLICKHOUSE_TCP_PORT "$ch_tcp" \
            PTEL_TEST_CLICKHOUSE_USER ptel \
            PTEL_TEST_CLICKHOUSE_PASSWORD "$password" \
            PTEL_TEST_CLICKHOUSE_AUTH_URL "http://ptel:$password@127.0.0.1:$ch_http/" \
            PTEL_TEST_CLICKHOUSE_PID "$(cat "$tmp/clickhouse.pid")" \
            PTEL_TEST_CLICKHOUSE_PIDFILE "$tmp/clickhouse.pid" \
            PTEL_TEST_CLICKHOUSE_CONFIG "$tmp/clickhouse/config.xml" \
            PTEL_TEST_CLICKHOUSE_LOG "$tmp/clickhouse/stdout.log"
    } >"$envfile"
    log "redis-server on 127.0.0.1:$redis_port (pid $(cat "$tmp/redis.pid")), clickhouse-server on 127.0.0.1:$ch_http (pid $(cat "$tmp/clickhouse.pid")), files in $tmp"
    echo "$envfile"
}

cmd_stop() {
    local envfile=${1:?usage: services.sh stop ENVFILE}
    [[ -f "$envfile" ]] || { log "no env file $envfile; nothing to stop"; return 0; }
    (
        # shellcheck disable=SC1090
        . "$envfile"
        # The pidfile is authoritative: outage tests restart ClickHouse and
        # record the new pid there.
        cmd_stop_pidfile "$PTEL_TEST_CLICKHOUSE_PIDFILE" "$PTEL_TEST_CLICKHOUSE_CONFIG"
        stop_pid "$PTEL_TEST_CLICKHOUSE_PID" "$PTEL_TEST_CLICKHOUSE_CONFIG" 10
        cmd_stop_pidfile "$PTEL_TEST_REDIS_PIDFILE" redis-server
        stop_pid "$PTEL_TEST_REDIS_PID" redis-server 10
        case "$PTEL_TEST_TMPDIR" in
            */ptel-test.*) rm -rf "$PTEL_TEST_TMPDIR" ;;
            *) log "not removing unexpected directory $PTEL_TEST_TMPDIR" ;;
        esac
    )
    [[ "$envfile" == */ptel-test.*/env ]] || rm -f "$envfile"
}

main() {
    local cmd=${1:-}
    shift || true
    case "$cmd" in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        clickhouse-config) cmd_clickhouse_config "$@" ;;
        clickhouse-start) cmd_clickhouse_start "$@" ;;
        redis-start) cmd_redis_start "$@" ;;
        stop-pidfile) cmd_stop_pidfile "$@" ;;
        free-port) free_port ;;
        *)
            sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
            exit 2
            ;;
    esac
}

main "$@"
