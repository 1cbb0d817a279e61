#!/usr/bin/python3
"""Resharding under load: an xxh3 table grown from 2 shards to 3 while pgbench writes.

The lab (`pgshardctl lab up --no-proxy`, ports 7600-7605, data under
/tmp/pgshard-bench-reshard-7600) starts three PostgreSQL 15 primaries of
database app, s0 (7600), s1 (7601) and s2 (7602), s2 with a streaming
replica (7603) unless --no-replica; the lab sets wal_level = logical.
Table users (id bigint primary key, payload text, n bigint not null
default 0) is created on all three; --rows rows (payload ~100 bytes, n 0)
are copied straight onto s0 and s1, each on the shard `pgshardctl route
--stdin` names under OLD.

  OLD  s0 + s1, [table.app.users] hash on id (xxh3); what pgshard serves
       (127.0.0.1:7605, workers 2, pool_size 8 per node, transaction
       pooling, auth trust, an admin user for the console)
  NEW  OLD + [shard.app.s2] + the [slots.app] section `pgshardctl reshard
       slots OLD NEW` prints: a third of the keys move, all to s2

`reshard plan OLD NEW` is recorded, pgshard started on OLD, and pgbench runs
through it for the whole move (-c 8 -j 2 -M simple, a per-transaction log):

  \\set id random(1, ROWS)
  update users set n = n + 1 where id = :id;
  select n from users where id = :id;

After --before seconds of load alone, `reshard start OLD NEW` runs in the
background (copy, then stream); its copy lines give rows/s per move and the
copy phase's wall time. While it streams, `reshard status` is sampled every
0.5 s (lag bytes and seconds). After --stream-seconds of streaming,
`reshard cutover OLD NEW`: the hold it reports (and each step's share), and
its wall-clock window. pgbench then runs to its end, and `reshard cleanup`
deletes the moved rows from s0 and s1.

From pgbench's log: overall p50/p99/max latency, the same for the
transactions that started inside the cutover window, and TPS before, during
(copy, streaming, cut) and after the move.

Correctness (any failure makes the run fail): pgbench exited 0 with no failed
transaction; sum(n) over the shards equals the transactions pgbench
completed; there are exactly --rows rows; every row is on exactly the shard
NEW names for it (every key routed by `pgshardctl route --stdin NEW`, plus a
10,000-key sample checked one by one); pgshard's file is NEW after the cut;
the streamer exited 0; no slot or publication is left; s2's replica has
what s2 has.

Results: a table on stdout, bench/results/reshard.md and reshard.json.
Everything started here is stopped in a finally block (pgbench, the
streamer, pgshard by SIGTERM, then `lab down --purge`), also on Ctrl-C and
SIGTERM.

  /usr/bin/python3 bench/reshard.py --build build                  # 1,000,000 rows, ~2 minutes
  /usr/bin/python3 bench/reshard.py --build build --rows 100000    # ~1 minute
"""
import argparse
import datetime
import io
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchlib import (REPO, BenchBase, add_output_options, add_pgshard_options,
                      check_config, connect_args, copy_in, fmt_ms, fmt_tps, hash_table_section,
                      lab_preamble, loadavg, log, percentile, pgshard_ini, prepare_work, psql,
                      require_binaries, route_keys, run, run_guarded, shard_section, stamp,
                      start_pgshard, stop_process, write_results)

PORT_BASE = 7600
S0_PORT, S1_PORT, S2_PORT = PORT_BASE, PORT_BASE + 1, PORT_BASE + 2
S2_REPLICA_PORT = PORT_BASE + 3
LAB_PROXY_PORT = PORT_BASE + 4  # named in the lab config, never started (--no-proxy)
PROXY_PORT = PORT_BASE + 5
SHARD_PORTS = {"s0": S0_PORT, "s1": S1_PORT, "s2": S2_PORT}
WORK = Path(f"/tmp/pgshard-bench-reshard-{PORT_BASE}")
TABLE = "users"
ADMIN = "\n[user.admin]\npassword = adminpw\nadmin = true\n"
PHASES = ("copying", "streaming", "switched", "cleaned")
SAMPLE_KEYS = 10000


