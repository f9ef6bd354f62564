r"""bench/celery_mix.py: capture the C worker's Redis commands, for replay.

Owns the "Redis serving the Celery command mix per task" limit's data side:
a raw MONITOR reader, the parser of MONITOR's quoted arguments (back to exact
bytes), the filter that keeps only the worker's own commands, the replay file
(written for bench/baselines/redis_replay.c) and the trimming of idle polls.
Does not own: starting the worker or the servers (bench.py), preloading
(celery_load.py), replaying (redis_replay.c).

MONITOR line (Redis 7): `1700000000.123456 [DB ADDR] "CMD" "arg" ...`, ADDR
`ip:port`, `unix:/path` or `lua` (a command run by a script: dropped, the
EVALSHA that ran it is replayed). Arguments are quoted by sdscatrepr:
`\\ \" \n \r \t \a \b` and `\xHH` for other non-printable bytes.

Replay file: per command `*<argc>\n` then per argument `<len>\n<bytes>\n`
(binary safe, trivial to read in C).
"""
import socket
import threading

ESCAPES = {ord("\\"): b"\\", ord('"'): b'"', ord("n"): b"\n", ord("r"): b"\r",
           ord("t"): b"\t", ord("a"): b"\a", ord("b"): b"\b"}
HEX = b"0123456789abcdefABCDEF"
FETCH_KEY = b"unacked_index"   # the fetch script's first key (kombu's default name)
UNACKED = "unacked"
MARKER = b"ptel-mix-end"

# Commands that change the connection's mode or block: never replayed on a
# pipelining connection (counted and reported instead).
STATEFUL = {b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE",
            b"MONITOR", b"CLIENT", b"HELLO", b"AUTH", b"QUIT", b"RESET", b"WATCH",
            b"BRPOP", b"BLPOP", b"BLMOVE", b"BRPOPLPUSH", b"BZPOPMIN", b"BZPOPMAX",
            b"BLMPOP", b"BZMPOP", b"WAIT"}


def unquote_args(s):
    """The arguments of a MONITOR line's tail (bytes) as a list of bytes."""
    args, i, n = [], 0, len(s)
    while i < n:
        if s[i] == 0x20:
            i += 1
            continue
        if s[i] != 0x22:
            raise ValueError("argument not quoted at %d: %r" % (i, s[i:i + 20]))
        i += 1
        out = bytearray()
        while True:
            if i >= n:
                raise ValueError("unterminated argument")
            c = s[i]
            if c == 0x22:
                i += 1
                break
            if c != 0x5C:
                out.append(c)
                i += 1
                continue
            e = s[i + 1] if i + 1 < n else None
            if e == ord("x") and i + 3 < n and s[i + 2] in HEX and s[i + 3] in HEX:
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
            elif e in ESCAPES:
                out += ESCAPES[e]
                i += 2
            else:
                raise ValueError("bad escape at %d: %r" % (i, s[i:i + 6]))
        args.append(bytes(out))
    return args


def quote_arg(b):
    """sdscatrepr's quoting (the inverse of unquote_args, for tests)."""
    out = bytearray(b'"')
    for c in b:
        if c in (0x5C, 0x22):
            out += b"\\" + bytes([c])
        elif c in (0x0A, 0x0D, 0x09, 0x07, 0x08):
            out += {0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x07: b"\\a", 0x08: b"\\b"}[c]
        elif 0x20 <= c < 0x7F:
            out.append(c)
        else:
            out += b"\\x%02x" % c
    return bytes(out + b'"')


def parse_line(line):
    """(timestamp, db, addr, [args]) of one MONITOR line (bytes, no CRLF)."""
    ts, rest = line.split(b" ", 1)
    head, tail = rest.split(b"] ", 1)
    db, addr = head[1:].split(b" ", 1)
    return float(ts), int(db), addr.decode(), unquote_args(tail)


