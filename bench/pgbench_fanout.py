#!/usr/bin/python3
"""pgbench: cross-shard (fan-out) reads through pgshard over 2 shards vs the
same reads on ONE plain PostgreSQL holding every row.

The lab (`pgshardctl lab up --no-proxy`, ports 7980-7989, data under /tmp)
starts three PostgreSQL 15 primaries: s0 (7980) and s1 (7981), the two
shards of database app, and one more (7982) that holds all the rows in
database app. Table fan_t (id bigint primary key, grp, score, amount, name,
created; an index on (score, id)) gets --rows rows: each row is copied onto
the shard `pgshardctl route --stdin` names for its id (hash), and every row
into the single server.

Targets, side by side in the same run:

  pgshard  127.0.0.1:7985  pgshard (build/pgshard) over s0 + s1, fan_t hash
                           on id: the reads below have no key, so each runs
                           on both shards and pgshard merges the rows
  direct   127.0.0.1:7982  the single PostgreSQL, no proxy
  pgshard1 127.0.0.1:7986  (--passthrough) pgshard over the single server as
                           its one shard: the proxy hop without the fan-out

Workloads (pgbench custom scripts, one statement per transaction):

  count   SELECT count(*) FROM fan_t
  topn    SELECT id, score, name FROM fan_t ORDER BY score DESC, id DESC LIMIT 20
  group   SELECT grp, count(*), sum(amount) FROM fan_t WHERE score < 100000
          GROUP BY grp ORDER BY sum(amount) DESC, grp LIMIT 10

Each cell (workload x -M simple/extended) runs `pgbench -n -f SCRIPT -c N
-j 2 -T SECS` against every target, repetitions interleaved with the order
rotated; latency average and TPS come from pgbench's summary, p50/p99 from
its per-transaction log (-l). Medians over the repetitions; the table gives
latency RATIOS pgshard / direct (and pgshard / pgshard1 with
--passthrough): what merging over 2 shards costs against one server that
has everything.

COPY: `\copy fan_copy FROM file` (--copy-rows rows, default 1,000,000;
200,000 with --quick; text format, id bigint key + two columns) with psql
through pgshard, which splits the rows by key over both shards, and into
the single server; interleaved repetitions, the table empty before each;
rows/s and the time ratio. Every row's count is checked after each run.

Before measuring, each query runs once through pgshard and directly: a
refused query (0A000 until cross-shard reads land) or a different answer
is reported and pgshard's cells are n/a (the direct runs still happen), and
the exit status is 1 — no pgbench run against a target that cannot answer.

Bounded: default about 2.5 minutes (3 reps x 3 s), --quick about 30 s.
Everything started here is stopped in a finally block (proxies by SIGTERM,
then `lab down --purge`), also on Ctrl-C and SIGTERM.

  /usr/bin/python3 bench/pgbench_fanout.py --build build
  /usr/bin/python3 bench/pgbench_fanout.py --build build --quick
"""
import datetime
import os
import random
import sys
import time
from pathlib import Path

from benchlib import (BenchBase, about, add_client_options, add_output_options,
                      add_pgshard_options, bench_parser, check_config, connect_args, copy_in,
                      fmt_ms, fmt_ratio, fmt_tps, hash_table_section, loadavg, log, md_table,
                      median_or_none, pgshard_ini, split_choices,
                      psql, ratio, require_binaries, rotated, route_keys, run, run_guarded,
                      run_pgbench, shard_section, stamp, start_pgshard, start_two_shard_lab,
                      stop_process, write_results)

PORT_BASE = 7980
S0_PORT, S1_PORT, SOLO_PORT = PORT_BASE, PORT_BASE + 1, PORT_BASE + 2
LAB_PROXY_PORT = PORT_BASE + 3  # named in the lab config, never started (--no-proxy)
PGSHARD_PORT = PORT_BASE + 5
PASSTHROUGH_PORT = PORT_BASE + 6
WORK = Path(f"/tmp/pgshard-bench-fanout-{PORT_BASE}")
TABLE = "fan_t"
SHARDS = {"s0": S0_PORT, "s1": S1_PORT}

