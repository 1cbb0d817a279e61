#!/usr/bin/python3
"""pgbench -S through pgshard with 2 replicas vs PgBouncer on the primary only.

The lab (`pgshardctl lab up --no-proxy`, data in /tmp/pgshard-bench-replicas-7970)
starts one shard s0 of database app: a PostgreSQL 15 primary on 7970 and two
streaming replicas on 7971 and 7972. `pgbench -i -s 10` runs on the primary,
and the benchmark waits until both replicas have replayed it. Three targets:

  direct     the primary, 127.0.0.1:7970
  pgshard    build/pgshard -c pgshard.ini on 7975: workers 2, pool_size 16,
             transaction pooling, auth trust, both replicas configured,
             read_your_writes default (lsn): pgbench -S reads go to replicas
  pgbouncer  Debian's pgbouncer on 7976 pointed at the primary only,
             transaction pooling, default_pool_size 16

Every cell (-c 1 and -c 16, -M simple and -M extended; pgbench -n -S, -j up
to 2) runs --duration seconds against each target, and each repetition
rotates which target goes first. pgbench writes a per-transaction log (-l);
p50 and p99 latency are computed from it per run. Reported per cell: the
median TPS, p50 and p99 of --reps repetitions, pgshard/pgbouncer and
pgshard/direct.

Reads spread: pg_stat_database.xact_commit of database app on every server,
before and after each pgshard run, and once more around a dedicated pgshard
run with quiet periods before and after (PostgreSQL flushes backend stats up
to 10 s late) and the monitor's own checks subtracted.

Lag exit: a second pgshard (port 7978, lag_check_interval_ms = 100,
max_replica_lag_bytes = 65536). --trials times: pause WAL replay on replica 0
(`pgshardctl lab lag ... app.s0 0 pause`), write > 64 kB of WAL on the
primary at once, and poll `select inet_server_port()` through pgshard every
5 ms on 4 connections until 7971 has served no read for 300 ms. Exit time =
the last read served by 7971 minus the completion of the pause command; the
pgshard log line "... leaves the read set" is timed too. Then resume and wait
until 7971 serves reads again.

Results: tables on stdout, bench/results/pgbench_replicas.md and
bench/results/pgbench_replicas.json (every run, every trial, load averages).
Everything started here is stopped in a finally block (proxies and PgBouncer
by SIGTERM, then `lab down --purge`), also on Ctrl-C and SIGTERM.

  /usr/bin/python3 bench/pgbench_replicas.py --build build           # ~6.5 minutes
  /usr/bin/python3 bench/pgbench_replicas.py --build build --quick   # smoke test
"""
import calendar
import os
import random
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg

from benchlib import (BenchBase, about, add_output_options, add_pgshard_options, bench_parser,
                      cell_summary, connect_args, fmt_ms, fmt_ratio, fmt_tps, init_pgbench,
                      loadavg, log, md_table, pgshard_ini, port_open, prepare_work, ratio,
                      require_binaries, rotated, row_errors, run_guarded, run_pgbench,
                      shard_section, split_choices, stamp, start_pgbouncer, start_pgshard,
                      stop_process, text_table, write_results)

PORT_BASE = 7970
PRIMARY_PORT = PORT_BASE            # 7970
REPLICA_PORTS = [PORT_BASE + 1, PORT_BASE + 2]  # 7971, 7972
PGSHARD_PORT = PORT_BASE + 5        # 7975
PGBOUNCER_PORT = PORT_BASE + 6      # 7976
LAG_PGSHARD_PORT = PORT_BASE + 8    # 7978
ALL_PORTS = [PRIMARY_PORT, *REPLICA_PORTS, PGSHARD_PORT, PGBOUNCER_PORT, LAG_PGSHARD_PORT]
LAB_DIR = Path(f"/tmp/pgshard-bench-replicas-{PORT_BASE}")        # the lab's --dir
WORK = Path(f"/tmp/pgshard-bench-replicas-{PORT_BASE}-run")       # configs, logs
TARGETS = ["direct", "pgshard", "pgbouncer"]
CLIENTS = [1, 16]
MODES = ["simple", "extended"]
POOL_SIZE = 16
LAG_INTERVAL_MS = 100
LAG_MAX_BYTES = 65536
POLLERS = 4
POLL_SLEEP = 0.005
QUIET_AFTER_EXIT = 0.3        # no read from replica 0 for this long: it has left
TRIAL_TIMEOUT = 10.0
STATS_FLUSH_WAIT = 11.0       # PGSTAT_IDLE_INTERVAL is 10 s


