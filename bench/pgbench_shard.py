#!/usr/bin/python3
"""pgbench through pgshard over 2 shards vs through pgshard over 1 shard.

The lab (`pgshardctl lab up --no-proxy`, ports 7950-7969, data under /tmp)
starts three PostgreSQL 15 primaries: s0 (7950) and s1 (7951) of the sharded
database, and one more (7952) that holds the passthrough database (dbname
app) and the two colocated shards (dbname bench_s0 and bench_s1). Table
bench_accounts (aid bigint primary key, like pgbench_accounts) gets --rows
rows: on the sharded and the colocated side each row is copied straight onto
the shard `pgshardctl route --stdin` names (hash on aid, each proxy's own
config); the passthrough database gets all of them. Three pgshard processes
(`build/pgshard -c FILE`, same workers, pool size per node, auth) are put in
front:

  sharded      127.0.0.1:7955  database app = s0 (7950) + s1 (7951),
               [table.app.bench_accounts] hash
  passthrough  127.0.0.1:7956  database app = one shard on 7952 (no shard map
               unless --map-on-passthrough)
  colocated    127.0.0.1:7957  database app = s0 (7952, dbname bench_s0) +
               s1 (7952, dbname bench_s1), the same hash map as sharded

The ratios:

  colocated/passthrough  what routing costs in the proxy: the same single
                         server, the same rows and the same load, only split
                         over two shards the proxy must route between
                         (statement analysis, key extraction, two pools).
  sharded/passthrough    that plus the effect of a second PostgreSQL server:
                         on a machine with few cores the two servers share
                         them, so this mostly measures CPU contention, not the
                         proxy.

The workload is a pgbench custom script: a random key, a single-key SELECT
and a single-key UPDATE (autocommit, one statement per round trip). Every
cell (-M simple, -M extended by default) runs --duration seconds against
each target; each repetition rotates which target goes first, and the
median TPS of --reps repetitions is reported per target with both ratios.
Results: a table on stdout, bench/results/pgbench_shard.md and
pgbench_shard.json (every run).

Everything started here is stopped in a finally block (proxies by SIGTERM,
then `lab down --purge`), also on Ctrl-C and SIGTERM.

  /usr/bin/python3 bench/pgbench_shard.py --build build               # default run (~2.5 min)
  /usr/bin/python3 bench/pgbench_shard.py --build build --setup-only  # no pgbench runs
"""
import argparse
import datetime
import io
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgbench_compare import (Interrupted, fmt_ratio, fmt_tps, log,  # noqa: E402
                             ratio, release_lab, run, stop_process, wait_port)

REPO = Path(__file__).resolve().parents[1]
PORT_BASE = 7950
S0_PORT, S1_PORT, SOLO_PORT = PORT_BASE, PORT_BASE + 1, PORT_BASE + 2
LAB_PROXY_PORT = PORT_BASE + 3  # named in the lab config, never started (--no-proxy)
PROXY_PORTS = {"sharded": PORT_BASE + 5, "passthrough": PORT_BASE + 6,
               "colocated": PORT_BASE + 7}
TARGETS = ["sharded", "passthrough", "colocated"]
# The colocated shards: two databases on the passthrough server.
COLOCATED_DBS = {"s0": "bench_s0", "s1": "bench_s1"}
# Every database holding bench_accounts: name -> (port, dbname).
SERVER_DBS = {"s0": (S0_PORT, "app"), "s1": (S1_PORT, "app"),
              "passthrough": (SOLO_PORT, "app"),
              "colocated s0": (SOLO_PORT, COLOCATED_DBS["s0"]),
              "colocated s1": (SOLO_PORT, COLOCATED_DBS["s1"])}
WORK = Path(f"/tmp/pgshard-bench-shard-{PORT_BASE}")
TABLE = "bench_accounts"

TABLE_SECTION = f"""
[table.app.{TABLE}]
column = aid
type = bigint
strategy = hash
"""