WORKLOADS = {
    "count": f"SELECT count(*) FROM {TABLE}",
    "topn": f"SELECT id, score, name FROM {TABLE} ORDER BY score DESC, id DESC LIMIT 20",
    "group": (f"SELECT grp, count(*), sum(amount) FROM {TABLE} WHERE score < 100000"
              " GROUP BY grp ORDER BY sum(amount) DESC, grp LIMIT 10"),
}

COPY_TABLE = "fan_copy"
MODE_CHOICES = ["simple", "extended", "prepared"]  # what --modes may name

TABLE_SECTION = hash_table_section(TABLE, "id") + hash_table_section(COPY_TABLE, "id")


class FanoutBench(BenchBase):
    def __init__(self, args):
        super().__init__(args, WORK / "lab.ini", WORK / "lab")
        self.latency_dir = WORK / "latency"
        self.preflight = {}   # (target, workload) -> None (ok) or an error
        self.targets = ["pgshard", "direct"] + (["pgshard1"] if args.passthrough else [])

    def config_path(self, target):
        return WORK / f"pgshard-{target}.ini"

    def log_path(self, target):
        return WORK / f"pgshard-{target}.log"

    def port(self, target):
        return {"pgshard": PGSHARD_PORT, "direct": SOLO_PORT, "pgshard1": PASSTHROUGH_PORT}[target]

    def conninfo(self, target):
        if target == "direct":
            return f"host=127.0.0.1 port={SOLO_PORT} dbname=app user=postgres connect_timeout=10"
        return (f"host=127.0.0.1 port={self.port(target)} dbname=app user=app password=secret "
                "connect_timeout=10")

    # ---- setup ----

    def start_lab(self):
        start_two_shard_lab(
            self.lab, WORK, "bench/pgbench_fanout.py: two shards for app, one server with every "
            "row", S0_PORT, S1_PORT, SOLO_PORT, LAB_PROXY_PORT,
            "\n[database.solo]\n" + shard_section("solo", "s0", SOLO_PORT),
            f"the single server on {SOLO_PORT}")

    def write_proxy_configs(self):
        def config(target, port, comment, shards):
            self.config_path(target).write_text(pgshard_ini(
                f"written by bench/pgbench_fanout.py: {comment}", port, self.args.workers,
                self.args.pool_size, shards, database_extra="cross_shard_writes = allow\n"))
            check_config(self.ctl_bin, self.config_path(target))

        config("pgshard", PGSHARD_PORT, "2 shards, reads merged",
               shard_section("app", "s0", S0_PORT) + shard_section("app", "s1", S1_PORT)
               + TABLE_SECTION)
        config("pgshard1", PASSTHROUGH_PORT, "the single server as one shard",
               shard_section("app", "s0", SOLO_PORT))

    def load(self):
        n = self.args.rows
        log(f"loading {n} rows into {TABLE}: routed onto s0/s1, all onto the single server")
        ddl = (f"drop table if exists {TABLE}; create table {TABLE} (id bigint primary key, "
               "grp int not null, score int not null, amount numeric(12,2), name text, "
               "created timestamptz not null); "
               f"create index {TABLE}_score on {TABLE} (score, id)")
        for port in (S0_PORT, S1_PORT, SOLO_PORT):
            psql(port, ddl)
        keys = [str(k) for k in range(1, n + 1)]
        routed = route_keys(self.ctl_bin, self.config_path("pgshard"), TABLE, keys, SHARDS)
        rng = random.Random(7)
        parts = {"s0": [], "s1": [], "solo": []}
        epoch = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        for key, shard in zip(keys, routed):
            amount = "\\N" if rng.random() < 0.02 else f"{rng.randint(-100000, 10000000) / 100:.2f}"
            created = (epoch + datetime.timedelta(seconds=rng.randint(0, 3 * 10 ** 7))).isoformat()
            row = (f"{key}\t{rng.randint(0, 99)}\t{rng.randint(0, 10 ** 6)}\t{amount}\t"
                   f"name-{rng.randint(0, 10 ** 5)}\t{created}\n")
            parts[shard].append(row)
            parts["solo"].append(row)
        copy = f"\\copy {TABLE} (id, grp, score, amount, name, created) from stdin"
        for name, port in (("s0", S0_PORT), ("s1", S1_PORT), ("solo", SOLO_PORT)):
            copy_in(port, "app", copy, "".join(parts[name]), f"{name} ({port})")
        counts = {}
        for name, port in (("s0", S0_PORT), ("s1", S1_PORT), ("solo", SOLO_PORT)):
            psql(port, "vacuum analyze", "checkpoint")
            counts[name] = int(psql(port, f"select count(*) from {TABLE}").strip())
        log("rows: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if counts["s0"] + counts["s1"] != n or not (counts["s0"] and counts["s1"]) \
                or counts["solo"] != n:
            raise RuntimeError(f"load: row counts {counts} do not add up to {n}")
        self.counts = counts
        self.latency_dir.mkdir(parents=True, exist_ok=True)
        for name, sql in WORKLOADS.items():
            (WORK / f"{name}.sql").write_text(sql + ";\n")

    def start_proxies(self):
        for target in self.targets:
            if target == "direct":
                continue
            port = self.port(target)
            log(f"pgshard {target} on {port} (workers {self.args.workers}, pool_size "
                f"{self.args.pool_size} per node)")
            start_pgshard(self.procs, f"pgshard {target}", self.pgshard_bin,
                          self.config_path(target), port, self.log_path(target))

    def check_targets(self):
        """Each query once per target: a target that refuses it or answers
        differently from the single server gets n/a for that workload, with
        the reason, instead of a pgbench run that fails for its duration."""
        for workload, sql in WORKLOADS.items():
            answers = {}
            for target in self.targets:
                proc = run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", self.conninfo(target),
                            "-c", sql], env=dict(os.environ, PGCONNECT_TIMEOUT="10"),
                           timeout=60, check=False)
                if proc.returncode != 0:
                    self.preflight[(target, workload)] = (
                        f"refused: {proc.stderr.strip() or proc.stdout.strip()}")
                else:
                    answers[target] = proc.stdout
                    self.preflight[(target, workload)] = None
            want = answers.get("direct")
            for target, got in answers.items():
                if want is not None and got != want:
                    self.preflight[(target, workload)] = (
                        f"answered differently from the single server: {got[:200]!r} vs "
                        f"{want[:200]!r}")
            for target in self.targets:
                problem = self.preflight[(target, workload)]
                log(f"preflight {workload:<5} {target:<8} "
                    + ("ok" if problem is None else problem.splitlines()[0][:300]))

    # ---- measuring ----

    def pgbench(self, target, workload, mode, duration, latency=True):
        prefix = self.latency_dir / f"{target}-{workload}-{mode}-{len(self.runs)}"
        jobs = min(self.args.jobs, self.args.clients)
        return run_pgbench(
            ["-n", "-M", mode, "-f", str(WORK / f"{workload}.sql"),
             "-c", str(self.args.clients), "-j", str(jobs), "-T", str(duration)],
            connect_args(SOLO_PORT, "postgres") if target == "direct"
            else connect_args(self.port(target), "app"), duration + 30,
            keys=("tps", "latency_ms", "p50_ms", "p99_ms", "latency_samples", "seconds", "error"),
            latency_prefix=prefix if latency else None, need_latency_avg=True)

    def cells(self):
        return [(w, m) for w in self.args.workloads for m in self.args.modes]

    def measure(self):
        cells = self.cells()
        usable = {c: [t for t in self.targets if self.preflight.get((t, c[0])) is None]
                  for c in cells}
        runs = sum(len(v) for v in usable.values()) * self.args.reps
        total = runs * (self.args.duration + 0.4)
        log(f"measuring {len(cells)} cells x {self.args.reps} reps over "
            f"{', '.join(self.targets)} ({runs} runs of {self.args.duration}s) = about "
            f"{about(total)}")
        if self.args.warmup:
            for target in self.targets:
                for workload in self.args.workloads:
                    if self.preflight.get((target, workload)) is None:
                        self.pgbench(target, workload, "simple", 1, latency=False)
                        break
        for workload, mode in cells:
            targets = usable[(workload, mode)]
            for rep in range(self.args.reps):
                for target in rotated(targets, rep):
                    res = self.pgbench(target, workload, mode, self.args.duration)
                    res.update(target=target, workload=workload, mode=mode, rep=rep)
                    self.runs.append(res)
                    shown = (f"{res['latency_ms']:.3f} ms avg, {res['tps']:.0f} tps"
                             if res["error"] is None else res["error"])
                    log(f"  {workload:<5} -M {mode:<8} rep {rep + 1} {target:<8} {shown}")
            for target in self.targets:
                if target not in targets:
                    self.runs.append({"target": target, "workload": workload, "mode": mode,
                                      "rep": None, "tps": None, "latency_ms": None,
                                      "p50_ms": None, "p99_ms": None,
                                      "error": self.preflight[(target, workload)]})

    def copy_bench(self):
        """Time psql's \\copy of --copy-rows rows through pgshard and direct."""
        n = self.args.copy_rows
        data = WORK / "copy.tsv"
        with open(data, "w") as f:
            for base in range(0, n, 100000):
                f.write("".join(f"{i}\t{i % 97}\tname {i}\n"
                                for i in range(base + 1, min(n, base + 100000) + 1)))
        ddl = (f"drop table if exists {COPY_TABLE}; create table {COPY_TABLE} "
               "(id bigint primary key, grp int not null, name text)")
        for port in (S0_PORT, S1_PORT, SOLO_PORT):
            psql(port, ddl)
        self.copies = []
        log(f"COPY {n} rows: {self.args.reps} interleaved reps through pgshard and direct")
        for rep in range(self.args.reps):
            for target in rotated(["pgshard", "direct"], rep):
                for port in (S0_PORT, S1_PORT, SOLO_PORT):
                    psql(port, f"truncate {COPY_TABLE}")
                cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.conninfo(target),
                       "-c", f"\\copy {COPY_TABLE} (id, grp, name) FROM '{data}'"]
                t0 = time.monotonic()
                proc = run(cmd, check=False, timeout=600)
                secs = time.monotonic() - t0
                ports = (S0_PORT, S1_PORT) if target == "pgshard" else (SOLO_PORT,)
                got = sum(int(psql(p, f"select count(*) from {COPY_TABLE}").strip())
                          for p in ports)
                error = None
                if proc.returncode != 0:
                    error = (proc.stderr or proc.stdout).strip()[:300]
                elif got != n:
                    error = f"{got} rows after COPY, expected {n}"
                self.copies.append({"target": target, "rep": rep, "seconds": secs,
                                    "error": error})
                log(f"  copy rep {rep + 1} {target:<8} "
                    + (f"{secs:.2f} s, {n / secs:,.0f} rows/s" if error is None else error))

    def copy_report(self):
        if not getattr(self, "copies", None):
            return []
        n = self.args.copy_rows
        med = {t: median_or_none([c["seconds"] for c in self.copies
                                  if c["target"] == t and c["error"] is None])
               for t in ("pgshard", "direct")}
        rows = {t: "n/a" if med[t] is None else f"{med[t]:.2f} s ({n / med[t]:,.0f} rows/s)"
                for t in med}
        return ["", f"COPY of {n:,} rows (psql \\copy, text format), median of "
                f"{self.args.reps} interleaved repetitions:", "",
                "| target | time | ratio |", "|---|---:|---:|",
                f"| direct (one server) | {rows['direct']} | 1.00 |",
                f"| pgshard (split over 2 shards) | {rows['pgshard']} | "
                f"{fmt_ratio(ratio(med['pgshard'], med['direct']))} |"]

    # ---- reporting ----

    def summary(self):
        rows = []
        for workload, mode in self.cells():
            row = {"workload": workload, "mode": mode}
            for target in self.targets:
                mine = [r for r in self.runs if r["target"] == target
                        and r["workload"] == workload and r["mode"] == mode]
                errors = [r["error"] for r in mine if r["error"]]
                for key in ("latency_ms", "p50_ms", "p99_ms", "tps"):
                    row[f"{target}_{key}"] = None if errors else \
                        median_or_none([r[key] for r in mine])
                row[f"{target}_errors"] = errors
            for key in ("latency_ms", "p99_ms"):
                row[f"ratio_{key}"] = ratio(row[f"pgshard_{key}"], row[f"direct_{key}"])
                if "pgshard1" in self.targets:
                    row[f"ratio1_{key}"] = ratio(row[f"pgshard_{key}"], row[f"pgshard1_{key}"])
            rows.append(row)
        return rows

    def report(self, rows):
        out_dir = Path(self.args.out)
        header = ["workload", "-M", "direct avg ms", "pgshard avg ms", "avg ratio",
                  "direct p99 ms", "pgshard p99 ms", "p99 ratio", "direct TPS", "pgshard TPS"]
        if "pgshard1" in self.targets:
            header += ["pgshard1 avg ms", "pgshard/pgshard1 avg"]
        table = []
        for r in rows:
            line = [r["workload"], r["mode"], fmt_ms(r["direct_latency_ms"], 3),
                    fmt_ms(r["pgshard_latency_ms"], 3), fmt_ratio(r["ratio_latency_ms"]),
                    fmt_ms(r["direct_p99_ms"], 3), fmt_ms(r["pgshard_p99_ms"], 3),
                    fmt_ratio(r["ratio_p99_ms"]), fmt_tps(r["direct_tps"]),
                    fmt_tps(r["pgshard_tps"])]
            if "pgshard1" in self.targets:
                line += [fmt_ms(r["pgshard1_latency_ms"], 3), fmt_ratio(r["ratio1_latency_ms"])]
            table.append(line)
        jobs = min(self.args.jobs, self.args.clients)
        meta = (f"{self.args.rows} rows in {TABLE} (2 shards: s0 {self.counts['s0']}, s1 "
                f"{self.counts['s1']}; the single server: all); pgbench -c {self.args.clients} "
                f"-j {jobs}, {self.args.duration} s per run, median of {self.args.reps} "
                f"interleaved repetitions; pgshard workers {self.args.workers}, pool_size "
                f"{self.args.pool_size} per node, transaction pooling, auth trust. {stamp()}, "
                f"load average {loadavg()}.")
        md = ["# pgbench: fan-out reads, pgshard over 2 shards vs one PostgreSQL with every row",
              "", meta, "", "Queries:", ""]
        md += [f"- `{w}`: `{WORKLOADS[w]}`" for w in self.args.workloads]
        md += ["", *md_table(header, table, left=2)]
        md += self.copy_report()
        errors = [(r["workload"], r["mode"], t, e) for r in rows for t in self.targets
                  for e in r[f"{t}_errors"]]
        errors += [("copy", "-", c["target"], c["error"]) for c in getattr(self, "copies", [])
                   if c["error"]]
        if errors:
            md += ["", "Errors:", ""]
            seen = set()
            for w, m, t, e in errors:
                if (w, t, e) not in seen:
                    seen.add((w, t, e))
                    md.append(f"- {w} {t}: {e.splitlines()[0][:300]}")
        md += ["", "Ratios are pgshard over 2 shards / the single server (latency: above 1.00 "
               "means pgshard is slower). On a small machine the three servers, the proxy "
               "and pgbench share the same cores, so 2 shards add processes, not CPU. `n/a`: "
               "the target failed in that cell (see Errors). Raw runs: pgbench_fanout.json.",
               ""]
        print()
        print("\n".join(md))
        write_results(out_dir, "pgbench_fanout", md, {
            "meta": meta, "args": vars(self.args), "rows_per_server": self.counts,
            "preflight": {f"{t} {w}": e for (t, w), e in self.preflight.items()},
            "runs": self.runs, "summary": rows, "copies": getattr(self, "copies", [])})
        log(f"wrote {out_dir}/pgbench_fanout.md, pgbench_fanout.json")
        if errors:
            log(f"FAILED: {len(errors)} run(s) or preflight checks failed; pgshard's first "
                f"problem: {next((e for _, _, t, e in errors if t != 'direct'), errors[0][3])}"
                .splitlines()[0][:400])
        return not errors

    # ---- teardown ----

    def cleanup(self):
        problems = []
        for name, proc in self.procs.items():
            stop_process(name, proc, problems)
        return self.lab.release((S0_PORT, S1_PORT, SOLO_PORT, PGSHARD_PORT, PASSTHROUGH_PORT),
                                WORK, self.args.keep, problems)