def conninfo(port, dbname="app", user="postgres"):
    return f"host=127.0.0.1 port={port} dbname={dbname} user={user} connect_timeout=10"


class Bench(BenchBase):
    def __init__(self, args):
        super().__init__(args, WORK / "pgshard.ini", LAB_DIR)
        self.config = self.lab.config               # the lab's config and pgshard's
        self.lag_config = WORK / "pgshard-lag.ini"  # the lag-exit pgshard
        self.pgshard_log = WORK / "pgshard.log"
        self.lag_log = WORK / "pgshard-lag.log"
        self.bouncer_dir = WORK / "pgbouncer"
        self.latency_dir = WORK / "latency"
        self.spread = None        # the dedicated reads-spread run
        self.trials = []          # lag-exit trials
        self.lag_meta = {}
        self.loads = []           # (when, loadavg)
        self.stop_polling = threading.Event()
        self.poll_threads = []
        self.stop_problems = []   # from stopping the proxies before the lag trials

    # ---- setup ----

    def write_config(self, path, listen_port, extra=""):
        path.write_text(pgshard_ini(
            "written by bench/pgbench_replicas.py", listen_port, self.args.workers, POOL_SIZE,
            shard_section("app", "s0", PRIMARY_PORT, replicas=REPLICA_PORTS),
            database_extra=extra))

    def start_lab(self):
        busy = [p for p in ALL_PORTS if port_open(p)]
        if busy:
            raise RuntimeError(f"ports already in use: {busy} (another run of this benchmark?)")
        prepare_work(WORK)
        self.write_config(self.config, PGSHARD_PORT)
        self.write_config(self.lag_config, LAG_PGSHARD_PORT,
                          f"lag_check_interval_ms = {LAG_INTERVAL_MS}\n"
                          f"max_replica_lag_bytes = {LAG_MAX_BYTES}\n")
        self.lab.up(f"primary {PRIMARY_PORT}, replicas {REPLICA_PORTS}",
                    (PRIMARY_PORT, *REPLICA_PORTS), timeout=600)

    def sql(self, port, query, params=None, dbname="app"):
        with psycopg.connect(conninfo(port, dbname), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def wait_replicas(self, timeout=300):
        target = self.sql(PRIMARY_PORT, "select pg_current_wal_lsn()::text")[0][0]
        deadline = time.monotonic() + timeout
        for port in REPLICA_PORTS:
            while True:
                ok = self.sql(port, "select pg_last_wal_replay_lsn() >= %s::pg_lsn",
                              (target,))[0][0]
                if ok:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {port} has not replayed up to {target} "
                                       f"after {timeout}s")
                time.sleep(0.2)
        log(f"replicas {REPLICA_PORTS} have replayed the primary up to {target}")

    def init_pgbench(self):
        log(f"pgbench -i -s {self.args.scale} on the primary")
        init_pgbench(PRIMARY_PORT, self.args.scale)
        self.sql(PRIMARY_PORT, "create table bench_lag_writes (id bigserial primary key, pad text)")
        self.wait_replicas()

    def start_pgshard(self, name, config, port, logfile):
        log(f"{name} on {port} ({config.name})")
        start_pgshard(self.procs, name, self.pgshard_bin, config, port, logfile)

    def start_pgbouncer(self):
        log(f"pgbouncer on {PGBOUNCER_PORT} (primary only, transaction pooling, "
            f"default_pool_size {POOL_SIZE})")
        start_pgbouncer(self.procs, self.bouncer_dir, PGBOUNCER_PORT, PRIMARY_PORT, POOL_SIZE,
                        "trust", "written by bench/pgbench_replicas.py: the primary only")

    def stop(self, name, problems):
        stop_process(name, self.procs.get(name), problems, check_exit=name != "pgbouncer")

    # ---- counting where reads went ----

    def commits(self):
        """xact_commit of database app on every server (asked from database postgres,
        so that asking does not count)."""
        out = {}
        for port in (PRIMARY_PORT, *REPLICA_PORTS):
            out[port] = int(self.sql(port, "select coalesce(sum(xact_commit), 0) from "
                                     "pg_stat_database where datname = 'app'",
                                     dbname="postgres")[0][0])
        return out

    # ---- pgbench ----

    def target_args(self, target):
        if target == "direct":
            return connect_args(PRIMARY_PORT, "postgres")
        return connect_args(PGSHARD_PORT if target == "pgshard" else PGBOUNCER_PORT, "app")

    def pgbench(self, target, clients, mode, duration, latency=True):
        self.latency_dir.mkdir(exist_ok=True)
        prefix = self.latency_dir / f"{target}-c{clients}-{mode}-{len(self.runs)}"
        return run_pgbench(
            ["-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)),
             "-T", str(duration)], self.target_args(target), duration + 60,
            keys=("tps", "transactions", "seconds", "loadavg", "error", "p50_ms", "p99_ms",
                  "latency_samples"),
            latency_prefix=prefix if latency else None)

    def measure(self):
        targets = TARGETS
        log("warm-up: 1 s per target")
        for target in targets:
            self.pgbench(target, 16, "simple", 1, latency=False)
        cells = [(c, m) for c in CLIENTS for m in MODES]
        total = len(cells) * self.args.reps * len(targets) * self.args.duration
        log(f"measuring {len(cells)} cells x {self.args.reps} reps x {len(targets)} targets "
            f"x {self.args.duration}s = about {about(total)}")
        for clients, mode in cells:
            for rep in range(self.args.reps):
                for target in rotated(targets, rep):
                    before = self.commits() if target == "pgshard" else None
                    res = self.pgbench(target, clients, mode, self.args.duration)
                    if before is not None:
                        after = self.commits()
                        res["xact_commit_delta"] = {str(p): after[p] - before[p] for p in after}
                    res.update(target=target, clients=clients, mode=mode, rep=rep)
                    self.runs.append(res)
                    shown = (f"{res['tps']:.0f} tps, p50 {fmt_ms(res['p50_ms'])} ms, "
                             f"p99 {fmt_ms(res['p99_ms'])} ms" if res["tps"] is not None
                             else res["error"])
                    if "xact_commit_delta" in res:
                        d = res["xact_commit_delta"]
                        shown += " | commits " + ", ".join(f"{p}: {d[str(p)]}" for p in
                                                           (PRIMARY_PORT, *REPLICA_PORTS))
                    log(f"  -c {clients:<2} {mode:<8} rep {rep + 1} {target:<9} {shown}")

    def measure_spread(self):
        """A pgshard run per mode with quiet periods around it, so that every backend
        has flushed its stats, and the servers' background commits subtracted."""
        log(f"reads spread: {STATS_FLUSH_WAIT:.0f} s quiet, 5 s baseline, then per mode "
            f"pgshard -c 16 {self.args.duration} s + {STATS_FLUSH_WAIT:.0f} s quiet")
        time.sleep(STATS_FLUSH_WAIT)
        t_a, a = time.monotonic(), self.commits()
        time.sleep(5)
        t_prev, prev = time.monotonic(), self.commits()
        rate = {p: (prev[p] - a[p]) / (t_prev - t_a) for p in prev}
        self.spread = []
        for mode in MODES:
            res = self.pgbench("pgshard", 16, mode, self.args.duration, latency=False)
            time.sleep(STATS_FLUSH_WAIT)
            t_now, now = time.monotonic(), self.commits()
            servers = []
            for port in (PRIMARY_PORT, *REPLICA_PORTS):
                raw = now[port] - prev[port]
                servers.append({"port": port,
                                "role": "primary" if port == PRIMARY_PORT else "replica",
                                "raw_delta": raw, "baseline_per_s": round(rate[port], 2),
                                "reads": max(0, round(raw - rate[port] * (t_now - t_prev)))})
            total = sum(x["reads"] for x in servers)
            for x in servers:
                x["share"] = x["reads"] / total if total else None
            self.spread.append({"mode": mode, "pgbench": res, "servers": servers,
                                "total_reads": total})
            log(f"  -c 16 {mode}: pgbench counted {res.get('transactions')} transactions; "
                + "; ".join(f"{x['role']} {x['port']}: {x['reads']} ({fmt_ratio(x['share'])})"
                            for x in servers))
            t_prev, prev = t_now, now

    # ---- lag exit ----

    def poller(self, records, errors):
        try:
            with psycopg.connect(conninfo(LAG_PGSHARD_PORT, user="app"), autocommit=True) as conn:
                while not self.stop_polling.is_set():
                    t0 = time.time()
                    port = conn.execute("select inet_server_port()").fetchone()[0]
                    t1 = time.time()
                    records.append((t0, t1, port))
                    time.sleep(POLL_SLEEP)
        except Exception as exc:  # noqa: BLE001 - reported by the trial
            errors.append(f"{type(exc).__name__}: {exc}")

    def writer(self, ready, go, out):
        """Connected before the pause; once GO is set, inserts batches of 8 rows of
        1 kB on the primary back to back until more than 2 x max_replica_lag_bytes
        of WAL has been written since the pause (about 20-30 ms), then stops: a
        burst, so that replica 1 (not paused) stays within the bound."""
        try:
            with psycopg.connect(conninfo(PRIMARY_PORT), autocommit=True) as conn:
                # The lab runs with synchronous_commit = off: WAL would reach the
                # replicas only when the WAL writer flushes (wal_writer_delay, 200 ms),
                # while the monitor compares the primary's insert LSN, so both
                # replicas would look 128 kB behind until then. Flush at every commit.
                conn.execute("set synchronous_commit = on")
                ready.set()
                go.wait(30)
                start = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]
                out["start_lsn"] = start
                out["first_write"] = time.time()
                while time.time() - out["first_write"] < 3.0:
                    conn.execute("insert into bench_lag_writes (pad) select repeat("
                                 "md5(random()::text), 32) from generate_series(1, 8)")
                    written = conn.execute("select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), "
                                           "%s::pg_lsn)::bigint", (start,)).fetchone()[0]
                    out["bytes"] = int(written)
                    if written > LAG_MAX_BYTES and "over_limit" not in out:
                        out["over_limit"] = time.time()
                    if written > 2 * LAG_MAX_BYTES:
                        out["done"] = time.time()
                        break
        except Exception as exc:  # noqa: BLE001
            out["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            ready.set()

    def lag_cmd(self, action):
        return self.lab("lag", "app.s0", "0", action, timeout=60)

    def wait_serving(self, records, port, since, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for t0, t1, p in reversed(records[-400:]):
                if p == port and t0 >= since:
                    return t1
                if t1 < since:
                    break
            time.sleep(0.01)
        return None

    def read_set_lines(self, offset):
        """(unix time, message) of every "... leaves/joins the read set" line of the
        lag pgshard's log from byte offset on."""
        out = []
        with open(self.lag_log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        for line in text.splitlines():
            m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z \[\d+\] \w+: (.*)", line)
            if m and "the read set" in m.group(3):
                ts = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
                out.append((ts + int(m.group(2)) / 1000.0, m.group(3)))
        return out

    def measure_lag_exit(self):
        self.start_pgshard("pgshard-lag", self.lag_config, LAG_PGSHARD_PORT, self.lag_log)
        self.lag_meta = {"lag_check_interval_ms": LAG_INTERVAL_MS,
                         "max_replica_lag_bytes": LAG_MAX_BYTES, "pollers": POLLERS,
                         "poll_sleep_ms": POLL_SLEEP * 1000, "quiet_ms": QUIET_AFTER_EXIT * 1000,
                         "target_ms": 2 * LAG_INTERVAL_MS}
        records, errors = [], []
        self.stop_polling.clear()
        self.poll_threads = [threading.Thread(target=self.poller, args=(records, errors),
                                              daemon=True) for _ in range(POLLERS)]
        for t in self.poll_threads:
            t.start()
        r0, r1 = REPLICA_PORTS
        log(f"lag exit: {self.args.trials} trials, lag_check_interval_ms {LAG_INTERVAL_MS}, "
            f"max_replica_lag_bytes {LAG_MAX_BYTES}, {POLLERS} pollers every "
            f"{POLL_SLEEP * 1000:.0f} ms through {LAG_PGSHARD_PORT}")
        try:
            if self.wait_serving(records, r0, time.time(), 30) is None or \
                    self.wait_serving(records, r1, time.time(), 30) is None:
                raise RuntimeError(f"lag pgshard does not read from both replicas: "
                                   f"{errors[:1] or records[-5:]}")
            for trial in range(self.args.trials):
                if errors:
                    raise RuntimeError(f"poller failed: {errors[0]}")
                time.sleep(0.5 + random.random() * LAG_INTERVAL_MS / 1000.0)  # de-phase
                log_offset = self.lag_log.stat().st_size
                n_before = len(records)
                ready, go, wout = threading.Event(), threading.Event(), {}
                wthread = threading.Thread(target=self.writer, args=(ready, go, wout),
                                           daemon=True)
                wthread.start()
                ready.wait(30)
                t_pause_start = time.time()
                try:
                    self.lag_cmd("pause")
                finally:
                    t_pause_done = time.time()
                    go.set()
                result = {"trial": trial + 1, "pause_cmd_ms": (t_pause_done - t_pause_start) * 1000,
                          "loadavg": loadavg()}
                exited = False
                while time.time() - t_pause_done < TRIAL_TIMEOUT:
                    time.sleep(0.01)
                    recs = records[n_before:]
                    last0 = max((r for r in recs if r[2] == r0), key=lambda r: r[1], default=None)
                    last_t = last0[1] if last0 else t_pause_start
                    later1 = any(r[2] == r1 and r[0] > last_t for r in recs)
                    if later1 and time.time() - last_t >= QUIET_AFTER_EXIT:
                        exited = True
                        break
                wthread.join(10)
                recs = records[n_before:]
                last0 = max((r for r in recs if r[2] == r0), key=lambda r: r[1], default=None)
                after_pause = [r for r in recs if r[1] >= t_pause_done]
                result.update(
                    exited=exited,
                    exit_ms=(last0[1] - t_pause_done) * 1000 if exited and last0 else None,
                    exit_sent_ms=(last0[0] - t_pause_done) * 1000 if exited and last0 else None,
                    reads_r0_after_pause=sum(1 for r in after_pause if r[2] == r0),
                    reads_r1_after_pause=sum(1 for r in after_pause if r[2] == r1),
                    reads_primary_after_pause=sum(1 for r in after_pause
                                                  if r[2] == PRIMARY_PORT),
                    wal_bytes=wout.get("bytes"), writer_error=wout.get("error"),
                    over_limit_ms=((wout["over_limit"] - t_pause_done) * 1000
                                   if "over_limit" in wout else None),
                    burst_ms=((wout["done"] - wout["first_write"]) * 1000
                              if "done" in wout else None))
                all_lines = [(ts, msg) for ts, msg in self.read_set_lines(log_offset)
                             if ts >= t_pause_start - 0.002]
                result["read_set_log"] = [f"{(ts - t_pause_done) * 1000:+.0f} ms {msg}"
                                          for ts, msg in all_lines]
                lines = [(ts, msg) for ts, msg in all_lines
                         if f":{r0} leaves the read set" in msg]
                result["replica1_left"] = any(f":{r1} leaves the read set" in msg
                                              for _, msg in all_lines)
                result["log_leave_ms"] = (lines[0][0] - t_pause_done) * 1000 if lines else None
                result["log_leave_line"] = lines[0][1] if lines else None
                t_resume_start = time.time()
                self.lag_cmd("resume")
                t_resume_done = time.time()
                back = self.wait_serving(records, r0, t_resume_done, 30)
                result["rejoin_ms"] = (back - t_resume_done) * 1000 if back else None
                result["resume_cmd_ms"] = (t_resume_done - t_resume_start) * 1000
                self.trials.append(result)
                log(f"  trial {trial + 1}: pause cmd {result['pause_cmd_ms']:.0f} ms; "
                    f"> {LAG_MAX_BYTES} B WAL after {fmt_ms(result['over_limit_ms'], 0)} ms; "
                    f"last read from {r0} {fmt_ms(result['exit_ms'], 0)} ms after the pause "
                    f"(sent {fmt_ms(result['exit_sent_ms'], 0)} ms); log 'leaves the read set' "
                    f"{fmt_ms(result['log_leave_ms'], 0)} ms; back in the read set "
                    f"{fmt_ms(result['rejoin_ms'], 0)} ms after resume")
                if back is None:
                    raise RuntimeError(f"{r0} did not serve reads again within 30 s of resume")
        finally:
            self.stop_polling.set()
            for t in self.poll_threads:
                t.join(5)

    # ---- reporting ----

    def summary(self):
        rows = cell_summary(self.runs, [(f"-c {c} {m}", {"clients": c, "mode": m})
                                        for c in CLIENTS for m in MODES], TARGETS,
                            extra=(("_p50", "p50_ms"), ("_p99", "p99_ms")))
        for row in rows:
            row["pgshard/pgbouncer"] = ratio(row["pgshard"], row["pgbouncer"])
            row["pgshard/direct"] = ratio(row["pgshard"], row["direct"])
            row["p99 pgshard/pgbouncer"] = ratio(row["pgshard_p99"], row["pgbouncer_p99"])
        return rows

    def matrix_commits(self):
        """Sum of the per-run xact_commit deltas over every pgshard run of the matrix."""
        totals = {p: 0 for p in (PRIMARY_PORT, *REPLICA_PORTS)}
        xacts = 0
        for r in self.runs:
            if r["target"] == "pgshard" and "xact_commit_delta" in r:
                for p in totals:
                    totals[p] += r["xact_commit_delta"][str(p)]
                xacts += r.get("transactions") or 0
        return totals, xacts

    def lag_summary(self):
        vals = [t["exit_ms"] for t in self.trials if t.get("exit_ms") is not None]
        logv = [t["log_leave_ms"] for t in self.trials if t.get("log_leave_ms") is not None]
        s = {"n": len(self.trials), "exited": len(vals), "target_ms": 2 * LAG_INTERVAL_MS}
        for name, v in (("exit", vals), ("log_leave", logv)):
            s[name] = ({"min": min(v), "median": statistics.median(v), "max": max(v)}
                       if v else None)
        s["within_target"] = sum(1 for v in vals if v <= 2 * LAG_INTERVAL_MS)
        return s

    def report(self, rows):
        out_dir = Path(self.args.out)
        text, md = [], []

        def section(title, header, body, note=None):
            text.extend(["", title, *text_table(header, body)])
            md.extend(["", f"## {title}", "", *md_table(header, body)])
            if note:
                md.extend(["", note])

        ok = True
        if rows:
            section("Throughput (median TPS)",
                    ["cell", "direct TPS", "pgshard TPS", "pgbouncer TPS", "pgshard/pgbouncer",
                     "pgshard/direct"],
                    [[r["cell"], fmt_tps(r["direct"]), fmt_tps(r["pgshard"]),
                      fmt_tps(r["pgbouncer"]), fmt_ratio(r["pgshard/pgbouncer"]),
                      fmt_ratio(r["pgshard/direct"])] for r in rows],
                    "Ratios above 1.00 mean pgshard served more transactions per second.")
            section("Latency (median of the runs' p50 / p99, ms)",
                    ["cell", "direct p50", "direct p99", "pgshard p50", "pgshard p99",
                     "pgbouncer p50", "pgbouncer p99", "p99 pgshard/pgbouncer"],
                    [[r["cell"], fmt_ms(r["direct_p50"], 3), fmt_ms(r["direct_p99"], 3),
                      fmt_ms(r["pgshard_p50"], 3), fmt_ms(r["pgshard_p99"], 3),
                      fmt_ms(r["pgbouncer_p50"], 3), fmt_ms(r["pgbouncer_p99"], 3),
                      fmt_ratio(r["p99 pgshard/pgbouncer"])] for r in rows],
                    "From pgbench's per-transaction log (-l, every transaction). "
                    "p99 below 1.00 in the last column: pgshard's tail is shorter.")
            errors = row_errors(rows, TARGETS)
            for cell, target, error in errors[:20]:
                text.append(f"error: {cell} {target}: {error}")
            if errors:
                ok = False
                md += ["", "Errors:", ""] + [f"- {c} {t}: {e}" for c, t, e in errors]
            totals, xacts = self.matrix_commits()
            allc = sum(totals.values())
            section("Where pgshard's reads went: all pgshard runs of the matrix",
                    ["server", "xact_commit delta", "share"],
                    [[f"{'primary' if p == PRIMARY_PORT else 'replica'} {p}", f"{v:,}",
                      fmt_ratio(v / allc if allc else None)] for p, v in totals.items()],
                    f"pg_stat_database.xact_commit of database app, before and after every "
                    f"pgshard run; pgbench counted {xacts:,} transactions in those runs. "
                    f"Backends flush stats up to 10 s late, so the primary's column also "
                    f"holds the tail of the direct and PgBouncer runs before it; the "
                    f"dedicated run below has quiet periods around it.")
        if self.spread:
            body = []
            for sp in self.spread:
                body += [[f"-c 16 {sp['mode']}", f"{x['role']} {x['port']}", f"{x['reads']:,}",
                          fmt_ratio(x["share"]), f"{x['raw_delta']:,}",
                          f"{x['baseline_per_s']}"] for x in sp["servers"]]
                body.append([f"-c 16 {sp['mode']}", "pgbench transactions",
                             f"{sp['pgbench'].get('transactions') or 0:,}", "", "", ""])
            section("Where pgshard's reads went: dedicated runs",
                    ["run", "server", "reads", "share", "raw delta", "baseline/s"], body,
                    f"One pgshard run per mode, {self.args.duration} s, with "
                    f"{STATS_FLUSH_WAIT:.0f} s quiet after each (PostgreSQL backends flush "
                    f"their stats up to 10 s late); the servers' background commit rate, "
                    f"measured over 5 s of quiet before, is subtracted.")
        if self.trials:
            ls = self.lag_summary()
            body = [[str(t["trial"]), fmt_ms(t["pause_cmd_ms"], 0), fmt_ms(t["over_limit_ms"], 0),
                     fmt_ms(t["exit_ms"], 0), fmt_ms(t["exit_sent_ms"], 0),
                     fmt_ms(t["log_leave_ms"], 0), fmt_ms(t["rejoin_ms"], 0),
                     f"{t['reads_r1_after_pause']}/{t['reads_primary_after_pause']}",
                     "yes" if t["replica1_left"] else "no"]
                    for t in self.trials]
            section(f"Lag exit (lag_check_interval_ms = {LAG_INTERVAL_MS}, "
                    f"max_replica_lag_bytes = {LAG_MAX_BYTES})",
                    ["trial", "pause cmd ms", "WAL > limit ms", "exit ms", "exit (sent) ms",
                     "log line ms", "rejoin ms", "reads 7972/7970", "7972 left too"], body)
            e, lg = ls["exit"], ls["log_leave"]
            verdict = (f"exit time min/median/max {e['min']:.0f} / {e['median']:.0f} / "
                       f"{e['max']:.0f} ms over {ls['exited']} of {ls['n']} trials; target "
                       f"<= 2 x lag_check_interval_ms = {ls['target_ms']} ms: "
                       f"{ls['within_target']} of {ls['n']} within" if e
                       else f"replica 0 never left the read set in {ls['n']} trials")
            if lg:
                verdict += (f"; log line 'leaves the read set' min/median/max "
                            f"{lg['min']:.0f} / {lg['median']:.0f} / {lg['max']:.0f} ms")
            text.append(verdict)
            md += ["", verdict + ".", "",
                   "All times from the completion of `pgshardctl lab lag ... app.s0 0 pause` "
                   "(its own duration is `pause cmd`). `WAL > limit`: when the writer on the "
                   "primary had written more than max_replica_lag_bytes since the pause. "
                   "`exit`: when the last read served by replica 0 (7971) returned to the "
                   f"poller ({POLLERS} connections through pgshard, `select inet_server_port()` "
                   f"every {POLL_SLEEP * 1000:.0f} ms); `exit (sent)`: when that read was sent. "
                   "`log line`: the timestamp of pgshard's \"... leaves the read set\" warning "
                   "(ms resolution). `rejoin`: from `lab lag ... resume` to the next read "
                   "served by 7971 (3 good checks needed). `reads 7972/7970`: reads served by "
                   "replica 1 and by the primary from the pause to the end of the trial; "
                   "`7972 left too`: replica 1 also left the read set during the trial (a "
                   "check caught it behind by more than the bound during the burst), so "
                   "reads fell back to the primary. The writer sets synchronous_commit = on "
                   "(the lab's servers run with it off): otherwise the burst would sit "
                   "unflushed on the primary for up to wal_writer_delay (200 ms) while the "
                   "monitor, comparing the primary's insert LSN, sees both replicas 128 kB "
                   "behind."]
            if ls["exited"] < ls["n"]:
                ok = False

        loads = [x["loadavg"][0] for x in self.runs + self.trials if x.get("loadavg")]
        load_note = (f"Load average (1 min) at start {self.loads[0][1][0]}, over the runs "
                     f"{min(loads)}-{max(loads)}, at the end {loadavg()[0]}, on "
                     f"{os.cpu_count()} CPUs" if loads and self.loads else "")
        meta = (f"pgbench -n -S, scale {self.args.scale}, -j up to 2, {self.args.duration} s per "
                f"run, median of {self.args.reps} interleaved repetitions; pgshard (workers "
                f"{self.args.workers}, pool_size {POOL_SIZE}, transaction pooling, auth trust, "
                f"primary + 2 replicas, read_your_writes lsn) vs PgBouncer (primary only, "
                f"transaction pooling, default_pool_size {POOL_SIZE}) vs direct to the "
                f"primary. {stamp(cpus=False)}. {load_note}. The servers, both poolers and "
                f"pgbench share these cores; other work on the machine moves single runs.")
        md = ["# pgbench -S: pgshard with 2 replicas vs PgBouncer on the primary", "", meta,
              *md, "", "Raw runs and trials: pgbench_replicas.json.", ""]
        print("\n".join(text))
        print()
        print(meta)
        write_results(out_dir, "pgbench_replicas", md, {
            "meta": meta, "args": vars(self.args), "loadavg": self.loads, "runs": self.runs,
            "summary": rows, "spread": self.spread,
            "matrix_commits": {str(k): v for k, v in self.matrix_commits()[0].items()},
            "lag_exit": {"settings": self.lag_meta, "trials": self.trials,
                         "summary": self.lag_summary() if self.trials else None}})
        log(f"wrote {out_dir}/pgbench_replicas.md and pgbench_replicas.json")
        return ok

    # ---- teardown ----

    def cleanup(self):
        problems = list(self.stop_problems)
        self.stop_polling.set()
        for t in self.poll_threads:
            t.join(5)
        for name in ("pgbouncer", "pgshard", "pgshard-lag"):
            self.stop(name, problems)
        return self.lab.release(ALL_PORTS, WORK, self.args.keep, problems)


def main():
    parser = bench_parser(__doc__, duration=8)
    parser.add_argument("--trials", type=int, default=None,
                        help="lag-exit trials (default 5, 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 rep, 2 trials")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    add_pgshard_options(parser)
    parser.add_argument("--parts", default="matrix,spread,lag",
                        help="comma-separated subset of matrix,spread,lag")
    add_output_options(parser, "pgbench_replicas.md/.json", WORK, "(configs, pgshard logs)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.reps = 2, 1
    if args.trials is None:
        args.trials = 2 if args.quick else 5
    args.parts = split_choices(parser, "--parts", args.parts, ["matrix", "spread", "lag"])

    bench = Bench(args)
    require_binaries(parser, args.build, bench.ctl_bin, bench.pgshard_bin)

    def body():
        bench.loads.append(("start", loadavg()))
        log(f"load average {loadavg()} on {os.cpu_count()} CPUs")
        bench.start_lab()
        bench.init_pgbench()
        rows = []
        if "matrix" in args.parts or "spread" in args.parts:
            bench.start_pgshard("pgshard", bench.config, PGSHARD_PORT, bench.pgshard_log)
        if "matrix" in args.parts:
            bench.start_pgbouncer()
            bench.measure()
            rows = bench.summary()
        if "spread" in args.parts:
            bench.measure_spread()
        if "lag" in args.parts:
            bench.stop("pgbouncer", bench.stop_problems)
            bench.stop("pgshard", bench.stop_problems)
            bench.measure_lag_exit()
        bench.loads.append(("end", loadavg()))
        return bench.report(rows)

    return run_guarded(body, bench.cleanup,
                       [(f"{path.name} tail", path) for path in (bench.pgshard_log, bench.lag_log)])


if __name__ == "__main__":
    sys.exit(main())
