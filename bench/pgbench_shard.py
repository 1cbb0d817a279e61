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
import io
import random
import sys
import time
from pathlib import Path

from benchlib import (BenchBase, about, add_client_options, add_output_options,
                      add_pgshard_options, bench_parser, cell_summary, check_config,
                      connect_args, copy_in, fmt_ratio, fmt_tps, hash_table_section, log,
                      md_table, pgshard_ini, print_table, psql, ratio, require_binaries,
                      rotated, route_keys, row_errors, run, run_guarded, run_pgbench,
                      shard_section, split_choices, stamp, start_pgshard, start_two_shard_lab,
                      stop_process, write_results)

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
MODE_CHOICES = ["simple", "extended", "prepared"]  # what --modes may name

TABLE_SECTION = hash_table_section(TABLE, "aid")


class ShardBench(BenchBase):
    def __init__(self, args):
        super().__init__(args, WORK / "lab.ini", WORK / "lab")
        self.script = WORK / "select_update.sql"
        self.preflight = {}  # target -> None (ok) or an error

    def config_path(self, target):
        return WORK / f"pgshard-{target}.ini"

    def log_path(self, target):
        return WORK / f"pgshard-{target}.log"

    # ---- setup ----

    def start_lab(self):
        start_two_shard_lab(
            self.lab, WORK, "bench/pgbench_shard.py: two shards for app, one server for "
            "passthrough\n; and for colocated (two databases on that server)",
            S0_PORT, S1_PORT, SOLO_PORT, LAB_PROXY_PORT, "\n[database.passthrough]\n"
            + shard_section("passthrough", "s0", SOLO_PORT) + "\n[database.colocated]\n"
            + shard_section("colocated", "s0", SOLO_PORT, COLOCATED_DBS["s0"])
            + shard_section("colocated", "s1", SOLO_PORT, COLOCATED_DBS["s1"]),
            f"passthrough and colocated ({', '.join(COLOCATED_DBS.values())}) on {SOLO_PORT}")

    def write_proxy_configs(self):
        def config(target, comment, shards):
            self.config_path(target).write_text(pgshard_ini(
                f"written by bench/pgbench_shard.py: {comment}", PROXY_PORTS[target],
                self.args.workers, self.args.pool_size, shards))

        config("sharded", "2 shards", shard_section("app", "s0", S0_PORT)
               + shard_section("app", "s1", S1_PORT) + TABLE_SECTION)
        config("passthrough", "1 shard (passthrough)", shard_section("app", "s0", SOLO_PORT)
               + (TABLE_SECTION if self.args.map_on_passthrough else ""))
        config("colocated", "2 shards, two databases on one server",
               shard_section("app", "s0", SOLO_PORT, COLOCATED_DBS["s0"])
               + shard_section("app", "s1", SOLO_PORT, COLOCATED_DBS["s1"]) + TABLE_SECTION)
        for target in TARGETS:
            check_config(self.ctl_bin, self.config_path(target))

    def route(self, target, keys):
        """The shard for each of KEYS from `pgshardctl route --stdin` on TARGET's config."""
        return route_keys(self.ctl_bin, self.config_path(target), TABLE, keys, COLOCATED_DBS,
                          f"pgshardctl route --stdin ({target})")

    def load(self):
        n = self.args.rows
        log(f"loading {n} rows into {TABLE}: routed onto s0/s1 and onto bench_s0/bench_s1, "
            "all into the passthrough database")
        ddl = (f"drop table if exists {TABLE}; create table {TABLE} (aid bigint primary key, "
               "bid int not null, abalance int not null, filler char(84))")
        for port, dbname in SERVER_DBS.values():
            psql(port, ddl, dbname=dbname)
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
            copy_in(port, dbname, copy, data[name].getvalue(), f"{name} ({port}/{dbname})")
        counts = {}
        for name, (port, dbname) in SERVER_DBS.items():
            psql(port, "vacuum analyze", "checkpoint", dbname=dbname)
            counts[name] = int(psql(port, f"select count(*) from {TABLE}", dbname=dbname).strip())
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
            start_pgshard(self.procs, f"pgshard {target}", self.pgshard_bin,
                          self.config_path(target), port, self.log_path(target))

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
        return run_pgbench(["-n", "-M", mode, "-f", str(self.script),
                            "-c", str(self.args.clients), "-j", str(jobs), "-T", str(duration)],
                           connect_args(PROXY_PORTS[target], "app"), duration + 60)

    def measure(self):
        targets = [t for t in TARGETS if self.preflight.get(t) is None]
        if targets:
            log("warm-up: 1 s per target")
            for target in targets:
                self.pgbench(target, "simple", 1)
        total = len(self.args.modes) * self.args.reps * len(targets) * self.args.duration
        log(f"measuring {len(self.args.modes)} modes x {self.args.reps} reps x {len(targets)} "
            f"targets x {self.args.duration}s = about {about(total)}")
        for mode in self.args.modes:
            for rep in range(self.args.reps):
                for target in rotated(targets, rep):
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
            out = psql(port, "select coalesce(sum(n_tup_upd), 0) from pg_stat_user_tables"
                       f" where relname = '{TABLE}'", dbname=dbname)
            self.updates[name] = int(out.strip())
        log("UPDATEs counted by the servers: "
            + ", ".join(f"{name} {c}" for name, c in self.updates.items()))

    # ---- reporting ----

    def summary(self):
        rows = cell_summary(self.runs, [(f"-M {m} -c {self.args.clients}", {"mode": m})
                                        for m in self.args.modes], TARGETS)
        for row in rows:
            row["sharded/passthrough"] = ratio(row["sharded"], row["passthrough"])
            row["colocated/passthrough"] = ratio(row["colocated"], row["passthrough"])
        return rows

    def report(self, rows):
        out_dir = Path(self.args.out)
        header = ["cell", "sharded TPS (2 servers)", "passthrough TPS (1 shard)",
                  "colocated TPS (2 dbs, 1 server)", "sharded/passthrough",
                  "colocated/passthrough"]
        table = [[r["cell"], fmt_tps(r["sharded"]), fmt_tps(r["passthrough"]),
                  fmt_tps(r["colocated"]), fmt_ratio(r["sharded/passthrough"]),
                  fmt_ratio(r["colocated/passthrough"])] for r in rows]
        errors = row_errors(rows, TARGETS)
        print_table(header, table, errors)

        jobs = min(self.args.jobs, self.args.clients)
        meta = (f"pgbench custom script (random aid in 1..{self.args.rows}: single-key SELECT + "
                f"single-key UPDATE), -c {self.args.clients} -j {jobs}, "
                f"{self.args.duration} s per run, median of {self.args.reps} interleaved "
                f"repetitions; transaction pooling, pool_size {self.args.pool_size} per node, "
                f"auth trust, pgshard workers {self.args.workers}; passthrough shard map: "
                f"{'yes' if self.args.map_on_passthrough else 'no'}. {stamp()}.")
        md = ["# pgbench: pgshard over 2 shards (2 servers; 2 databases on 1 server) vs "
              "pgshard over 1 shard", "", meta, "", *md_table(header, table)]
        if errors:
            md += ["", "Errors:", ""] + [f"- {c} {t}: {e}" for c, t, e in errors]
        md += ["", "colocated/passthrough: what routing costs in the proxy (the same one "
               "server, its rows split over two databases the proxy routes between). "
               "sharded/passthrough: that plus a second PostgreSQL server, which on a machine "
               "with few cores shares them with the first. Ratio above 1.00: that setup served "
               "more transactions per second than passthrough. `n/a`: a target failed in that "
               "cell. Raw runs: pgbench_shard.json.", ""]
        write_results(out_dir, "pgbench_shard", md, {
            "meta": meta, "args": vars(self.args), "rows_per_db": getattr(self, "counts", None),
            "same_split_sharded_colocated": getattr(self, "same_split", None),
            "updates_per_server": getattr(self, "updates", None),
            "runs": self.runs, "summary": rows})
        log(f"wrote {out_dir}/pgbench_shard.md, pgbench_shard.json")
        return not errors

    # ---- teardown ----

    def cleanup(self):
        problems = []
        for name, proc in self.procs.items():
            stop_process(name, proc, problems)
        return self.lab.release((S0_PORT, S1_PORT, SOLO_PORT, *PROXY_PORTS.values()), WORK,
                                self.args.keep, problems)