def main():
    parser = bench_parser(__doc__, duration=3)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test (~30 s): 50 000 rows, 1 s runs, 1 rep, no warm-up")
    add_client_options(parser, clients=4)
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--rows", type=int, default=None,
                        help="rows in fan_t (default 200000; 50000 with --quick)")
    parser.add_argument("--copy-rows", type=int, default=None,
                        help="rows in the COPY measurement (default 1000000; 200000 with "
                             "--quick; 0: skip it)")
    add_pgshard_options(parser, pool_size=8)
    parser.add_argument("--passthrough", action="store_true",
                        help="also measure pgshard over the single server (1 shard): the "
                             "proxy hop without the fan-out (adds a third of the time)")
    parser.add_argument("--setup-only", action="store_true",
                        help="start the lab, load, start and check the proxies, then clean up")
    add_output_options(parser, "pgbench_fanout.md/.json", WORK)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.reps = 1, 1
        if args.rows is None:
            args.rows = 50000
    if args.rows is None:
        args.rows = 200000
    if args.copy_rows is None:
        args.copy_rows = 200000 if args.quick else 1000000
    args.warmup = not args.quick
    args.modes = split_choices(parser, "--modes", args.modes, MODE_CHOICES)
    args.workloads = split_choices(parser, "--workloads", args.workloads, list(WORKLOADS))
    if args.rows < 100 or args.duration < 1 or args.reps < 1 or args.clients < 1 or args.jobs < 1:
        parser.error("--rows (>= 100), --duration, --reps, -c and -j must be positive")

    bench = FanoutBench(args)
    require_binaries(parser, args.build, bench.ctl_bin, bench.pgshard_bin)

    def body():
        log(f"load average {loadavg()} on {os.cpu_count()} CPUs")
        bench.start_lab()
        bench.write_proxy_configs()
        bench.load()
        bench.start_proxies()
        bench.check_targets()
        if args.setup_only:
            log("--setup-only: lab, load and proxies are up; not measuring")
            return True
        bench.measure()
        if args.copy_rows > 0:
            bench.copy_bench()
        return bench.report(bench.summary())

    started = time.monotonic()
    status = run_guarded(body, bench.cleanup,
                         [(f"pgshard {t} log tail", bench.log_path(t))
                          for t in bench.targets if t != "direct"])
    log(f"done in {time.monotonic() - started:.0f}s")
    return status


if __name__ == "__main__":
    sys.exit(main())