def start_two_shard_lab(bench, work, title, s0_port, s1_port, solo_port, lab_proxy_port,
                        extra_sections, solo_what):
    """`lab up --no-proxy` for BENCH (its lab_config, lab_dir, lab()): shards
    s0 and s1 of database app, and a third server on SOLO_PORT whose
    databases EXTRA_SECTIONS names; waits until the three listen."""
    work.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    bench.lab_config.write_text(f"""\
; written by {title}
[pgshard]
listen = 127.0.0.1:{lab_proxy_port}
auth = trust

[user.app]
password = secret

[database.app]
[shard.app.s0]
primary = host=127.0.0.1 port={s0_port} dbname=app user=postgres
[shard.app.s1]
primary = host=127.0.0.1 port={s1_port} dbname=app user=postgres
""" + extra_sections)
    if bench.lab_dir.exists():
        bench.lab("down", "--purge", check=False)
    log(f"lab up: s0 on {s0_port}, s1 on {s1_port}, {solo_what}, data in {bench.lab_dir}")
    bench.lab_started = True
    bench.lab("up", "--no-proxy")
    for port in (s0_port, s1_port, solo_port):
        wait_port(port, 60, what=f"lab server {port}")


class ShardBench:
    def __init__(self, args):
        self.args = args
        self.build = Path(args.build).resolve()
        self.pgshard_bin = self.build / "pgshard"
        self.ctl_bin = self.build / "pgshardctl"
        self.lab_config = WORK / "lab.ini"
        self.lab_dir = WORK / "lab"
        self.script = WORK / "select_update.sql"
        self.procs = {}      # target -> Popen
        self.lab_started = False
        self.runs = []       # every pgbench run: dict
        self.preflight = {}  # target -> None (ok) or an error

    def config_path(self, target):
        return WORK / f"pgshard-{target}.ini"

    def log_path(self, target):
        return WORK / f"pgshard-{target}.log"

    # ---- setup ----

    def lab(self, *verb, check=True, timeout=300):
        cmd = [str(self.ctl_bin), "lab", *verb, "-c", str(self.lab_config),
               "--dir", str(self.lab_dir)]
        for attempt in range(30):
            try:
                return run(cmd, timeout=timeout, check=check)
            except OSError:
                # pgshardctl is being relinked by a concurrent build (EACCES,
                # ETXTBSY): wait for it rather than leave servers running.
                if attempt == 29:
                    raise
                time.sleep(1)

    def start_lab(self):
        start_two_shard_lab(
            self, WORK, "bench/pgbench_shard.py: two shards for app, one server for "
            "passthrough\n; and for colocated (two databases on that server)",
            S0_PORT, S1_PORT, SOLO_PORT, LAB_PROXY_PORT, f"""
[database.passthrough]
[shard.passthrough.s0]
primary = host=127.0.0.1 port={SOLO_PORT} dbname=app user=postgres

[database.colocated]
[shard.colocated.s0]
primary = host=127.0.0.1 port={SOLO_PORT} dbname={COLOCATED_DBS['s0']} user=postgres
[shard.colocated.s1]
primary = host=127.0.0.1 port={SOLO_PORT} dbname={COLOCATED_DBS['s1']} user=postgres
""", f"passthrough and colocated ({', '.join(COLOCATED_DBS.values())}) on {SOLO_PORT}")

    def write_proxy_configs(self):
        common = f"""\
[pgshard]
workers = {self.args.workers}
auth = trust
log_format = text
max_client_conn = 1000

[user.app]
password = secret

[database.app]
pool_mode = transaction
pool_size = {self.args.pool_size}
"""
        self.config_path("sharded").write_text(
            "; written by bench/pgbench_shard.py: 2 shards\n"
            + common.replace("[pgshard]\n",
                             f"[pgshard]\nlisten = 127.0.0.1:{PROXY_PORTS['sharded']}\n")
            + f"""
[shard.app.s0]
primary = host=127.0.0.1 port={S0_PORT} dbname=app user=postgres
[shard.app.s1]
primary = host=127.0.0.1 port={S1_PORT} dbname=app user=postgres
""" + TABLE_SECTION)
        self.config_path("passthrough").write_text(
            "; written by bench/pgbench_shard.py: 1 shard (passthrough)\n"
            + common.replace("[pgshard]\n",
                             f"[pgshard]\nlisten = 127.0.0.1:{PROXY_PORTS['passthrough']}\n")
            + f"""
[shard.app.s0]
primary = host=127.0.0.1 port={SOLO_PORT} dbname=app user=postgres
""" + (TABLE_SECTION if self.args.map_on_passthrough else ""))
        self.config_path("colocated").write_text(
            "; written by bench/pgbench_shard.py: 2 shards, two databases on one server\n"
            + common.replace("[pgshard]\n",
                             f"[pgshard]\nlisten = 127.0.0.1:{PROXY_PORTS['colocated']}\n")
            + f"""
[shard.app.s0]
primary = host=127.0.0.1 port={SOLO_PORT} dbname={COLOCATED_DBS['s0']} user=postgres
[shard.app.s1]
primary = host=127.0.0.1 port={SOLO_PORT} dbname={COLOCATED_DBS['s1']} user=postgres
""" + TABLE_SECTION)
        for target in TARGETS:
            proc = run([str(self.ctl_bin), "check", str(self.config_path(target))], check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"pgshardctl check {self.config_path(target)}:\n"
                                   f"{proc.stdout}{proc.stderr}")

    def psql(self, port, *sql, dbname="app", timeout=600):
        cmd = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
               "-p", str(port), "-U", "postgres", "-d", dbname]
        for s in sql:
            cmd += ["-c", s]
        return run(cmd, timeout=timeout).stdout

    def route(self, target, keys):
        """{key: shard} for KEYS from `pgshardctl route --stdin` on TARGET's config."""
        n = len(keys)
        proc = subprocess.run([str(self.ctl_bin), "route", "--stdin",
                               str(self.config_path(target)), "app", TABLE],
                              input="\n".join(keys) + "\n", capture_output=True, text=True,
                              timeout=600)
        lines = proc.stdout.splitlines()
        if proc.returncode != 0 or len(lines) != n:
            raise RuntimeError(f"pgshardctl route --stdin ({target}): exit {proc.returncode}, "
                               f"{len(lines)} lines for {n} keys: {proc.stderr.strip()}")
        shards = []
        for key, line in zip(keys, lines):
            k, shard = line.split("\t")
            if k != key or shard not in COLOCATED_DBS:
                raise RuntimeError(f"pgshardctl route --stdin ({target}): unexpected line "
                                   f"{line!r}")
            shards.append(shard)
        return shards

    def load(self):
        n = self.args.rows
        log(f"loading {n} rows into {TABLE}: routed onto s0/s1 and onto bench_s0/bench_s1, "
            "all into the passthrough database")
        ddl = (f"drop table if exists {TABLE}; create table {TABLE} (aid bigint primary key, "
               "bid int not null, abalance int not null, filler char(84))")
        for port, dbname in SERVER_DBS.values():
            self.psql(port, ddl, dbname=dbname)
        keys = [str(k) for k in range(1, n + 1)]
        sharded_route = self.route("sharded", keys)
        colocated_route = self.route("colocated", keys)
        data = {name: io.StringIO() for name in SERVER_DBS}
        rng = random.Random(1)
        for key, sh, co in zip(keys, sharded_route, colocated_route):
            row = f"{key}\t{(int(key) - 1) // 100000 + 1}\t{rng.randint(-5000, 5000)}\t\n"
            data[sh].write(row)
            data["colocated " + co].write(row)
            data["passthrough"].write(row)
        self.same_split = sharded_route == colocated_route
        copy = f"\\copy {TABLE} (aid, bid, abalance, filler) from stdin"
        for name, (port, dbname) in SERVER_DBS.items():
            proc = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h",
                                   "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", dbname,
                                   "-c", copy], input=data[name].getvalue(), capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"COPY into {name} ({port}/{dbname}): {proc.stderr.strip()}")
        counts = {}
        for name, (port, dbname) in SERVER_DBS.items():
            self.psql(port, "vacuum analyze", "checkpoint", dbname=dbname)
            counts[name] = int(self.psql(port, f"select count(*) from {TABLE}",
                                         dbname=dbname).strip())
        log("rows: " + ", ".join(f"{name} {c}" for name, c in counts.items())
            + ("" if self.same_split else " (sharded and colocated split the keys differently)"))
        for a, b in (("s0", "s1"), ("colocated s0", "colocated s1")):
            if counts[a] + counts[b] != n or not (counts[a] and counts[b]):
                raise RuntimeError(f"load: row counts {counts}: {a} + {b} do not add up to {n} "
                                   "or one is empty")
        if counts["passthrough"] != n:
            raise RuntimeError(f"load: row counts {counts}: passthrough is not {n}")
        self.counts = counts
        self.script.write_text(f"""\
\\set aid random(1, {n})
SELECT abalance FROM {TABLE} WHERE aid = :aid;
UPDATE {TABLE} SET abalance = abalance + 1 WHERE aid = :aid;
""")

    def start_proxies(self):
        for target in TARGETS:
            port = PROXY_PORTS[target]
            log(f"pgshard {target} on {port} (workers {self.args.workers}, pool_size "
                f"{self.args.pool_size} per node)")
            logf = open(self.log_path(target), "ab")
            self.procs[target] = subprocess.Popen(
                [str(self.pgshard_bin), "-c", str(self.config_path(target))],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
            wait_port(port, 15, self.procs[target], f"pgshard {target}", self.log_path(target))

    def check_targets(self):
        """One keyed read through each proxy: a target that cannot answer is
        reported (its cells n/a) instead of failing pgbench for minutes."""
        for target in TARGETS:
            cmd = ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                   f"host=127.0.0.1 port={PROXY_PORTS[target]} dbname=app user=app "
                   "password=secret connect_timeout=10",
                   "-c", f"SELECT aid FROM {TABLE} WHERE aid = 1",
                   "-c", f"SELECT aid FROM {TABLE} WHERE aid = {self.args.rows}"]
            proc = run(cmd, timeout=30, check=False)
            expected = f"1\n{self.args.rows}\n"
            if proc.returncode != 0 or proc.stdout != expected:
                self.preflight[target] = (f"preflight: exit {proc.returncode}: "
                                          + (proc.stderr.strip() or proc.stdout.strip()))
                log(f"{target}: {self.preflight[target]}")
            else:
                self.preflight[target] = None
                log(f"{target}: keyed reads answered")

    # ---- measuring ----

    def pgbench(self, target, mode, duration):
        jobs = min(self.args.jobs, self.args.clients)
        cmd = ["pgbench", "-n", "-M", mode, "-f", str(self.script),
               "-c", str(self.args.clients), "-j", str(jobs), "-T", str(duration),
               "-h", "127.0.0.1", "-p", str(PROXY_PORTS[target]), "-U", "app", "app"]
        env = dict(os.environ, PGPASSWORD="secret", PGCONNECT_TIMEOUT="10")
        started = time.monotonic()
        try:
            proc = run(cmd, env=env, timeout=duration + 60, check=False)
        except subprocess.TimeoutExpired:
            return {"tps": None, "error": f"pgbench timed out after {duration + 60}s"}
        out = proc.stdout + proc.stderr
        tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
        failed = re.search(r"number of failed transactions: (\d+)", out)
        result = {"tps": float(tps.group(1)) if tps and proc.returncode == 0 else None,
                  "seconds": round(time.monotonic() - started, 2), "error": None}
        if proc.returncode != 0 or not tps:
            result["error"] = (f"exit {proc.returncode}: "
                               + " | ".join(out.strip().splitlines()[-3:]))
        elif failed and int(failed.group(1)) > 0:
            result["error"] = f"{failed.group(1)} failed transactions"
        return result

    def measure(self):
        targets = [t for t in TARGETS if self.preflight.get(t) is None]
        if targets:
            log("warm-up: 1 s per target")
            for target in targets:
                self.pgbench(target, "simple", 1)
        total = len(self.args.modes) * self.args.reps * len(targets) * self.args.duration
        log(f"measuring {len(self.args.modes)} modes x {self.args.reps} reps x {len(targets)} "
            f"targets x {self.args.duration}s = about {total // 60}m{total % 60:02d}s")
        for mode in self.args.modes:
            for rep in range(self.args.reps):
                shift = rep % len(targets)
                order = targets[shift:] + targets[:shift]
                for target in order:
                    res = self.pgbench(target, mode, self.args.duration)
                    res.update(target=target, mode=mode, rep=rep)
                    self.runs.append(res)
                    shown = f"{res['tps']:.0f} tps" if res["tps"] is not None else res["error"]
                    log(f"  -M {mode:<8} rep {rep + 1} {target:<11} {shown}")
        for target in TARGETS:
            if self.preflight.get(target):
                for mode in self.args.modes:
                    self.runs.append({"target": target, "mode": mode, "rep": None, "tps": None,
                                      "error": self.preflight[target]})

    def updates_per_server(self):
        """UPDATEs each database counted (pg_stat_user_tables): both shards
        of sharded and of colocated must have had a share of the load."""
        time.sleep(1.5)  # statistics are flushed at most once a second
        self.updates = {}
        for name, (port, dbname) in SERVER_DBS.items():
            out = self.psql(port, "select coalesce(sum(n_tup_upd), 0) from pg_stat_user_tables"
                            f" where relname = '{TABLE}'", dbname=dbname)
            self.updates[name] = int(out.strip())
        log("UPDATEs counted by the servers: "
            + ", ".join(f"{name} {c}" for name, c in self.updates.items()))

    # ---- reporting ----

    def summary(self):
        rows = []
        for mode in self.args.modes:
            row = {"cell": f"-M {mode} -c {self.args.clients}", "mode": mode}
            for target in TARGETS:
                mine = [r for r in self.runs if r["target"] == target and r["mode"] == mode]
                values = [r["tps"] for r in mine if r["tps"] is not None]
                errors = [r["error"] for r in mine if r["error"]]
                row[target] = statistics.median(values) if values and not errors else None
                row[target + "_runs"] = values
                row[target + "_errors"] = errors
            row["sharded/passthrough"] = ratio(row["sharded"], row["passthrough"])
            row["colocated/passthrough"] = ratio(row["colocated"], row["passthrough"])
            rows.append(row)
        return rows

    def report(self, rows):
        out_dir = Path(self.args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        header = ["cell", "sharded TPS (2 servers)", "passthrough TPS (1 shard)",
                  "colocated TPS (2 dbs, 1 server)", "sharded/passthrough",
                  "colocated/passthrough"]
        table = [[r["cell"], fmt_tps(r["sharded"]), fmt_tps(r["passthrough"]),
                  fmt_tps(r["colocated"]), fmt_ratio(r["sharded/passthrough"]),
                  fmt_ratio(r["colocated/passthrough"])] for r in rows]
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
        print()
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        print("  ".join("-" * w for w in widths))
        for t in table:
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(t, widths))))
        errors = [(r["cell"], t, e) for r in rows for t in TARGETS for e in r[t + "_errors"]]
        for cell, target, error in errors[:20]:
            print(f"error: {cell} {target}: {error}")

        commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                     check=False).stdout.strip()
        jobs = min(self.args.jobs, self.args.clients)
        meta = (f"pgbench custom script (random aid in 1..{self.args.rows}: single-key SELECT + "
                f"single-key UPDATE), -c {self.args.clients} -j {jobs}, "
                f"{self.args.duration} s per run, median of {self.args.reps} interleaved "
                f"repetitions; transaction pooling, pool_size {self.args.pool_size} per node, "
                f"auth trust, pgshard workers {self.args.workers}; passthrough shard map: "
                f"{'yes' if self.args.map_on_passthrough else 'no'}. "
                f"Commit {commit or '?'}, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
                f"{os.cpu_count()} CPUs, {platform.machine()}.")
        md = ["# pgbench: pgshard over 2 shards (2 servers; 2 databases on 1 server) vs "
              "pgshard over 1 shard", "", meta, "",
              "| " + " | ".join(header) + " |",
              "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        md += ["| " + " | ".join(t) + " |" for t in table]
        if errors:
            md += ["", "Errors:", ""] + [f"- {c} {t}: {e}" for c, t, e in errors]
        md += ["", "colocated/passthrough: what routing costs in the proxy (the same one "
               "server, its rows split over two databases the proxy routes between). "
               "sharded/passthrough: that plus a second PostgreSQL server, which on a machine "
               "with few cores shares them with the first. Ratio above 1.00: that setup served "
               "more transactions per second than passthrough. `n/a`: a target failed in that "
               "cell. Raw runs: pgbench_shard.json.", ""]
        (out_dir / "pgbench_shard.md").write_text("\n".join(md))
        (out_dir / "pgbench_shard.json").write_text(json.dumps(
            {"meta": meta, "args": vars(self.args), "rows_per_db": getattr(self, "counts", None),
             "same_split_sharded_colocated": getattr(self, "same_split", None),
             "updates_per_server": getattr(self, "updates", None),
             "runs": self.runs, "summary": rows}, indent=2))
        log(f"wrote {out_dir}/pgbench_shard.md, pgbench_shard.json")
        return not errors

    # ---- teardown ----

    def cleanup(self):
        problems = []
        for target, proc in self.procs.items():
            stop_process(f"pgshard {target}", proc, problems)
        return release_lab(self, (S0_PORT, S1_PORT, SOLO_PORT, *PROXY_PORTS.values()), WORK,
                           problems)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default=str(REPO / "build"),
                        help="build directory with pgshard and pgshardctl (default: build)")
    parser.add_argument("--duration", type=int, default=6, help="seconds per run (default 6)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per cell (default 3)")
    parser.add_argument("-c", "--clients", type=int, default=8, help="pgbench clients (default 8)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="pgbench threads (default 2)")
    parser.add_argument("--modes", default="simple,extended",
                        help="pgbench -M modes, comma-separated (default simple,extended)")
    parser.add_argument("--rows", type=int, default=100000,
                        help="rows in bench_accounts (default 100000)")
    parser.add_argument("--workers", type=int, default=2, help="pgshard workers (default 2)")
    parser.add_argument("--pool-size", type=int, default=8,
                        help="pgshard pool_size, server connections per node (default 8)")
    parser.add_argument("--map-on-passthrough", action="store_true",
                        help="give the 1-shard database the same [table] section (statement "
                             "analysis included in the baseline)")
    parser.add_argument("--setup-only", action="store_true",
                        help="start the lab, load, start and check the proxies, then clean up")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"),
                        help="where to write pgbench_shard.md/.json")
    parser.add_argument("--keep", action="store_true", help=f"keep {WORK} (logs) afterwards")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or any(m not in ("simple", "extended", "prepared") for m in args.modes):
        parser.error("--modes: choose from simple,extended,prepared")
    if args.rows < 1 or args.duration < 1 or args.reps < 1 or args.clients < 1 or args.jobs < 1:
        parser.error("--rows, --duration, --reps, -c and -j must be positive")

    bench = ShardBench(args)
    for binary in (bench.ctl_bin, bench.pgshard_bin):
        if not binary.exists():
            parser.error(f"{binary} not found: build first (cmake --build {args.build})")

    def on_signal(signum, frame):
        raise Interrupted(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    ok = False
    try:
        bench.start_lab()
        bench.write_proxy_configs()
        bench.load()
        bench.start_proxies()
        bench.check_targets()
        if args.setup_only:
            ok = True
            log("--setup-only: lab, load and proxies are up; not measuring")
        else:
            bench.measure()
            bench.updates_per_server()
            ok = bench.report(bench.summary())
    except (Interrupted, KeyboardInterrupt) as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}): cleaning up")
    except Exception as exc:  # noqa: BLE001 - report, clean up, fail
        log(f"error: {exc}")
        for target in TARGETS:
            if bench.log_path(target).exists():
                log(f"pgshard {target} log tail:\n"
                    + bench.log_path(target).read_text(errors="replace")[-2000:])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        clean = bench.cleanup()
    return 0 if ok and clean else 1


if __name__ == "__main__":
    sys.exit(main())