def main():
    parser = bench_parser(__doc__, duration=6)
    add_client_options(parser, clients=8)
    parser.add_argument("--rows", type=int, default=100000,
                        help="rows in bench_accounts (default 100000)")
    add_pgshard_options(parser, pool_size=8)
    parser.add_argument("--map-on-passthrough", action="store_true",
                        help="give the 1-shard database the same [table] section (statement "
                             "analysis included in the baseline)")
    parser.add_argument("--setup-only", action="store_true",
                        help="start the lab, load, start and check the proxies, then clean up")
    add_output_options(parser, "pgbench_shard.md/.json", WORK)
    args = parser.parse_args()
    args.modes = split_choices(parser, "--modes", args.modes, MODE_CHOICES)
    if args.rows < 1 or args.duration < 1 or args.reps < 1 or args.clients < 1 or args.jobs < 1:
        parser.error("--rows, --duration, --reps, -c and -j must be positive")

    bench = ShardBench(args)
    require_binaries(parser, args.build, bench.ctl_bin, bench.pgshard_bin)

    def body():
        bench.start_lab()
        bench.write_proxy_configs()
        bench.load()
        bench.start_proxies()
        bench.check_targets()
        if args.setup_only:
            log("--setup-only: lab, load and proxies are up; not measuring")
            return True
        bench.measure()
        bench.updates_per_server()
        return bench.report(bench.summary())

    return run_guarded(body, bench.cleanup,
                       [(f"pgshard {t} log tail", bench.log_path(t)) for t in TARGETS])


if __name__ == "__main__":
    sys.exit(main())
