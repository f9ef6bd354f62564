#!/usr/bin/python3
"""Generate broker codec fixtures with the real Celery 5.2.6 / kombu 5.2.4.

Run with /usr/bin/python3 (Debian's celery/kombu/msgpack). It starts a
private redis-server on a free port in a temp dir, publishes tasks with
Celery's own client (send_task) and LRANGEs the raw envelopes exactly as a
worker would pop them, then derives the malformed cases from them.
Writes fixtures.json beside this script: {name: {"raw": str, ...expect}}.
"""
import base64, bz2, datetime, json, os, shutil, socket, subprocess, sys, tempfile, time, zlib

import msgpack
import redis
from celery import Celery
from celery.utils.saferepr import saferepr

ARGS = [2 ** 70, -(2 ** 65), "h\u00e9llo \u2603 \U0001F600", 1.5, None, True, [1, {"a": "b"}]]
KWARGS = {"k\u00fc": "\u00fc", "big": 12345678901234567890123, "f": 0.1, "neg": -7}
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    for p in range(7050, 7100):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            pass
        finally:
            s.close()
    raise SystemExit("no free port in 7050-7099")


def start_redis():
    port = free_port()
    d = tempfile.mkdtemp(prefix="ptel-codec-gen-")
    subprocess.check_call(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                           "--daemonize", "yes", "--dir", d, "--pidfile", d + "/redis.pid"])
    r = redis.Redis(port=port)
    for _ in range(50):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    return port, r, d


def make_app(port, protocol=2):
    app = Celery("gen", broker=f"redis://127.0.0.1:{port}/0")
    app.conf.task_protocol = protocol
    app.conf.task_default_queue = "ingest"
    return app


def pop_one(r, queue="ingest"):
    raw = r.rpop(queue)
    assert raw is not None, "nothing published"
    assert r.llen(queue) == 0
    return raw.decode("ascii")


def iso(dt):
    return dt.isoformat()