class Monitor(threading.Thread):
    """A raw MONITOR connection collecting lines until a marker ECHO is seen."""

    def __init__(self, host, port):
        super().__init__(daemon=True)
        self.sock = socket.create_connection((host, port))
        self.sock.sendall(b"MONITOR\r\n")
        self.lines = []
        self.marker = None
        self.done = threading.Event()
        self._buf = b""
        if self._readline() != b"+OK":
            raise RuntimeError("MONITOR refused")

    def _readline(self):
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("MONITOR connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def run(self):
        try:
            while True:
                try:
                    line = self._readline()
                except (OSError, RuntimeError):
                    break
                if line.startswith(b"+"):
                    line = line[1:]
                self.lines.append(line)
                if self.marker and self.marker in line:
                    break
        finally:
            self.sock.close()
            self.done.set()

    def stop_at(self, marker, timeout=60):
        """Wait until a line containing `marker` (bytes) arrived; True if so."""
        self.marker = marker
        if any(marker in line for line in list(self.lines)):
            self.sock.shutdown(socket.SHUT_RDWR)
        return self.done.wait(timeout)

    def captured(self):
        """The lines before the marker line."""
        lines = list(self.lines)
        cut = next((i for i, l in enumerate(lines) if self.marker in l), len(lines))
        return lines[:cut]


def worker_commands(lines, foreign):
    """[(db, addr, args)] of the lines not sent by `foreign` addresses or Lua."""
    out = []
    for line in lines:
        try:
            head = line.split(b"] ", 1)[0]
            addr = head.split(b" ", 2)[2].decode()
            if addr == "lua" or addr in foreign:
                continue    # skip unquoting Lua's long HSET payloads
            _, db, addr, args = parse_line(line)
        except (ValueError, IndexError):
            continue
        if args:
            out.append((db, addr, args))
    return out


def split_setup(cmds, fetch_key):
    """(script loads, window) where the window runs from the first fetch.

    The fetch is the EVALSHA whose first key is `fetch_key` (unacked_index).
    Before it: connection set-up, mingle, SCRIPT LOAD (kept as set-up)."""
    first = next((i for i, (_, _, a) in enumerate(cmds) if is_fetch(a, fetch_key)), None)
    if first is None:
        return [], []
    loads = [a for _, _, a in cmds if a[0].upper() == b"SCRIPT" and a[1].upper() == b"LOAD"]
    return loads, cmds[first:]


def is_fetch(args, fetch_key):
    return args[0].upper() == b"EVALSHA" and len(args) > 3 and args[3] == fetch_key


def replayable(window):
    """Commands of the window as one connection sends them.

    SELECT is sent where the db changes (the workers' own SELECTs and SCRIPT
    LOADs are dropped); stateful or blocking commands are dropped and
    counted. MONITOR shows MULTI when it runs but the queued commands at
    EXEC, so a connection's MULTI is held back until its next command.
    Returns (commands, dropped {name: n})."""
    out, dropped, db, held = [], {}, None, set()
    for cdb, addr, args in window:
        name = args[0].upper()
        if name == b"MULTI":
            held.add(addr)
            continue
        if name in STATEFUL or name == b"SELECT" or (name == b"SCRIPT" and args[1].upper() == b"LOAD"):
            k = name.decode()
            dropped[k] = dropped.get(k, 0) + 1
            continue
        if cdb != db:
            out.append([b"SELECT", str(cdb).encode()])
            db = cdb
        if addr in held:
            out.append([b"MULTI"])
            held.discard(addr)
        out.append(args)
    return out, dropped


def write_replay(path, cmds):
    with open(path, "wb") as f:
        for args in cmds:
            f.write(b"*%d\n" % len(args))
            for a in args:
                f.write(b"%d\n" % len(a))
                f.write(a)
                f.write(b"\n")


def trim_idle_fetches(cmds, kinds, fetch_key):
    """Drop the fetches after the last one that popped a message.

    kinds: one reply summary per command from a probe replay ("a<n>": array
    of n, three elements per message popped: key index, payload, tag). Returns (trimmed, n dropped,
    messages popped by the kept fetches)."""
    popped = [int(kinds[i][1:].split(":")[0]) // 3 if is_fetch(a, fetch_key) and kinds[i].startswith("a") else 0
              for i, a in enumerate(cmds)]
    last = max((i for i, k in enumerate(popped) if k), default=-1)
    out, dropped = [], 0
    for i, a in enumerate(cmds):
        if i > last and is_fetch(a, fetch_key):
            dropped += 1
            continue
        out.append(a)
    return out, dropped, sum(popped)


def acks_hit(cmds, kinds):
    """(EXECs, EXECs where every queued command removed one item).

    The worker acks with MULTI ZREM unacked_index T, HDEL unacked T, EXEC:
    both hit only if the fetch of the message tagged T ran before, so all
    EXECs hitting means the replay fetched the same messages in order."""
    execs = [kinds[i] for i, a in enumerate(cmds) if a[0].upper() == b"EXEC"]
    full = sum(1 for k in execs if ":" in k and k[1:].split(":")[0] == k.split(":")[1])
    return len(execs), full


def command_mix(cmds, n):
    """{command name: calls per task} of a replay list."""
    mix = {}
    for a in cmds:
        k = a[0].decode().lower()
        mix[k] = mix.get(k, 0) + 1
    return {k: round(v / n, 3) for k, v in sorted(mix.items())}


def preload(r, raws, queue, chunk=1000):
    """LPUSH the given messages in order, pipelined like celery_load.preload."""
    pipe = r.pipeline(transaction=False)
    for i, raw in enumerate(raws):
        pipe.lpush(queue, raw)
        if (i + 1) % chunk == 0:
            pipe.execute()
    pipe.execute()


def results(r, ids, chunk=2000):
    """The stored result values (bytes or None) of ids, in order."""
    out = []
    for i in range(0, len(ids), chunk):
        out += r.mget(["celery-task-meta-" + t for t in ids[i:i + chunk]])
    return out


def self_test():
    """Round-trips tricky arguments through quote_arg/unquote_args."""
    cases = [b"", b"plain", b'em"bed"ded', b"back\\slash\\", b'\\"', b"\n\r\t\a\b",
             bytes(range(256)), b'{"a": "\\u00e9\\n"}', "é✓".encode(), b"\\x41 not hex",
             b'" "', b"\x00\x7f\xff"]
    line = b" ".join(quote_arg(c) for c in cases)
    assert unquote_args(line) == cases, "round trip"
    ts, db, addr, args = parse_line(b'1700000000.123456 [1 127.0.0.1:5555] "SET" "a\\x00b" "\\"x\\""')
    assert (db, addr, args) == (1, "127.0.0.1:5555", [b"SET", b"a\x00b", b'"x"'])
    assert parse_line(b'1.5 [0 lua] "get" "k"')[2] == "lua"
    assert parse_line(b'1.5 [0 unix:/tmp/r.sock] "PING"')[2] == "unix:/tmp/r.sock"
    win = [(1, "A", [b"MULTI"]), (1, "B", [b"GET", b"x"]), (1, "A", [b"HDEL", b"h", b"t"]),
           (1, "A", [b"EXEC"]), (1, "B", [b"SUBSCRIBE", b"c"])]
    cmds, dropped = replayable(win)
    assert cmds == [[b"SELECT", b"1"], [b"GET", b"x"], [b"MULTI"], [b"HDEL", b"h", b"t"],
                    [b"EXEC"]] and dropped == {"SUBSCRIBE": 1}, cmds
    return len(cases)


if __name__ == "__main__":
    print("celery_mix self-test: %d cases ok" % self_test())