class ReshardBench(BenchBase):
    def __init__(self, args):
        super().__init__(args, WORK / "lab.ini", WORK / "lab")
        self.old = WORK / "old.ini"
        self.new = WORK / "new.ini"
        self.script = WORK / "update_select.sql"
        self.log_prefix = WORK / "pgbench"
        self.pgshard_log = WORK / "pgshard.log"
        self.start_log = WORK / "reshard-start.log"
        self.pgbench_out = WORK / "pgbench.out"
        self.data = {"loadavg": {"start": loadavg()}}
        self.failures = []
        self.times = {}  # event -> time.time()

    def ctl(self, *args, timeout=600, check=True):
        """`pgshardctl reshard ARGS` (stdout and stderr together)."""
        proc = subprocess.run([str(self.ctl_bin), "reshard", *map(str, args)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"pgshardctl reshard {' '.join(map(str, args))} exited "
                               f"{proc.returncode}:\n{proc.stdout}")
        return proc

    def fail(self, msg):
        log(f"CHECK FAILED: {msg}")
        self.failures.append(msg)

    # ---- setup ----

    def start_lab(self):
        prepare_work(WORK)
        for path in WORK.iterdir():  # what a --keep run left, but the lab (purged by up)
            if path.is_file():
                path.unlink()
        replicas = () if self.args.no_replica else (S2_REPLICA_PORT,)
        self.lab.config.write_text(
            lab_preamble("written by bench/reshard.py: shards s0, s1, s2 of app (s2 replicated)",
                         LAB_PROXY_PORT)
            + shard_section("app", "s0", S0_PORT) + shard_section("app", "s1", S1_PORT)
            + shard_section("app", "s2", S2_PORT, replicas=replicas))
        self.lab.up(f"s0 on {S0_PORT}, s1 on {S1_PORT}, s2 on {S2_PORT}"
                    + (f" with a replica on {S2_REPLICA_PORT}" if replicas else ""),
                    (*SHARD_PORTS.values(), *replicas))
        for name, port in SHARD_PORTS.items():
            level = psql(port, "show wal_level").strip()
            if level != "logical":
                raise RuntimeError(f"{name} runs wal_level = {level}: resharding needs logical")
            psql(port, f"drop table if exists {TABLE}",
                 f"create table {TABLE} (id bigint primary key, payload text, "
                 "n bigint not null default 0)")

    def write_configs(self):
        shards = (shard_section("app", "s0", S0_PORT) + shard_section("app", "s1", S1_PORT)
                  + hash_table_section(TABLE, "id") + ADMIN)
        self.old.write_text(pgshard_ini(
            "written by bench/reshard.py: OLD, 2 shards", PROXY_PORT, self.args.workers,
            self.args.pool_size, shards))
        check_config(self.ctl_bin, self.old)
        replicas = () if self.args.no_replica else (S2_REPLICA_PORT,)
        new_text = (self.old.read_text().replace("OLD, 2 shards", "NEW, 3 shards") + "\n"
                    + shard_section("app", "s2", S2_PORT, replicas=replicas))
        self.new.write_text(new_text)
        slots = self.ctl("slots", self.old, self.new).stdout
        if "[slots.app]" not in slots:
            raise RuntimeError(f"reshard slots printed no [slots.app]:\n{slots}")
        self.new.write_text(new_text + "\n" + slots)
        check_config(self.ctl_bin, self.new)
        self.old_text = self.old.read_text()
        self.new_text = self.new.read_text()

    def load(self):
        n = self.args.rows
        log(f"loading {n:,} rows into {TABLE} on s0/s1 (routed by OLD)")
        keys = [str(k) for k in range(1, n + 1)]
        where = route_keys(self.ctl_bin, self.old, TABLE, keys, ("s0", "s1"))
        rng = random.Random(1)
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        base = "".join(rng.choice(alphabet) for _ in range(400))
        data = {"s0": io.StringIO(), "s1": io.StringIO()}
        for key, shard in zip(keys, where):
            k = int(key)
            off = (k * 7919) % 300
            data[shard].write(f"{key}\tuser-{k:010d}-{base[off:off + 84]}\t0\n")
        del keys, where
        started = time.monotonic()
        for shard in ("s0", "s1"):
            copy_in(SHARD_PORTS[shard], "app", f"\\copy {TABLE} (id, payload, n) from stdin",
                    data[shard].getvalue(), shard)
            data[shard] = None
        for shard in ("s0", "s1"):
            psql(SHARD_PORTS[shard], f"vacuum analyze {TABLE}", "checkpoint")
        counts = self.counts()
        log(f"loaded in {time.monotonic() - started:.1f} s: "
            + ", ".join(f"{s} {c:,}" for s, c in counts.items()))
        if counts["s0"] + counts["s1"] != n or counts["s2"] or not (counts["s0"] and counts["s1"]):
            raise RuntimeError(f"load: row counts {counts}")
        self.data["rows_before"] = counts
        self.script.write_text(f"""\
\\set id random(1, {n})
update {TABLE} set n = n + 1 where id = :id;
select n from {TABLE} where id = :id;
""")

    def counts(self):
        return {s: int(psql(p, f"select count(*) from {TABLE}").strip())
                for s, p in SHARD_PORTS.items()}

    def plan(self):
        out = self.ctl("plan", self.old, self.new).stdout
        print(out.rstrip())
        if "not ready" in out or "ready" not in out:
            raise RuntimeError(f"reshard plan: not ready:\n{out}")
        moves = re.findall(r"move (\S+) -> (\S+): \S+ \((\d+) rows\)", out)
        if not moves:
            raise RuntimeError(f"reshard plan listed no move:\n{out}")
        self.moves = [(src, dst) for src, dst, _ in moves]
        self.data["plan"] = {"output": out, "moves": [
            {"source": s, "target": t, "rows": int(r)} for s, t, r in moves]}

    def start_proxy(self):
        log(f"pgshard on {PROXY_PORT} (OLD; workers {self.args.workers}, pool_size "
            f"{self.args.pool_size} per node)")
        start_pgshard(self.procs, "pgshard", self.pgshard_bin, self.old, PROXY_PORT,
                      self.pgshard_log)
        cmd = ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
               f"host=127.0.0.1 port={PROXY_PORT} dbname=app user=app password=secret "
               "connect_timeout=10", "-c", f"select id from {TABLE} where id = 1",
               "-c", f"select id from {TABLE} where id = {self.args.rows}"]
        proc = run(cmd, timeout=30, check=False)
        if proc.returncode != 0 or proc.stdout != f"1\n{self.args.rows}\n":
            raise RuntimeError(f"preflight through pgshard: {proc.stdout}{proc.stderr}")

    # ---- the move under load ----

    def start_pgbench(self):
        a = self.args
        cmd = ["pgbench", "-n", "-M", a.mode, "-f", str(self.script), "-c", str(a.clients),
               "-j", str(min(a.jobs, a.clients)), "-T", str(a.duration), "-l",
               f"--log-prefix={self.log_prefix}", *connect_args(PROXY_PORT, "app")]
        env = dict(os.environ, PGPASSWORD="secret", PGCONNECT_TIMEOUT="10")
        log(f"pgbench -c {a.clients} -j {min(a.jobs, a.clients)} -M {a.mode} -T {a.duration} "
            "through pgshard")
        self.times["pgbench_launch"] = time.time()
        with open(self.pgbench_out, "w") as out:
            self.procs["pgbench"] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                                     stderr=subprocess.STDOUT, env=env,
                                                     cwd=WORK)

    def pgbench_alive(self, what):
        if self.procs["pgbench"].poll() is not None:
            raise RuntimeError(f"pgbench ended before {what}: --duration {self.args.duration} "
                               "is too short (or pgbench failed):\n"
                               + self.pgbench_out.read_text()[-2000:])

    def sleep_under_load(self, seconds, what):
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.pgbench_alive(what)
            time.sleep(0.1)

    def start_streamer(self):
        self.streamer_lines = []  # (time, line)
        self.times["reshard_start"] = time.time()
        self.procs["reshard start"] = proc = subprocess.Popen(
            [str(self.ctl_bin), "reshard", "start", str(self.old), str(self.new)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1)

        def reader():
            with open(self.start_log, "w") as logf:
                for line in proc.stdout:
                    self.streamer_lines.append((time.time(), line.rstrip("\n")))
                    logf.write(line)
                    logf.flush()
        self.reader = threading.Thread(target=reader, daemon=True)
        self.reader.start()
        log("reshard start OLD NEW (background): copying")

    def copy_lines(self):
        found = {}
        for t, line in list(self.streamer_lines):
            m = re.match(r"copy (\S+) -> (\S+): (\d+) rows in ([0-9.]+) s \(([0-9.]+) rows/s\)",
                         line)
            if m:
                found[(m.group(1), m.group(2))] = {
                    "source": m.group(1), "target": m.group(2), "rows": int(m.group(3)),
                    "seconds": float(m.group(4)), "rows_per_s": float(m.group(5)), "at": t,
                    "line": line}
        return found

    def wait_copied(self):
        """Until every move of the plan printed its copy line."""
        deadline = time.time() + self.args.copy_timeout
        while True:
            found = self.copy_lines()
            if all(m in found for m in self.moves):
                break
            if self.procs["reshard start"].poll() is not None:
                time.sleep(0.2)
                raise RuntimeError("reshard start exited "
                                   f"{self.procs['reshard start'].returncode} while copying:\n"
                                   + "\n".join(line for _, line in self.streamer_lines[-20:]))
            if time.time() > deadline:
                raise RuntimeError(f"copy not done after {self.args.copy_timeout} s")
            self.pgbench_alive("the copy ended")
            time.sleep(0.05)
        self.times["copy_done"] = max(c["at"] for c in found.values())
        copies = [found[m] for m in self.moves]
        total = sum(c["rows"] for c in copies)
        wall = self.times["copy_done"] - self.times["reshard_start"]
        self.data["copy"] = {"moves": copies, "rows": total, "wall_s": round(wall, 3),
                             "rows_per_s_wall": round(total / wall) if wall > 0 else None}
        for c in copies:
            log(f"  {c['line']}")
        log(f"copy phase: {total:,} rows in {wall:.2f} s wall ({total / wall:,.0f} rows/s, "
            "from reshard start's launch to its last copy line)")

    def sample_status(self, stop):
        """`reshard status` every 0.5 s until STOP is set."""
        self.status_samples = []
        while not stop.is_set():
            t = time.time()
            proc = self.ctl("status", self.old, self.new, timeout=60, check=False)
            rows = []
            for line in proc.stdout.splitlines():
                f = line.split()
                if len(f) >= 8 and f[2] in PHASES:
                    rows.append({"source": f[0], "target": f[1], "phase": f[2],
                                 "rows_copied": int(f[3]), "rows_applied": int(f[4]),
                                 "lag_bytes": int(f[5]), "lag_s": float(f[6]),
                                 "streamer": f[7], "error": " ".join(f[8:]) or None})
            self.status_samples.append({"t": round(t, 3), "rc": proc.returncode,
                                        "took_s": round(time.time() - t, 3), "rows": rows,
                                        **({} if proc.returncode == 0 else
                                           {"output": proc.stdout[-1000:]})})
            stop.wait(max(0.0, 0.5 - (time.time() - t)))

    def move(self):
        self.start_pgbench()
        self.sleep_under_load(self.args.before, "the move started")
        self.start_streamer()
        stop = threading.Event()
        sampler = threading.Thread(target=self.sample_status, args=(stop,), daemon=True)
        sampler.start()
        try:
            self.wait_copied()
            log(f"streaming; sampling status every 0.5 s for {self.args.stream_seconds} s")
            self.sleep_under_load(self.args.stream_seconds, "the cutover")
        finally:
            stop.set()
            sampler.join(60)
        self.summarise_lag()
        self.pgbench_alive("the cutover")
        self.data["loadavg"]["cutover"] = loadavg()
        log("reshard cutover OLD NEW")
        self.times["cut_start"] = time.time()
        proc = self.ctl("cutover", self.old, self.new, check=False)
        self.times["cut_end"] = time.time()
        self.data["cutover_output"] = proc.stdout
        print(proc.stdout.rstrip())
        if proc.returncode != 0:
            raise RuntimeError(f"reshard cutover exited {proc.returncode}:\n{proc.stdout}")
        m = re.search(r"held (\d+) ms \(hold (\d+), marker (\d+), sequences (\d+), replicas "
                      r"(\d+), switch and reload (\d+), phase (\d+), release (\d+)\)", proc.stdout)
        if not m:
            raise RuntimeError(f"reshard cutover: no 'held N ms (...)' line:\n{proc.stdout}")
        steps = ["hold", "marker", "sequences", "replicas", "switch and reload", "phase",
                 "release"]
        self.data["cutover"] = {
            "held_ms": int(m.group(1)),
            "steps_ms": {s: int(v) for s, v in zip(steps, m.groups()[1:])},
            "wall_ms": round((self.times["cut_end"] - self.times["cut_start"]) * 1000, 1)}
        self.hold_window()
        if self.procs["pgbench"].poll() is not None:
            self.fail("pgbench had ended before the cutover ended: the cut was not under load")
        # The streamers end once their moves are switched.
        try:
            rc = self.procs["reshard start"].wait(60)
        except subprocess.TimeoutExpired:
            rc = None
        self.reader.join(10)
        self.data["reshard_start_output"] = [line for _, line in self.streamer_lines]
        if rc != 0:
            self.fail(f"reshard start exited {rc} after the cutover")
        if self.old.read_text() != self.new_text:
            self.fail("pgshard's config file is not NEW's text after the cutover")
        remaining = self.times["pgbench_launch"] + self.args.duration - time.time()
        log(f"cut over; letting pgbench run to its end (~{max(0, remaining):.0f} s)")
        try:
            self.procs["pgbench"].wait(max(0, remaining) + 120)
        except subprocess.TimeoutExpired:
            raise RuntimeError("pgbench did not end 120 s after its -T")
        self.times["pgbench_end"] = time.time()
        self.data["loadavg"]["end_of_load"] = loadavg()
        t = time.time()
        out = self.ctl("cleanup", self.old, self.new).stdout
        self.data["cleanup"] = {"output": out, "seconds": round(time.time() - t, 2),
                                "deleted": sum(int(x) for x in
                                               re.findall(r"(\d+) rows of \S+ deleted", out))}
        log(f"cleanup: {self.data['cleanup']['deleted']:,} rows deleted from the sources in "
            f"{self.data['cleanup']['seconds']:.1f} s")

    def hold_window(self):
        """When pgshard began and ended the hold: its log's RESHARD HOLD and
        RESHARD RELEASE lines (UTC, milliseconds)."""
        def at(stamp):
            return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        hold = release = reported = None
        for line in self.pgshard_log.read_text(errors="replace").splitlines():
            m = re.match(r"(\S+Z) \[\d+\] \w+: admin: RESHARD HOLD ", line)
            if m:
                hold = at(m.group(1))
            m = re.match(r"(\S+Z) \[\d+\] \w+: RESHARD RELEASE: the hold of .* ends after "
                         r"(\d+) ms", line)
            if m:
                release, reported = at(m.group(1)), int(m.group(2))
        cut = self.data["cutover"]
        if hold is None or release is None or not hold <= release:
            log("pgshard's log has no RESHARD HOLD ... RELEASE pair: no hold window")
            return
        self.times["hold"], self.times["release"] = hold, release
        cut["pgshard_hold_ms"] = round((release - hold) * 1000)
        cut["pgshard_reported_hold_ms"] = reported
        cut["pre_hold_ms"] = round((hold - self.times["cut_start"]) * 1000)
        cut["post_release_ms"] = round((self.times["cut_end"] - release) * 1000)
        log(f"pgshard held from +{cut['pre_hold_ms']} ms to "
            f"+{cut['pre_hold_ms'] + cut['pgshard_hold_ms']} ms of the {cut['wall_ms']:.0f} ms "
            "cutover command")

    def summarise_lag(self):
        """Lag over the status samples taken once every move streamed; a
        status call that failed then is a failure (before, while `start`
        creates its state, it is only counted)."""
        after = [s for s in self.status_samples if s["t"] >= self.times["copy_done"]]
        streaming = [r for s in after for r in s["rows"] if r["phase"] == "streaming"]
        failed = [s for s in after if s["rc"] != 0]
        lag_b = [r["lag_bytes"] for r in streaming]
        lag_s = [r["lag_s"] for r in streaming]
        took = [s["took_s"] for s in self.status_samples]
        last = {}
        for s in after:
            for r in s["rows"]:
                if r["phase"] == "streaming":
                    last[f"{r['source']} -> {r['target']}"] = {
                        "lag_bytes": r["lag_bytes"], "lag_s": r["lag_s"]}
        self.data["lag"] = {
            "samples": len(after), "rows": len(streaming),
            "bytes_max": max(lag_b) if lag_b else None,
            "bytes_median": statistics.median(lag_b) if lag_b else None,
            "s_max": max(lag_s) if lag_s else None,
            "s_median": statistics.median(lag_s) if lag_s else None,
            "last_before_cutover": last,
            "status_failures_streaming": len(failed),
            "status_failures_copying": sum(1 for s in self.status_samples
                                           if s["rc"] != 0 and s not in after),
            "status_took_s_median": statistics.median(took) if took else None}
        self.data["status_samples"] = [
            {**s, "t": round(s["t"] - self.times["reshard_start"], 3)}
            for s in self.status_samples]
        if not lag_b:
            self.fail("no status sample showed a streaming move")
        if failed:
            self.fail(f"{len(failed)} reshard status calls failed while streaming: "
                      + failed[0].get("output", "")[-300:])
        lag = self.data["lag"]
        if lag["status_failures_copying"]:
            first = next(s for s in self.status_samples if s["rc"] != 0)
            log(f"note: {lag['status_failures_copying']} reshard status calls failed while "
                "`start` was copying: " + first.get("output", "").splitlines()[0][:200])
        if lag_b:
            log(f"lag while streaming ({lag['samples']} samples): bytes max {lag['bytes_max']:,} "
                f"median {lag['bytes_median']:,.0f}; seconds max {lag['s_max']:.1f} "
                f"median {lag['s_median']:.1f}; last before the cutover: "
                + ", ".join(f"{m} {v['lag_bytes']:,} bytes {v['lag_s']:.1f} s"
                            for m, v in last.items()))

    # ---- what pgbench saw ----

    def pgbench_result(self):
        out = self.pgbench_out.read_text(errors="replace")
        rc = self.procs["pgbench"].returncode
        xacts = re.search(r"number of transactions actually processed: (\d+)", out)
        failed = re.search(r"number of failed transactions: (\d+)", out)
        tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
        res = {"exit": rc, "transactions": int(xacts.group(1)) if xacts else None,
               "failed": int(failed.group(1)) if failed else None,
               "tps": float(tps.group(1)) if tps else None, "output_tail": out[-1500:]}
        if rc != 0:
            self.fail(f"pgbench exited {rc}: {out[-500:]}")
        if res["transactions"] is None:
            self.fail("pgbench printed no transaction count")
        if res["failed"]:
            self.fail(f"pgbench: {res['failed']} failed transactions")
        if re.search(r"\baborted\b", out):
            self.fail("pgbench: a client aborted")
        self.data["pgbench"] = res
        return res

    def latencies(self):
        """Every transaction: (start, end, latency ms), from pgbench's logs
        (time_epoch.time_us is when the transaction completed)."""
        tx, bad = [], 0
        for path in sorted(WORK.glob("pgbench.*")):
            if path.name == self.pgbench_out.name:
                continue
            with open(path) as fh:
                for line in fh:
                    f = line.split()
                    if len(f) < 6:
                        continue
                    if not f[2].isdigit():
                        bad += 1
                        continue
                    lat_us = int(f[2])
                    end = int(f[4]) + int(f[5]) / 1e6
                    tx.append((end - lat_us / 1e6, end, lat_us / 1000.0))
        tx.sort()
        return tx, bad

    def analyse(self, res):
        tx, bad = self.latencies()
        if bad:
            self.fail(f"{bad} pgbench log lines are not a completed transaction")
        if res["transactions"] is not None and len(tx) != res["transactions"]:
            self.fail(f"pgbench log has {len(tx)} transactions, its summary {res['transactions']}")
        if not tx:
            raise RuntimeError("pgbench logged no transaction")

        def stats(sel):
            lat = sorted(x[2] for x in sel)
            return {"n": len(lat), "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                    "max_ms": lat[-1] if lat else None}

        t = self.times
        first, last = tx[0][0], max(x[1] for x in tx)
        windows = [("before", first, t["reshard_start"]),
                   ("copy", t["reshard_start"], t["copy_done"]),
                   ("streaming", t["copy_done"], t["cut_start"]),
                   ("cutover", t["cut_start"], t["cut_end"]),
                   ("after", t["cut_end"], last)]
        phases = []
        for name, a, b in windows:
            ended = sum(1 for x in tx if a <= x[1] < b)
            phases.append({"phase": name, "seconds": round(b - a, 3),
                           "tps": round(ended / (b - a), 1) if b > a else None,
                           **stats([x for x in tx if a <= x[0] < b])})
        cut = stats([x for x in tx if t["cut_start"] <= x[0] <= t["cut_end"]])
        hold = (stats([x for x in tx if t["hold"] <= x[0] <= t["release"]])
                if "hold" in t else None)
        overlapping = stats([x for x in tx if x[0] <= t["cut_end"] and x[1] >= t["cut_start"]])
        per_second = {}
        for x in tx:
            sec = int(x[1] - first)
            n, mx = per_second.get(sec, (0, 0.0))
            per_second[sec] = (n + 1, max(mx, x[2]))
        self.data["latency"] = {
            "overall": stats(tx), "cut_window": cut, "hold_window": hold,
            "overlapping_cut": overlapping,
            "phases": phases,
            "per_second": [{"s": s, "tps": n, "max_ms": round(mx, 2)}
                           for s, (n, mx) in sorted(per_second.items())],
            "times": {k: round(v - first, 3) for k, v in t.items()},
            "first_transaction_epoch": first}

    # ---- correctness ----

    def verify(self, res):
        counts, sums = {}, {}
        for s, p in SHARD_PORTS.items():
            c, n = psql(p, f"select count(*), coalesce(sum(n), 0) from {TABLE}").split("|")
            counts[s], sums[s] = int(c), int(n)
        self.data["rows_after"] = counts
        self.data["sum_n_after"] = sums
        total, sum_n = sum(counts.values()), sum(sums.values())
        log(f"after: rows {', '.join(f'{s} {c:,}' for s, c in counts.items())} "
            f"(total {total:,}); sum(n) {sum_n:,}; pgbench transactions {res['transactions']}")
        if total != self.args.rows:
            self.fail(f"{total} rows over the shards, not {self.args.rows}")
        if res["transactions"] is not None and sum_n != res["transactions"]:
            self.fail(f"sum(n) over the shards is {sum_n}, pgbench completed "
                      f"{res['transactions']} transactions")
        if not 0.25 * self.args.rows < counts["s2"] < 0.42 * self.args.rows:
            self.fail(f"s2 holds {counts['s2']} rows: not about a third of {self.args.rows}")
        # Every row where NEW puts it: all the keys, routed by NEW.
        keys = [str(k) for k in range(1, self.args.rows + 1)]
        routed = dict(zip(keys, route_keys(self.ctl_bin, self.new, TABLE, keys,
                                           tuple(SHARD_PORTS))))
        misplaced, seen = [], {}
        for s, p in SHARD_PORTS.items():
            for key in psql(p, f"select id from {TABLE}").split():
                seen.setdefault(key, []).append(s)
        for key, shards in seen.items():
            if shards != [routed.get(key)]:
                misplaced.append((key, shards, routed.get(key)))
        missing = [k for k in keys if k not in seen]
        if misplaced or missing:
            self.fail(f"{len(misplaced)} rows not (only) on NEW's shard, e.g. {misplaced[:5]}; "
                      f"{len(missing)} keys missing, e.g. {missing[:5]}")
        # And a sample, each key looked up on every shard.
        rng = random.Random(2)
        sample = rng.sample(keys, min(SAMPLE_KEYS, len(keys)))
        sample_routed = route_keys(self.ctl_bin, self.new, TABLE, sample, tuple(SHARD_PORTS))
        found = {}
        arr = "{" + ",".join(sample) + "}"
        for s, p in SHARD_PORTS.items():
            for key in psql(p, f"select id from {TABLE} where id = any('{arr}'::bigint[])").split():
                found.setdefault(key, []).append(s)
        bad_sample = [(k, found.get(k), r) for k, r in zip(sample, sample_routed)
                      if found.get(k) != [r]]
        if bad_sample:
            self.fail(f"sample: {len(bad_sample)} of {len(sample)} keys not exactly on NEW's "
                      f"shard, e.g. {bad_sample[:5]}")
        self.data["placement"] = {"keys_checked": len(keys), "misplaced": len(misplaced),
                                  "missing": len(missing), "sample": len(sample),
                                  "sample_bad": len(bad_sample)}
        # Nothing of the move left behind.
        left = []
        for s, p in SHARD_PORTS.items():
            out = psql(p, "select slot_name from pg_replication_slots union all "
                          "select pubname from pg_publication").split()
            left += [f"{s}:{x}" for x in out]
        if left:
            self.fail(f"replication objects left after cleanup: {left}")
        if not self.args.no_replica:
            self.lab("wait", "--timeout", "120")
            rc = int(psql(S2_REPLICA_PORT, f"select count(*) from {TABLE}").strip())
            self.data["s2_replica_rows"] = rc
            if rc != counts["s2"]:
                self.fail(f"s2's replica has {rc} rows, s2 {counts['s2']}")
        log("checks: " + ("all passed" if not self.failures else
                          f"{len(self.failures)} FAILED"))

    # ---- reporting ----

    def report(self):
        d, a = self.data, self.args
        lat, cut = d["latency"], d["cutover"]
        lag = d["lag"]
        rows = []
        for c in d["copy"]["moves"]:
            rows.append([f"copy {c['source']} -> {c['target']}", f"{c['rows_per_s']:,.0f} rows/s",
                         f"{c['rows']:,} rows in {c['seconds']:.2f} s"])
        rows.append(["copy phase, wall clock", f"{d['copy']['rows_per_s_wall']:,} rows/s",
                     f"{d['copy']['rows']:,} rows in {d['copy']['wall_s']:.2f} s (launch of "
                     "`reshard start` to its last copy line)"])
        if lag["bytes_max"] is not None:
            rows.append(["lag while streaming, bytes", f"{lag['bytes_max']:,} max",
                         f"median {lag['bytes_median']:,.0f} ({lag['samples']} status samples "
                         f"over {a.stream_seconds:g} s)"])
            rows.append(["lag while streaming, seconds", f"{lag['s_max']:.1f} max",
                         f"median {lag['s_median']:.1f}"])
            rows.append(["lag at the last sample before the cutover",
                         f"{max(v['lag_s'] for v in lag['last_before_cutover'].values()):.1f} s",
                         ", ".join(f"{m}: {v['lag_bytes']:,} bytes, {v['lag_s']:.1f} s"
                                   for m, v in lag["last_before_cutover"].items())])
        steps = ", ".join(f"{k} {v}" for k, v in cut["steps_ms"].items())
        rows.append(["cutover: moving keys held", f"{cut['held_ms']} ms", steps])
        rows.append(["cutover command, wall clock", f"{cut['wall_ms']:.0f} ms",
                     f"{cut['pre_hold_ms']:.0f} ms before the hold, "
                     f"{cut['pgshard_reported_hold_ms']} ms held (pgshard's log), "
                     f"{cut['post_release_ms']:.0f} ms after the release"
                     if cut.get("pre_hold_ms") is not None else "hold not found in pgshard's log"])

        def lat_row(name, s):
            return [name, f"{fmt_ms(s['p99_ms'])} ms p99",
                    f"max {fmt_ms(s['max_ms'])} ms, p50 {fmt_ms(s['p50_ms'])} ms, "
                    f"{s['n']:,} transactions"]
        rows.append(lat_row("latency, all transactions", lat["overall"]))
        rows.append(lat_row("latency, started in the cutover command", lat["cut_window"]))
        if lat.get("hold_window"):
            rows.append(lat_row("latency, started during the hold", lat["hold_window"]))
        for p in lat["phases"]:
            rows.append([f"TPS {p['phase']}", fmt_tps(p["tps"]),
                         f"over {p['seconds']:.1f} s; p99 {fmt_ms(p['p99_ms'])} ms, "
                         f"max {fmt_ms(p['max_ms'])} ms"])
        rows.append(["cleanup", f"{d['cleanup']['seconds']:.1f} s",
                     f"{d['cleanup']['deleted']:,} rows deleted from the sources"])
        rows.append(["checks", "passed" if not self.failures else
                     f"{len(self.failures)} FAILED", ""])
        header = ["measure", "value", "detail"]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        print()
        for r in [header, ["-" * w for w in widths], *rows]:
            print(f"{r[0].ljust(widths[0])}  {r[1].rjust(widths[1])}  {r[2]}".rstrip())
        for f in self.failures:
            print(f"FAILED: {f}")

        la = d["loadavg"]
        meta = (f"{a.rows:,} rows (payload ~100 bytes) in users, hash on id (xxh3), from s0+s1 "
                f"to s0+s1+s2 with `reshard slots`; s2 "
                f"{'without a replica' if a.no_replica else 'with one streaming replica'}. "
                f"Load through pgshard: pgbench -c {a.clients} -j {min(a.jobs, a.clients)} "
                f"-M {a.mode} -T {a.duration} (update n + 1, then read it, one random id), "
                f"transaction pooling, pool_size {a.pool_size} per node, workers {a.workers}; "
                f"{a.before} s of load before `reshard start`, cutover after "
                f"{a.stream_seconds} s of streaming. {stamp()}; build {self.build} "
                f"(pgshard built {built(self.pgshard_bin)}, pgshardctl {built(self.ctl_bin)}). "
                f"Load average {la.get('start')} at the start, {la.get('cutover')} at the "
                f"cutover, {la.get('end_of_load')} at the end of the load.")
        md = ["# Resharding under load: 2 shards to 3 (pgshardctl reshard)", "", meta, "",
              "| " + " | ".join(header) + " |", "|---|---:|---|",
              *("| " + " | ".join(r) + " |" for r in rows), ""]
        if self.failures:
            md += ["Failed checks:", ""] + [f"- {f}" for f in self.failures] + [""]
        md += ["Checks: pgbench exit 0 and no failed transaction; sum(n) over the shards = "
               "the transactions pgbench completed; row count = --rows; every row on exactly "
               "the shard NEW names (all keys routed by `pgshardctl route --stdin NEW`, and a "
               f"{SAMPLE_KEYS:,}-key sample looked up on every shard); pgshard's file is NEW "
               "after the cut; no slot or publication left; s2's replica has s2's rows.", "",
               "The cut window runs from the start to the end of the `reshard cutover` "
               "command (its process included); a transaction's start is its completion "
               "time in pgbench's log (time_epoch.time_us) minus its latency. TPS per phase "
               "counts the transactions that completed in it; p99/max those that started in "
               "it. Everything else (status samples, per-second TPS, each tool's output): "
               "reshard.json.", ""]
        out_dir = Path(a.out)
        d["meta"] = meta
        d["args"] = vars(a)
        d["failures"] = self.failures
        write_results(out_dir, a.name, md, d)
        log(f"wrote {out_dir}/{a.name}.md, {a.name}.json")
        return not self.failures

    # ---- teardown ----

    def cleanup(self):
        problems = []
        for name in ("pgbench", "reshard start", "pgshard"):
            proc = self.procs.get(name)
            stop_process(name, proc, problems, check_exit=(name == "pgshard"))
        return self.lab.release((*SHARD_PORTS.values(), S2_REPLICA_PORT, PROXY_PORT), WORK,
                                self.args.keep, problems)


def built(binary):
    """BINARY's modification time: which tree a build is can differ from HEAD."""
    return datetime.datetime.fromtimestamp(binary.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default=str(REPO / "build"),
                        help="build directory with pgshard and pgshardctl (default: build)")
    parser.add_argument("--rows", type=int, default=1000000,
                        help="rows in users (default 1000000)")
    parser.add_argument("--duration", type=int, default=None,
                        help="pgbench -T: spans load before, copy, streaming, cutover and "
                             "after (default 30 + rows/20000 s)")
    parser.add_argument("--before", type=float, default=5,
                        help="seconds of load before reshard start (default 5)")
    parser.add_argument("--stream-seconds", type=float, default=5,
                        help="seconds of streaming before the cutover (default 5)")
    parser.add_argument("--copy-timeout", type=float, default=600,
                        help="give up if the copy takes longer (default 600 s)")
    parser.add_argument("-c", "--clients", type=int, default=8, help="pgbench clients (default 8)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="pgbench threads (default 2)")
    parser.add_argument("-M", "--mode", default="simple", choices=["simple", "extended"],
                        help="pgbench -M (default simple)")
    parser.add_argument("--no-replica", action="store_true", help="s2 without a replica")
    add_pgshard_options(parser, pool_size=8)
    add_output_options(parser, "NAME.md/.json", WORK)
    parser.add_argument("--name", default="reshard",
                        help="results file stem (default reshard)")
    args = parser.parse_args()
    if args.duration is None:
        args.duration = 30 + args.rows // 20000
    if args.rows < 1000 or args.duration < 1 or args.clients < 1 or args.jobs < 1:
        parser.error("--rows must be at least 1000; --duration, -c and -j positive")

    bench = ReshardBench(args)
    require_binaries(parser, args.build, bench.ctl_bin, bench.pgshard_bin)

    def body():
        bench.start_lab()
        bench.write_configs()
        bench.load()
        bench.plan()
        bench.start_proxy()
        bench.move()
        res = bench.pgbench_result()
        bench.analyse(res)
        bench.verify(res)
        return bench.report()

    return run_guarded(body, bench.cleanup,
                       [("pgshard log tail", bench.pgshard_log),
                        ("reshard start output", bench.start_log),
                        ("pgbench output", bench.pgbench_out)])


if __name__ == "__main__":
    sys.exit(main())