def main():
    port, r, tmpdir = start_redis()
    fx = {}
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=123456)
    eta = now + datetime.timedelta(seconds=30)
    exp = now + datetime.timedelta(seconds=90)
    try:
        for proto in (2, 1):
            app = make_app(port, proto)
            for ser in ("json", "msgpack"):
                name = f"v{proto}_{ser}_bigint_nonascii"
                # msgpack has no bignums: use its extremes (uint64 max, int64 min)
                if ser == "msgpack":
                    args = [2 ** 64 - 1, -(2 ** 63)] + ARGS[2:]
                    kwargs = dict(KWARGS, big=2 ** 63)
                else:
                    args, kwargs = ARGS, KWARGS
                app.send_task("proto.add", args=args, kwargs=kwargs, serializer=ser,
                              eta=eta, expires=exp, time_limit=20, soft_time_limit=10.5,
                              priority=2, retries=3)
                raw = pop_one(r)
                fx[name] = {"raw": raw, "protocol": proto, "args": args, "kwargs": kwargs,
                            "task": "proto.add", "eta": iso(eta), "expires": iso(exp),
                            "time_limit": [20, 10.5], "retries": 3, "priority": 2,
                            "argsrepr": saferepr(tuple(args)), "kwargsrepr": saferepr(kwargs)}
            app.close()
        app = make_app(port, 2)
        for comp, label in (("zlib", "zlib"), ("bzip2", "bz2")):
            app.send_task("proto.add", args=[1, "\u00e9" * 300], kwargs={"x": [1] * 200},
                          compression=comp)
            fx[f"v2_{label}_compressed"] = {"raw": pop_one(r), "protocol": 2, "task": "proto.add",
                                            "args": [1, "\u00e9" * 300], "kwargs": {"x": [1] * 200}}
        for ser, label in (("pickle", "pickle"), ("yaml", "yaml")):
            app.send_task("proto.add", args=[1, 2], serializer=ser)
            fx[f"err_{label}"] = {"raw": pop_one(r)}
        app.send_task("proto.add", args=[1, 2])
        base = pop_one(r)
        app.close()
    finally:
        try:
            r.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        shutil.rmtree(tmpdir, ignore_errors=True)

    env = json.loads(base)

    def variant(mut):
        e = json.loads(base)
        mut(e)
        return json.dumps(e)

    def set_body(e, data):
        e["body"] = base64.b64encode(data).decode()

    fx["err_unknown_type"] = {"raw": variant(lambda e: e.update({"content-type": "text/plain"}))}
    fx["err_bad_base64"] = {"raw": variant(lambda e: e.update({"body": e["body"][:-3] + "!!="}))}
    fx["err_invalid_json_body"] = {"raw": variant(lambda e: set_body(e, b'[[1, 2], {"a": '))}
    fx["err_envelope_not_json"] = {"raw": base[:-5]}
    fx["err_missing_id"] = {"raw": variant(lambda e: e["headers"].pop("id"))}
    fx["err_missing_task_v1"] = {"raw": variant(lambda e: (e.update({"headers": {}}), set_body(
        e, json.dumps({"id": env["headers"]["id"], "args": [], "kwargs": {}}).encode())))}

    def bomb(e):
        e["headers"]["compression"] = "application/x-gzip"
        set_body(e, zlib.compress(b"[[" + b"0," * (8 * 1024 * 1024) + b"0], {}]", 9))
    fx["err_decompression_bomb"] = {"raw": variant(bomb), "inflated_bytes": 16 * 1024 * 1024 + 7}

    def bad_zlib(e):
        e["headers"]["compression"] = "application/x-gzip"
        set_body(e, zlib.compress(b"[[], {}, {}]")[:-6])
    fx["err_truncated_zlib"] = {"raw": variant(bad_zlib)}

    def bad_bz2(e):
        e["headers"]["compression"] = "application/x-bz2"
        set_body(e, bz2.compress(b"[[], {}, {}]")[:-8])
    fx["err_truncated_bz2"] = {"raw": variant(bad_bz2)}
    fx["err_unknown_compression"] = {"raw": variant(
        lambda e: e["headers"].update({"compression": "application/x-lzma"}))}

    def mp(e, obj, **kw):
        e["content-type"] = "application/x-msgpack"
        e["content-encoding"] = "binary"
        set_body(e, msgpack.packb(obj, use_bin_type=True, **kw))
    fx["err_msgpack_ext"] = {"raw": variant(lambda e: mp(e, [[msgpack.ExtType(5, b"xx")], {}, {}]))}
    fx["err_msgpack_bin_not_utf8"] = {"raw": variant(lambda e: mp(e, [[b"\xff\xfe"], {}, {}]))}
    fx["err_msgpack_int_key"] = {"raw": variant(lambda e: mp(e, [[], {1: 2}, {}]))}
    fx["err_msgpack_extra_data"] = {"raw": variant(lambda e: (mp(e, [[], {}, {}]), e.update(
        {"body": base64.b64encode(msgpack.packb([[], {}, {}]) + b"\x01").decode()})))}
    fx["v2_msgpack_bin_utf8"] = {"raw": variant(lambda e: mp(e, [[b"caf\xc3\xa9", 1.25], {}, {}])),
                                 "args": ["caf\u00e9", 1.25], "kwargs": {}}
    fx["err_body_not_task_shape"] = {"raw": variant(lambda e: set_body(e, b'{"a": 1}'))}

    # The message proto.retry_me was first sent as (retries 0); its retry
    # republish is golden sample task_v2_retry_republished_retries1.
    mon = os.path.join(HERE, "../../../../shared/protocol/captures/monitor_decoded/mon_02_tasks.decoded.jsonl")
    for line in open(mon):
        rec = json.loads(line)
        if (rec["cmd"].upper() == "LPUSH" and "3a5ee14d-5924-4568-a427-b978bc7327d1" in rec["args"][1]
                and '"retries": 0' in rec["args"][1]):
            fx["retry_original"] = {"raw": rec["args"][1]}
            break

    with open(os.path.join(HERE, "fixtures.json"), "w") as f:
        json.dump(fx, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(fx)} fixtures")


if __name__ == "__main__":
    main()
