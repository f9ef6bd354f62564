#!/usr/bin/python3
"""bench/bench.py: the benchmark orchestrator behind bench/run.

Runs every contender side by side on one pair of private servers, so each
figure is a ratio measured in the same run on the same data:

  drain      C drain vs upstream Python consumer vs ClickHouse raw ingest
             (RowBinary, JSONEachRow) vs Redis serving the entries; CPU/event
  profile    perf (or callgrind) profile of the C drain
  celery     ptel.ping throughput: Python solo, Python prefork -c 2, C -c 2;
             Redis alone serving the C worker's command mix (capture+replay);
             enqueue -> SUCCESS latency at 50% of each one's throughput
  footprint  C worker start-up to " ready.", idle RSS; Python for reference
  scaling    drain vs batch rows, vs streams, vs slots; Celery vs concurrency
  latency    10k events/s producer, beat-like trigger every 30 s vs a
             continuously running drain: XADD -> row visible, p50/p99

Results: OUT/results.json, OUT/table.md, OUT/*.png + *.dat, OUT/profile*.txt;
--update-md rewrites the block between the bench markers in BENCHMARKS.md.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib as B  # noqa: E402
import celery_load as CL  # noqa: E402
import celery_mix as MX  # noqa: E402
import gen_events as G  # noqa: E402

DRAIN_TASK = "dev_health_ops.workers.tasks.run_product_telemetry_consumer"
TABLE = "product_telemetry_events"

MODES = {
    "quick": dict(events=200000, py_events=20000, runs=3, scale_events=100000,
                  batch_list=[100, 1000, 10000, 100000], orgs_list=[1, 20, 200, 1000],
                  slots_list=[1, 2, 4], c_conc=[1, 2, 4, 8], py_conc=[], celery_tasks=10000,
                  mix_tasks=3000, lat_celery_s=5, beat_s=65, cont_s=30, profile_events=100000),
    "full": dict(events=1000000, py_events=200000, runs=5, scale_events=300000,
                 batch_list=[100, 1000, 10000, 100000], orgs_list=[1, 10, 20, 100, 1000],
                 slots_list=[1, 2, 4], c_conc=[1, 2, 4, 8], py_conc=[1, 2, 4],
                 celery_tasks=10000, mix_tasks=3000, lat_celery_s=15, beat_s=185, cont_s=90,
                 profile_events=300000),
}


class Bench:
    def __init__(self, a):
        self.a = a
        self.m = dict(MODES[a.mode])
        if a.runs:
            self.m["runs"] = a.runs
        if a.events:
            self.m["events"] = a.events
        if a.beat_s:
            self.m["beat_s"] = a.beat_s
        if a.cont_s:
            self.m["cont_s"] = a.cont_s
        self.out = a.out
        os.makedirs(self.out, exist_ok=True)
        self.bin = a.bin
        self.redis_serve = a.redis_serve
        self.redis_replay = a.redis_replay
        self.svc = B.Services()
        self.res = {"mode": a.mode, "params": self.m, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        self.dataset = None
        self.drain_ok = None
        self.workers = []

    # ---- setup --------------------------------------------------------------------

    def start(self):
        self.svc.start()
        import redis
        self.r0 = redis.Redis(port=self.svc.redis_port, db=0)
        self.r1 = redis.Redis(port=self.svc.redis_port, db=1)
        self.ch = B.CH(self.svc.ch_url)
        self.cfg = self.write_config("bench.cfg")
        rc = subprocess.run([self.bin, "schema", "apply", "--config", self.cfg],
                            capture_output=True, text=True)
        if rc.returncode != 0:
            raise RuntimeError("schema apply failed: " + rc.stdout + rc.stderr)
        self.res["machine"] = machine_facts(self.svc)

    def stop(self):
        for p in self.workers:
            if p.poll() is None:
                B.stop_pid(p.pid, 10)
        self.svc.stop()

    def write_config(self, name, **extra):
        port = self.svc.redis_port
        settings = {
            "broker_url": "redis://127.0.0.1:%d/1" % port,
            "result_backend": "redis://127.0.0.1:%d/1" % port,
            "telemetry_redis_url": "redis://127.0.0.1:%d/0" % port,
            "clickhouse_url": self.svc.ch_url,
            "task_track_started": True, "worker_prefetch_multiplier": 1,
            "accept_content": ["json"], "result_expires": 86400,
            "task_time_limit": 3600, "task_soft_time_limit": 3300,
        }
        settings.update(extra)
        path = os.path.join(self.svc.tmp, name)
        with open(path, "w") as f:
            for k, v in settings.items():
                f.write("%s = %r\n" % (k, v))
        return path

    # ---- data ---------------------------------------------------------------------

    def load(self, events, orgs=20, rows=False):
        key = (events, orgs, rows)
        if self.dataset and self.dataset[0] == key:
            return self.dataset[1]
        self.r0.flushdb()
        gen = G.Generator(seed=42, orgs=orgs)
        prefix = os.path.join(self.svc.tmp, "rows") if rows else None
        t0 = time.time()
        man = G.load(self.r0, gen, events, prefix)
        man["rows_prefix"] = prefix
        B.log("loaded %d events (%d entries, %d streams, %d invalid) in %.1fs"
              % (man["events"], man["entries"], man["streams"], man["invalid"], time.time() - t0))
        self.dataset = (key, man)
        return man

    def reset(self):
        """Make the loaded entries unread again and empty the table and DLQ."""
        pipe = self.r0.pipeline(transaction=False)
        for k in self.r0.scan_iter(match="product-telemetry:*:events", count=1000, _type="STREAM"):
            pipe.xgroup_destroy(k, G.GROUP)
        pipe.delete("product-telemetry:dlq")
        pipe.execute()
        self.ch.query("TRUNCATE TABLE %s" % TABLE)

    def rows_in_ch(self):
        return int(self.ch.scalar("SELECT count() FROM %s" % TABLE))

    # ---- contenders: telemetry ----------------------------------------------------

    def drain_available(self):
        if self.drain_ok is None:
            r = subprocess.run([self.bin, "drain", "--help"], capture_output=True, text=True)
            text = r.stdout + r.stderr
            self.drain_ok = "not available" not in text and "unknown command" not in text
            if not self.drain_ok:
                B.log("C drain: not available in this build (%s): drain rows stay pending"
                      % text.strip().splitlines()[0] if text.strip() else "")
        return self.drain_ok

    def run_c_drain(self, man, cfg=None, perf=None):
        if not self.drain_available():
            return None
        self.reset()
        argv = [self.bin, "drain", "--config", cfg or self.cfg, "--until-empty", "--json"]
        if perf:
            argv = perf + ["--"] + argv
        m = B.run_measured(argv, timeout=1800)
        j = B.last_json_line(m["out"])
        if m["rc"] != 0 or not j or "processed" not in j:
            B.log("C drain failed (rc %s): %s" % (m["rc"], m["out"][-600:]))
            return None
        rows = self.rows_in_ch()
        handled = man["events"]
        res = {"events_per_s": handled / m["wall"], "rows_per_s": rows / m["wall"],
               "wall": m["wall"], "cpu_s": m["user"] + m["sys"], "maxrss_kb": m["maxrss_kb"],
               "processed": j.get("processed"), "rows": rows, "report": j,
               "correct": rows == man["valid"]}
        res["cpu_us_per_event"] = res["cpu_s"] / handled * 1e6
        if not res["correct"]:
            B.log("C drain: %d rows in ClickHouse, expected %d" % (rows, man["valid"]))
        return res

    def run_py_consumer(self, man, max_events):
        self.reset()
        m = B.run_measured([B.PY, os.path.join(HERE, "baselines", "upstream_consumer.py"),
                            "--redis", "redis://127.0.0.1:%d/0" % self.svc.redis_port,
                            "--clickhouse", self.svc.ch_url, "--until-empty",
                            "--max-events", str(max_events)], timeout=3600)
        j = B.last_json_line(m["out"])
        if m["rc"] != 0 or not j:
            B.log("upstream consumer failed: " + m["out"][-600:])
            return None
        handled = j["processed"] + j["rejected"]
        return {"events_per_s": handled / j["seconds"], "rows_per_s": j["processed"] / j["seconds"],
                "maxrss_kb": m["maxrss_kb"], "cpu_us_per_event": (m["user"] + m["sys"]) / handled * 1e6,
                "events": handled}

    def run_ch_raw(self, man, fmt):
        self.ch.query("TRUNCATE TABLE %s" % TABLE)
        m = B.run_measured([B.PY, os.path.join(HERE, "baselines", "ch_ingest.py"),
                            "--clickhouse", self.svc.ch_url, "--rows", man["rows_prefix"],
                            "--format", fmt, "--batch", "50000", "--parallel", "2"])
        j = B.last_json_line(m["out"])
        if not j or "rows_per_s" not in j:
            B.log("ClickHouse raw ingest %s failed: %s" % (fmt, m["out"][-600:]))
            return None
        return j

    def run_redis_serve(self, man):
        self.reset()
        m = B.run_measured([self.redis_serve, "127.0.0.1", str(self.svc.redis_port), "500"])
        j = B.last_json_line(m["out"])
        if not j:
            B.log("redis_serve failed: " + m["out"][-400:])
            return None
        j["events_per_s"] = j["entries_per_s"] * man["events"] / man["entries"]
        return j

    # ---- workers ------------------------------------------------------------------

    def start_c_worker(self, conc, cfg=None, log_name="c-worker.log", extra=()):
        logf = open(os.path.join(self.svc.tmp, log_name), "wb")
        p = subprocess.Popen([self.bin, "worker", "--config", cfg or self.cfg, "-c", str(conc),
                              "-Q", "ingest", "-l", "info", *extra],
                             stdout=logf, stderr=subprocess.STDOUT)
        p.logpath = logf.name
        self.workers.append(p)
        return p

    def start_py_worker(self, pool, conc=1):
        env = dict(os.environ, BENCH_BROKER_URL="redis://127.0.0.1:%d/1" % self.svc.redis_port,
                   PYTHONPATH=os.path.join(HERE, "baselines"))
        argv = [B.PY, "-m", "celery", "-A", "celery_app", "worker", "-P", pool, "-Q", "ingest",
                "-l", "info", "-n", "bench-%s@%%h" % pool]
        if pool != "solo":
            argv += ["-c", str(conc)]
        logf = open(os.path.join(self.svc.tmp, "py-worker-%s-%d.log" % (pool, conc)), "wb")
        p = subprocess.Popen(argv, env=env, cwd=os.path.join(HERE, "baselines"), stdout=logf,
                             stderr=subprocess.STDOUT)
        p.logpath = logf.name
        self.workers.append(p)
        return p

    def stop_worker(self, p):
        B.stop_pid(p.pid, 30)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def template(self):
        if not hasattr(self, "_tpl"):
            self.r1.flushdb()
            self._tpl = CL.Cloner(CL.make_template("redis://127.0.0.1:%d/1" % self.svc.redis_port,
                                                   self.r1))
        return self._tpl

    def celery_throughput(self, kind, conc):
        """tasks/s from 10% to 90% of a preloaded queue."""
        cl = self.template()
        self.r1.flushdb()
        n = self.m["celery_tasks"]
        ids = CL.preload(self.r1, cl, n)
        self.r1.config_resetstat()
        redis_cpu0 = B.proc_cpu_s(self.svc.redis_pid)
        if kind == "c":
            p = self.start_c_worker(conc)
        else:
            p = self.start_py_worker(kind, conc)
        rate = CL.wait_queue_window(self.r1, n, timeout=300)
        ok, _ = CL.wait_results(self.r1, ids, timeout=120)
        worker_cpu = B.proc_cpu_s(p.pid)
        redis_cpu = B.proc_cpu_s(self.svc.redis_pid) - redis_cpu0
        stats = self.r1.info("commandstats")
        self.stop_worker(p)
        calls = {k.replace("cmdstat_", ""): v["calls"] for k, v in stats.items()}
        # What one task costs the server: commands and Redis CPU (the template
        # LPUSHes and our polling are excluded from the per-task figures).
        ours = calls.get("lpush", 0) + calls.get("llen", 0) + calls.get("mget", 0) + \
            calls.get("config|resetstat", 0) + calls.get("info", 0)
        self.res.setdefault("celery_cost", {}).setdefault("%s-%d" % (kind, conc), []).append({
            "redis_cmds_per_task": (sum(calls.values()) - ours) / n,
            "redis_cpu_us_per_task": redis_cpu / n * 1e6,
            "worker_cpu_us_per_task": worker_cpu / n * 1e6 if kind in ("c", "solo") else None,
            "commands": {k: round(v / n, 2) for k, v in sorted(calls.items())}})
        if ok != n:
            B.log("celery %s -c %d: only %d/%d SUCCESS" % (kind, conc, ok, n))
        return rate if ok == n else None

    # ---- Redis limit: the C worker's command mix, captured and replayed -----------

    def mix_capture(self, n):
        """The C worker -c 2 over n preloaded ptel.ping messages under MONITOR.

        Capture ends at a marker ECHO sent once every result is SUCCESS and
        the queue and the unacked hash are empty (the last acks are in)."""
        import redis
        cl = self.template()
        self.r1.flushdb()
        made = [cl.clone() for _ in range(n)]
        ids, raws = [t for t, _ in made], [raw for _, raw in made]
        MX.preload(self.r1, raws, CL.QUEUE)
        poll = redis.Redis(port=self.svc.redis_port, db=1, single_connection_client=True)
        mon = MX.Monitor("127.0.0.1", self.svc.redis_port)
        mon.start()
        foreign = {c["addr"] for c in poll.client_list()}   # ours: loader, poller, MONITOR
        p = self.start_c_worker(2, log_name="mix-capture.log")
        ok, _ = CL.wait_results(poll, ids, timeout=120)
        end = time.time() + 30
        while (poll.hlen(MX.UNACKED) or poll.llen(CL.QUEUE)) and time.time() < end:
            time.sleep(0.01)
        poll.echo(MX.MARKER)
        stopped = mon.stop_at(MX.MARKER)
        values = MX.results(poll, ids)
        self.stop_worker(p)
        poll.close()
        if ok != n or not stopped:
            B.log("mix capture: %d/%d SUCCESS, marker seen: %s" % (ok, n, stopped))
            return None
        lines = mon.captured()
        cmds = MX.worker_commands(lines, foreign)
        loads, window = MX.split_setup(cmds, MX.FETCH_KEY)
        replay, dropped = MX.replayable(window)
        return {"ids": ids, "raws": raws, "values": values, "loads": loads, "replay": replay,
                "dropped": dropped, "worker_conns": len({a for _, a, _ in cmds}),
                "monitor_lines": len(lines),
                "lua_cmds": sum(1 for l in lines if b" lua] " in l[:40])}

    def mix_replay(self, cap, path, kinds_out=None):
        """Fresh db 1 with the same messages in the same order, the scripts
        loaded, then redis_replay over `path`. Returns its JSON (+ checks)."""
        self.r1.flushdb()
        MX.preload(self.r1, cap["raws"], CL.QUEUE)
        for args in cap["loads"]:
            self.r1.execute_command(*args)
        argv = [self.redis_replay, "127.0.0.1", str(self.svc.redis_port), path, "1000"]
        m = B.run_measured(argv + ([kinds_out] if kinds_out else []), timeout=300)
        j = B.last_json_line(m["out"])
        if m["rc"] != 0 or not j:
            B.log("redis_replay failed: " + m["out"][-400:])
            return None
        j["same_results"] = MX.results(self.r1, cap["ids"]) == cap["values"]
        j["left"] = {"queue": self.r1.llen(CL.QUEUE), "unacked": self.r1.hlen(MX.UNACKED)}
        j["meta_keys"] = sum(1 for _ in self.r1.scan_iter(match="celery-task-meta-*", count=1000))
        return j

    def celery_mix_limit(self, n, repeats=5):
        """Redis alone serving the C worker's per-task commands: tasks/s."""
        cap = self.mix_capture(n)
        if not cap:
            return None
        full = os.path.join(self.svc.tmp, "mix-full.cmds")
        MX.write_replay(full, cap["replay"])
        kinds_path = os.path.join(self.svc.tmp, "mix-kinds.txt")
        probe = self.mix_replay(cap, full, kinds_path)
        if not probe:
            return None
        kinds = open(kinds_path).read().split()
        cmds, idle, fetched = MX.trim_idle_fetches(cap["replay"], kinds, MX.FETCH_KEY)
        execs, hit = MX.acks_hit(cap["replay"], kinds)
        path = os.path.join(self.svc.tmp, "mix.cmds")
        MX.write_replay(path, cmds)
        reps = [self.mix_replay(cap, path) for _ in range(repeats)]
        if not all(reps):
            return None
        best = sorted(reps, key=lambda j: j["seconds"])[len(reps) // 2]   # median
        sane = fetched == n and 0 < hit == execs and all(j["same_results"] and j["errors"] == 0 and j["meta_keys"] == n
                                    and not any(j["left"].values()) for j in reps + [probe])
        if not sane:
            B.log("mix replay differs from the real run: %s" % ([probe] + reps,))
        values = [json.loads(v) for v in cap["values"]]
        return {"tasks": n, "tasks_per_s": n / best["seconds"] if sane else None,
                "seconds": best["seconds"], "commands": len(cmds),
                "commands_per_task": len(cmds) / n,
                "redis_cpu_us_per_task": best["redis_cpu_s"] / n * 1e6,
                "client_cpu_share": best["client_cpu_s"] / best["seconds"],
                "idle_fetches_dropped": idle, "fetched": fetched, "acks": execs, "acks_hit": hit,
                "dropped": cap["dropped"],
                "setup_script_loads": len(cap["loads"]), "worker_conns": cap["worker_conns"],
                # cross-check with the throughput run's commandstats (which count Lua's calls)
                "captured_cmds_per_task": (len(cap["replay"]) + cap["lua_cmds"]) / n,
                "all_success": all(v["status"] == "SUCCESS" for v in values),
                "faithful": sane, "replays": reps, "probe": probe,
                "mix": MX.command_mix(cmds, n)}

    def celery_latency(self, kind, conc, rate):
        cl = self.template()
        self.r1.flushdb()
        p = self.start_c_worker(conc) if kind == "c" else self.start_py_worker(kind, conc)
        if not wait_ready(p, 30):
            B.log("worker did not log ready")
        sent = CL.paced(self.r1, cl, rate, self.m["lat_celery_s"])
        ids = [t for t, _ in sent]
        ok, metas = CL.wait_results(self.r1, ids, timeout=120)
        self.stop_worker(p)
        lat = CL.latencies(metas, sent)
        if not lat:
            return None
        return {"rate": rate, "n": len(lat), "p50_ms": B.percentile(lat, 50) * 1e3,
                "p99_ms": B.percentile(lat, 99) * 1e3}

    def drain_via_tasks(self, man, slots, cfg=None):
        """Drain with `slots` parallel drain tasks in a worker -c slots."""
        if not self.drain_available():
            return None
        self.reset()
        self.r1.flushdb()
        # A task's run ends with one XREADGROUP ... BLOCK telemetry_block_ms
        # that finds nothing; at the 1 s default that wait would be most of a
        # 1-2 s run, so the throughput runs use 50 ms.
        cfg = cfg or self.write_config("task-drain.cfg", telemetry_block_ms=50)
        p = self.start_c_worker(slots, cfg=cfg)
        wait_ready(p, 30)
        os.environ["BENCH_BROKER_URL"] = "redis://127.0.0.1:%d/1" % self.svc.redis_port
        import celery_app
        celery_app.app.conf.broker_url = celery_app.app.conf.result_backend = \
            "redis://127.0.0.1:%d/1" % self.svc.redis_port
        cpu0 = B.proc_cpu_s(p.pid)
        sampler = B.RssSampler(p.pid)
        sampler.start()
        t0 = time.time()
        ids = [celery_app.app.send_task(DRAIN_TASK, kwargs={"max_iterations": 1000000},
                                        queue="ingest").id for _ in range(slots)]
        ok, metas = CL.wait_results(self.r1, ids, timeout=1800)
        cpu = B.proc_cpu_s(p.pid) - cpu0
        sampler.stop()
        self.stop_worker(p)
        if ok != len(ids):
            B.log("drain tasks: %d/%d SUCCESS: %s" % (ok, len(ids), metas))
            return None
        t_end = max(CL.date_done_epoch(m["date_done"]) for m in metas)
        processed = sum((m.get("result") or {}).get("processed", 0) for m in metas)
        rows = self.rows_in_ch()
        if processed == 0:
            B.log("drain task processed nothing: the task is a stub in this build")
            return None
        return {"events_per_s": man["events"] / (t_end - t0), "rows": rows, "processed": processed,
                "wall": t_end - t0, "cpu_s": cpu, "peak_rss_kb": sampler.peak_kb,
                "correct": rows == man["valid"]}

    # ---- sections -----------------------------------------------------------------

    def sec_drain(self):
        man = self.load(self.m["events"], rows=True)
        runs = {k: [] for k in ("c", "c_task", "py", "ch_rb", "ch_json", "redis")}
        for i in range(self.m["runs"]):
            B.log("drain run %d/%d" % (i + 1, self.m["runs"]))
            runs["redis"].append(self.run_redis_serve(man))
            runs["ch_rb"].append(self.run_ch_raw(man, "RowBinary"))
            runs["ch_json"].append(self.run_ch_raw(man, "JSONEachRow"))
            runs["c"].append(self.run_c_drain(man))
            runs["c_task"].append(self.drain_via_tasks(man, 1))
            runs["py"].append(self.run_py_consumer(man, self.m["py_events"]))
            B.log("  " + " ".join("%s=%s" % (k, B.fmt_num((v[-1] or {}).get(
                "events_per_s", (v[-1] or {}).get("rows_per_s")))) for k, v in runs.items()))
        self.res["drain"] = {"manifest": {k: v for k, v in man.items() if k != "rows_prefix"},
                             "runs": runs}

    def sec_profile(self):
        man = self.load(self.m["profile_events"])
        perf_ok = subprocess.run(["perf", "stat", "-e", "task-clock", "true"],
                                 capture_output=True).returncode == 0
        out = {}
        if perf_ok:
            data = os.path.join(self.svc.tmp, "perf.data")
            r = self.run_c_drain(man, perf=["perf", "record", "-F", "1999", "--call-graph",
                                            "dwarf,16384", "-o", data])
            if r:
                callers = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                                          "--sort", "symbol", "--percent-limit", "2",
                                          "-g", "caller,0.5,callee,function,percent",
                                          "--max-stack", "12"],
                                         capture_output=True, text=True).stdout
                open(os.path.join(self.out, "profile-perf-callers.txt"), "w").write(callers)
                rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                                      "--sort", "dso,symbol", "--percent-limit", "0.7", "-g", "none"],
                                     capture_output=True, text=True).stdout
                path = os.path.join(self.out, "profile-perf.txt")
                open(path, "w").write(rep)
                out["perf"] = {"file": os.path.basename(path), "top": perf_top(rep, 25)}
            # System-wide view: who burns the machine during a drain.
            data2 = os.path.join(self.svc.tmp, "perf-all.data")
            self.reset()
            rec = subprocess.Popen(["perf", "record", "-a", "-F", "499", "-o", data2],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            r2 = self.run_c_drain(man)
            rec.send_signal(signal.SIGINT)
            rec.wait(30)
            if r2:
                rep = subprocess.run(["perf", "report", "-i", data2, "--no-children", "--stdio",
                                      "--sort", "comm", "--percent-limit", "0.5"],
                                     capture_output=True, text=True).stdout
                path = os.path.join(self.out, "profile-system.txt")
                open(path, "w").write(rep)
                out["system"] = {"file": os.path.basename(path), "top": perf_top(rep, 10)}
            # The same for the Celery path: ptel.ping at full speed, -c 2.
            data3 = os.path.join(self.svc.tmp, "perf-celery.data")
            rec = subprocess.Popen(["perf", "record", "-a", "-F", "499", "-o", data3],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            self.celery_throughput("c", 2)
            rec.send_signal(signal.SIGINT)
            rec.wait(30)
            rep = subprocess.run(["perf", "report", "-i", data3, "--no-children", "--stdio",
                                  "--sort", "comm,dso", "--percent-limit", "1"],
                                 capture_output=True, text=True).stdout
            path = os.path.join(self.out, "profile-celery-system.txt")
            open(path, "w").write(rep)
            out["celery_system"] = {"file": os.path.basename(path), "top": perf_top(rep, 15)}
        else:
            small = self.load(20000)
            cg = os.path.join(self.out, "callgrind.out")
            r = self.run_c_drain(small, perf=["valgrind", "--tool=callgrind",
                                              "--callgrind-out-file=" + cg])
            if r:
                rep = subprocess.run(["callgrind_annotate", cg], capture_output=True, text=True).stdout
                open(os.path.join(self.out, "profile-callgrind.txt"), "w").write(rep)
                out["callgrind"] = {"file": "profile-callgrind.txt", "top": rep.splitlines()[:40]}
        self.res["profile"] = out

    def sec_celery(self):
        runs = {"py_solo": [], "py_prefork2": [], "c2": []}
        mix = []
        for i in range(self.m["runs"]):
            B.log("celery run %d/%d" % (i + 1, self.m["runs"]))
            runs["py_solo"].append(self.celery_throughput("solo", 1))
            runs["py_prefork2"].append(self.celery_throughput("prefork", 2))
            runs["c2"].append(self.celery_throughput("c", 2))
            mix.append(self.celery_mix_limit(self.m["mix_tasks"]))
            B.log("  solo=%s prefork2=%s c2=%s redis-mix=%s"
                  % (tuple(B.fmt_num(v[-1]) for v in runs.values())
                     + (B.fmt_num((mix[-1] or {}).get("tasks_per_s")),)))
        lat = {}
        c = B.summary(runs["c2"])
        s = B.summary(runs["py_solo"])
        if c:
            lat["c2"] = self.celery_latency("c", 2, c["median"] * 0.5)
        if s:
            lat["py_solo"] = self.celery_latency("solo", 1, s["median"] * 0.5)
        self.res["celery"] = {"runs": runs, "latency": lat, "redis_mix": mix}

    def sec_footprint(self):
        self.r1.flushdb()
        starts, idle = [], []
        for i in range(5):
            t0 = time.perf_counter()
            # Start-up is measured without mingle's 1 s wait for other
            # workers' replies (Celery's own --without-mingle): the target is
            # the worker's own start, not a protocol timeout.
            p = self.start_c_worker(2, log_name="footprint.log", extra=("--without-mingle",))
            t = wait_ready(p, 10)
            if t:
                starts.append(t - t0)
                time.sleep(2)
                idle.append(B.rss_kb(p.pid))
            self.stop_worker(p)
        py = self.start_py_worker("prefork", 2)
        wait_ready(py, 30)
        time.sleep(2)
        py_idle = tree_rss_kb(py.pid)
        self.stop_worker(py)
        py = self.start_py_worker("solo", 1)
        wait_ready(py, 30)
        time.sleep(2)
        py_solo_idle = tree_rss_kb(py.pid)
        self.stop_worker(py)
        self.res["footprint"] = {"startup_s": starts, "idle_rss_kb": idle,
                                 "py_prefork2_idle_rss_kb": py_idle,
                                 "py_solo_idle_rss_kb": py_solo_idle}

    def sec_scaling(self):
        sc = {}
        man = self.load(self.m["scale_events"])
        if self.drain_available():
            pts = []
            for b in self.m["batch_list"]:
                cfg = self.write_config("batch.cfg", telemetry_batch_max_rows=b)
                r = self.run_c_drain(man, cfg=cfg)
                pts.append((b, r and r["events_per_s"]))
            sc["batch"] = pts
            pts = []
            for n in self.m["slots_list"]:
                r = self.drain_via_tasks(man, n)
                pts.append((n, r and r["events_per_s"]))
            sc["slots"] = pts
            pts = []
            for o in self.m["orgs_list"]:
                m2 = self.load(self.m["scale_events"], orgs=o)
                r = self.run_c_drain(m2)
                pts.append((m2["streams"], r and r["events_per_s"]))
            sc["streams"] = pts
        pts = []
        for c in self.m["c_conc"]:
            pts.append((c, self.celery_throughput("c", c)))
        sc["celery_c"] = pts
        pts = []
        for c in self.m["py_conc"]:
            pts.append((c, self.celery_throughput("prefork", c)))
        sc["celery_py"] = pts
        self.res["scaling"] = sc
        plots(self.out, sc)

    def sec_latency(self):
        out = {}
        if not self.drain_available():
            self.res["latency"] = out
            return
        for mode, dur in (("beat", self.m["beat_s"]), ("continuous", self.m["cont_s"])):
            B.log("latency: %s drain, %d s at 10k events/s" % (mode, dur))
            out[mode] = self.latency_run(mode, dur)
            B.log("  %s" % {k: v for k, v in (out[mode] or {}).items() if k != "poll_trace"})
        self.res["latency"] = out

    def latency_run(self, mode, duration, rate=10000):
        self.r0.flushdb()
        self.r1.flushdb()
        self.dataset = None
        self.ch.query("TRUNCATE TABLE %s" % TABLE)
        os.environ["BENCH_BROKER_URL"] = "redis://127.0.0.1:%d/1" % self.svc.redis_port
        import celery_app
        app = celery_app.app
        app.conf.broker_url = app.conf.result_backend = os.environ["BENCH_BROKER_URL"]
        p = self.start_c_worker(2, log_name="latency-%s.log" % mode)
        wait_ready(p, 30)
        gen = G.Generator(seed=7, orgs=20)
        # Steady state: the org streams and the group exist before the clock
        # starts (a drain discovers streams at start and then only every
        # telemetry_stream_refresh_s, so a stream born mid-run waits for that).
        for org in gen.orgs:
            self.r0.xgroup_create(G.stream_key(org), G.GROUP, id="0", mkstream=True)
        send = {}   # seq -> send time (valid events only)
        state = {"done": False, "max_seq": 0}

        def on_entry(t, first, n, flags):
            for i, ok in enumerate(flags):
                if ok:
                    send[first + i] = t
            state["max_seq"] = first + n

        import redis
        rp = redis.Redis(port=self.svc.redis_port, db=0)

        def producer():
            G.produce_paced(rp, gen, rate, duration, on_entry)
            state["done"] = True

        th = threading.Thread(target=producer, daemon=True)
        loop = None
        if mode == "continuous":
            # A drain run ends at its first empty read (after telemetry_block_ms),
            # so "continuously running" = `ptel-worker drain` restarted as soon
            # as it exits, for as long as the measurement lasts.
            def drain_loop():
                while not state.get("stop"):
                    subprocess.run([self.bin, "drain", "--config", self.cfg, "--max-iterations",
                                    "1000000000", "--json"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            loop = threading.Thread(target=drain_loop, daemon=True)
            loop.start()
        th.start()
        seen = {}
        polls = []
        t_start = time.time()
        lo = 0
        next_beat = time.time()
        t_end_max = time.time() + duration + 120
        ch = B.CH(self.svc.ch_url)
        while time.time() < t_end_max:
            if mode == "beat" and time.time() >= next_beat:
                app.send_task(DRAIN_TASK, kwargs={"max_iterations": 50}, queue="ingest",
                              expires=30)
                next_beat += 30
            tq = time.time()
            txt = ch.query("SELECT event_id FROM %s WHERE event_id >= 'evt_%016d' FORMAT TSV"
                           % (TABLE, lo))
            now = time.time()
            polls.append((round(tq - t_start, 2), round(now - tq, 3), txt.count("\n"), len(seen), lo,
                          state["max_seq"]))
            for line in txt.split():
                s = int(line[4:])
                if s not in seen:
                    seen[s] = now
            # Skip ids seen and ids of invalid events (below max_seq, never in send).
            while lo < state["max_seq"] and (lo in seen or lo not in send):
                lo += 1
            if state["done"] and len(seen) >= len(send):
                break
            time.sleep(0.2)
        th.join()
        state["stop"] = True
        if loop:
            loop.join(30)
        self.stop_worker(p)
        delays = sorted(seen[s] - send[s] for s in send if s in seen)
        if not delays:
            return None
        return {"events": len(send), "visible": len(delays),
                "p50_s": B.percentile(delays, 50), "p99_s": B.percentile(delays, 99),
                "max_s": delays[-1], "polls": len(polls),
                "max_poll_s": max(p[1] for p in polls), "poll_trace": polls[::10]}

    # ---- output -------------------------------------------------------------------

    def finish(self):
        self.res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.res, f, indent=1, default=str)
        md = render(self.res, self.a)
        with open(os.path.join(self.out, "table.md"), "w") as f:
            f.write(md)
        print(md)
        if self.a.update_md:
            update_md(self.a.update_md, md)


# ---- helpers ------------------------------------------------------------------------

def wait_ready(p, timeout):
    """Time (perf_counter) when the worker's log shows ' ready.', else None."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            with open(p.logpath, "rb") as f:
                if b" ready." in f.read():
                    return time.perf_counter()
        except OSError:
            pass
        if p.poll() is not None:
            return None
        time.sleep(0.001)
    return None


def tree_rss_kb(pid):
    total = B.rss_kb(pid)
    try:
        kids = open("/proc/%d/task/%d/children" % (pid, pid)).read().split()
    except OSError:
        kids = []
    return total + sum(tree_rss_kb(int(k)) for k in kids)


def perf_top(rep, n):
    lines = [l for l in rep.splitlines() if l.strip() and not l.startswith("#")]
    return lines[:n]


def machine_facts(svc):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    return {
        "cpu": sh("lscpu | sed -n 's/^Model name: *//p' | head -1"),
        "cores": os.cpu_count(),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
        "kernel": platform.release(),
        "os": sh(". /etc/os-release; echo $PRETTY_NAME"),
        "redis": sh("redis-server --version | sed 's/.*v=\\([^ ]*\\).*/\\1/'"),
        "clickhouse": B.CH(svc.ch_url).scalar("SELECT version()"),
        "python": platform.python_version(),
        "celery": sh(B.PY + " -c 'import celery,kombu,redis;print(celery.__version__,kombu.__version__,redis.__version__)'"),
        "cc": sh("cc --version | head -1"),
        "load_at_start": open("/proc/loadavg").read().split()[:3],
    }


def plots(out, sc):
    if not shutil.which("gnuplot"):
        B.log("gnuplot not installed: plots skipped (apt-get install -y gnuplot-nox)")
    specs = [("batch", "drain-vs-batch", "telemetry\\_batch\\_max\\_rows", "events/s", True),
             ("streams", "drain-vs-streams", "streams (orgs)", "events/s", True),
             ("slots", "drain-vs-slots", "worker slots (-c, one drain task each)", "events/s", False),
             ("celery_c", "celery-vs-concurrency", "-c", "ptel.ping tasks/s", True)]
    for key, name, xl, yl, logx in specs:
        pts = sc.get(key)
        if not pts:
            continue
        dat = os.path.join(out, name + ".dat")
        with open(dat, "w") as f:
            f.write("# %s\t%s\n" % (xl.replace("\\", ""), yl))
            for x, y in pts:
                f.write("%s\t%s\n" % (x, "%.1f" % y if y else "NaN"))
        extra = ""
        if key == "celery_c" and sc.get("celery_py"):
            dat2 = os.path.join(out, "celery-py-vs-concurrency.dat")
            with open(dat2, "w") as f:
                f.write("# -c\tpython prefork tasks/s\n")
                for x, y in sc["celery_py"]:
                    f.write("%s\t%s\n" % (x, "%.1f" % y if y else "NaN"))
            extra = ", '%s' using 1:2 with linespoints title 'Python celery prefork'" % dat2
        if not shutil.which("gnuplot"):
            continue
        gp = ("set terminal png size 800,500; set output '%s';"
              "set grid; set xlabel '%s'; set ylabel '%s'; %s set yrange [0:*];"
              "plot '%s' using 1:2 with linespoints title 'ptel-worker'%s"
              % (os.path.join(out, name + ".png"), xl, yl, "set logscale x;" if logx else "",
                 dat, extra))
        subprocess.run(["gnuplot", "-e", gp])


def ratio(a, b):
    return a / b if a and b else None


def per_run(runs, key_a, key_b, f_a, f_b):
    out = []
    for x, y in zip(runs[key_a], runs[key_b]):
        out.append(ratio(f_a(x), f_b(y)) if x and y else None)
    return B.summary(out)


def verdict(value, target, higher=True):
    if value is None:
        return "pending"
    ok = value >= target if higher else value <= target
    return "met" if ok else "not met"


def render(res, a):
    L = []
    m = res.get("machine", {})
    L.append("Mode: **%s** (%s runs per figure; median (min–max)); started %s, finished %s."
             % (res["mode"], res["params"]["runs"], res.get("started"), res.get("finished")))
    if res.get("loadavg"):
        L.append("Load average (1 min) at the start of each section, from other jobs on this shared "
                 "2-core machine: " + ", ".join("%s %.1f" % (k, v[0]) for k, v in res["loadavg"].items()) + ".")
    L.append("")
    L.append("| figure | value | target | ratio / verdict |")
    L.append("|---|---|---|---|")
    d = res.get("drain")
    ev = lambda k: (lambda r: r and r.get(k))  # noqa: E731
    if d:
        runs = d["runs"]
        man = d["manifest"]
        s = lambda k, f: B.summary([f(r) if r else None for r in runs[k]])  # noqa: E731
        c = s("c", lambda r: r["events_per_s"])
        ct = s("c_task", lambda r: r["events_per_s"])
        py = s("py", lambda r: r["events_per_s"])
        L.append("| data set | %d events in %d entries, %d streams, %d invalid (%.1f MB of events JSON) | | |"
                 % (man["events"], man["entries"], man["streams"], man["invalid"], man["bytes"] / 1e6))
        L.append("| upstream Python consumer, events/s (first %d events) | %s | baseline | |"
                 % (res["params"]["py_events"], B.fmt_summary(py)))
        L.append("| C drain (`ptel-worker drain --until-empty`), events/s | %s | ≥ 40× Python | %s |"
                 % (B.fmt_summary(c), fmt_ratio(per_run(runs, "c", "py", ev("events_per_s"), ev("events_per_s")), 40)))
        L.append("| C drain as Celery task (-c 1), events/s | %s | | %s |"
                 % (B.fmt_summary(ct), fmt_ratio(per_run(runs, "c_task", "py", ev("events_per_s"), ev("events_per_s")), 40)))
        rb = s("ch_rb", lambda r: r["rows_per_s"])
        js = s("ch_json", lambda r: r["rows_per_s"])
        L.append("| ClickHouse raw ingest RowBinary (2 inserters, 50k rows/batch), rows/s | %s | limit | |" % B.fmt_summary(rb))
        L.append("| ClickHouse raw ingest JSONEachRow (same), rows/s | %s | limit | |" % B.fmt_summary(js))
        best = {k: [max(x["rows_per_s"], y["rows_per_s"]) if x and y else None
                    for x, y in zip(runs["ch_rb"], runs["ch_json"])] for k in ["best"]}
        rr = B.summary([ratio(cr["rows_per_s"], b) if cr and b else None
                        for cr, b in zip(runs["c"], best["best"])])
        L.append("| C drain rows/s vs faster raw ingest | %s | ≥ 70%% | %s |"
                 % (B.fmt_summary(s("c", lambda r: r["rows_per_s"])),
                    "%s → %s" % (B.fmt_summary(rr, "%", 100), verdict(rr and rr["median"], 0.7))))
        L.append("| Redis serving the entries (XREADGROUP COUNT 500 + XACK, C/hiredis), events/s | %s | limit | |"
                 % B.fmt_summary(s("redis", lambda r: r["events_per_s"])))
        cpu = s("c", lambda r: r["cpu_us_per_event"])
        L.append("| C drain CPU (user+sys) per event | %s | ≤ 1 µs | %s |"
                 % (B.fmt_summary(cpu, " µs"), verdict(cpu and cpu["median"], 1.0, False)))
        pycpu = s("py", lambda r: r["cpu_us_per_event"])
        L.append("| upstream Python consumer CPU per event (its process only) | %s | | |" % B.fmt_summary(pycpu, " µs"))
        rss = s("c", lambda r: r["maxrss_kb"] / 1024)
        L.append("| C drain peak RSS | %s | ≤ 64 MB | %s |" % (B.fmt_summary(rss, " MB"), verdict(rss and rss["median"], 64, False)))
        trss = s("c_task", lambda r: r["peak_rss_kb"] / 1024)
        L.append("| C worker peak RSS while draining (task, -c 1) | %s | ≤ 64 MB | %s |" % (B.fmt_summary(trss, " MB"), verdict(trss and trss["median"], 64, False)))
        L.append("| upstream Python consumer peak RSS | %s | | |" % B.fmt_summary(s("py", lambda r: r["maxrss_kb"] / 1024), " MB"))
        ok = [r["correct"] for r in runs["c"] if r]
        L.append("| C drain rows == valid events, every run | %s | | |" % ("yes" if ok and all(ok) else ("no" if ok else "pending")))
    c = res.get("celery")
    if c:
        runs = c["runs"]
        solo, pf, c2 = (B.summary(runs[k]) for k in ("py_solo", "py_prefork2", "c2"))
        L.append("| Python Celery -P solo, ptel.ping tasks/s (10k preloaded, 10%%→90%%) | %s | baseline | |" % B.fmt_summary(solo))
        L.append("| Python Celery -P prefork -c 2, tasks/s | %s | | |" % B.fmt_summary(pf))
        rs = B.summary([ratio(x, y) for x, y in zip(runs["c2"], runs["py_solo"])])
        L.append("| C worker -c 2, tasks/s | %s | ≥ 20,000 and ≥ 25× solo | %s; %s |"
                 % (B.fmt_summary(c2), verdict(c2 and c2["median"], 20000), fmt_ratio(rs, 25)))
        for k, label in (("c-2", "C worker -c 2"), ("solo-1", "Python solo")):
            costs = res.get("celery_cost", {}).get(k)
            if costs:
                cc = costs[0]
                L.append("| %s cost per task: Redis commands / Redis CPU / worker CPU | %.1f / %.0f µs / %s | | |"
                         % (label, cc["redis_cmds_per_task"], cc["redis_cpu_us_per_task"],
                            "%.0f µs" % cc["worker_cpu_us_per_task"] if cc["worker_cpu_us_per_task"] else "n/a"))
        render_mix(L, c.get("redis_mix"), runs["c2"])
        for k, label in (("c2", "C worker -c 2"), ("py_solo", "Python solo")):
            l = c["latency"].get(k)
            if l:
                L.append("| %s enqueue→SUCCESS stored at 50%% load (%.0f tasks/s) p50 / p99 | %.2f / %.2f ms | | |"
                         % (label, l["rate"], l["p50_ms"], l["p99_ms"]))
    f = res.get("footprint")
    if f:
        st = B.summary(f["startup_s"])
        idle = B.summary(f["idle_rss_kb"])
        L.append("| C worker start-up to \" ready.\" with --without-mingle (5 starts) | %s | ≤ 50 ms | %s |"
                 % (B.fmt_summary(st, " ms", 1000), verdict(st and st["median"], 0.05, False)))
        L.append("| C worker idle RSS (-c 2) | %s | ≤ 16 MB | %s |"
                 % (B.fmt_summary(idle, " MB", 1 / 1024), verdict(idle and idle["median"] / 1024, 16, False)))
        L.append("| Python Celery idle RSS, solo / prefork -c 2 (all processes) | %.0f / %.0f MB | | |"
                 % (f["py_solo_idle_rss_kb"] / 1024, f["py_prefork2_idle_rss_kb"] / 1024))
    lat = res.get("latency")
    if lat is not None:
        for k, label in (("beat", "beat-like trigger every 30 s (max_iterations=50)"),
                         ("continuous", "continuously running drain")):
            l = lat.get(k)
            L.append("| XADD→row visible at 10k events/s, %s: p50 / p99 | %s | | |"
                     % (label, "%.2f / %.2f s (%d events)" % (l["p50_s"], l["p99_s"], l["visible"]) if l else "pending"))
    sc = res.get("scaling")
    if sc:
        L.append("")
        L.append("Scaling (one run each; plots and data in bench/results/):")
        L.append("")
        for key, label in (("batch", "drain events/s vs telemetry_batch_max_rows"),
                           ("streams", "drain events/s vs streams"),
                           ("slots", "drain events/s vs worker slots"),
                           ("celery_c", "C ptel.ping tasks/s vs -c"),
                           ("celery_py", "Python prefork tasks/s vs -c")):
            if sc.get(key):
                L.append("- %s: %s" % (label, ", ".join("%s → %s" % (x, B.fmt_num(y) if y else "pending")
                                                         for x, y in sc[key])))
    L.append("")
    return "\n".join(L) + "\n"


def render_mix(L, mix, c2):
    """Rows for the Redis command-mix limit and the C worker's share of it."""
    if mix is None:
        return
    lim = B.summary([r and r["tasks_per_s"] for r in mix])
    L.append("| Redis serving the C worker's command mix per ptel.ping task, pipelined "
             "(capture+replay), tasks/s | %s | limit | |" % B.fmt_summary(lim))
    share = B.summary([ratio(x, r and r["tasks_per_s"]) for x, r in zip(c2, mix)])
    L.append("| C worker -c 2 vs that limit | %s | | |" % B.fmt_summary(share, "%", 100))
    ok = [r for r in mix if r]
    if ok:
        L.append("| that replay per task: Redis commands / Redis CPU (replay all SUCCESS, same results: %s) "
                 "| %.2f / %.1f µs | | |"
                 % ("yes" if all(r["faithful"] for r in ok) else "no",
                    B.summary([r["commands_per_task"] for r in ok])["median"],
                    B.summary([r["redis_cpu_us_per_task"] for r in ok])["median"]))


def fmt_ratio(s, target):
    if not s:
        return "pending"
    return "%s× (%s–%s) → %s" % (B.fmt_num(s["median"]), B.fmt_num(s["min"]), B.fmt_num(s["max"]),
                                  verdict(s["median"], target))


def update_md(path, md):
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    text = open(path).read() if os.path.exists(path) else begin + "\n" + end + "\n"
    if begin not in text:
        text += "\n" + begin + "\n" + end + "\n"
    pre, rest = text.split(begin, 1)
    post = rest.split(end, 1)[1]
    open(path, "w").write(pre + begin + "\n" + md + end + post)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=list(MODES), default="quick")
    ap.add_argument("--runs", type=int, default=0)
    ap.add_argument("--events", type=int, default=0)
    ap.add_argument("--beat-s", type=int, default=0)
    ap.add_argument("--cont-s", type=int, default=0)
    ap.add_argument("--sections", default="drain,profile,celery,footprint,scaling,latency")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--bin", required=True)
    ap.add_argument("--redis-serve", required=True)
    ap.add_argument("--redis-replay", required=True)
    ap.add_argument("--update-md", default=None)
    a = ap.parse_args()
    b = Bench(a)
    t0 = time.time()
    try:
        b.start()
        for sec in a.sections.split(","):
            B.log("== %s == (load average %.2f %.2f %.2f)" % ((sec,) + os.getloadavg()))
            b.res.setdefault("loadavg", {})[sec] = os.getloadavg()
            ts = time.time()
            try:
                getattr(b, "sec_" + sec)()
            except Exception as e:  # a broken section must not lose the others
                import traceback
                traceback.print_exc()
                b.res.setdefault("errors", {})[sec] = repr(e)
            B.log("== %s done in %.0f s ==" % (sec, time.time() - ts))
    finally:
        b.res["total_s"] = round(time.time() - t0)
        b.finish()          # results first: removing the servers' files can be slow
        b.stop()


if __name__ == "__main__":
    sys.exit(main())
