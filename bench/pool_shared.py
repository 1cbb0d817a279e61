#!/usr/bin/python3
"""pool_size shared by the workers vs split among them, and PgBouncer, same run.

pgshard used to give each worker thread a fixed share of pool_size; now the
workers' pools of a node are one pool (servers move to the worker whose
clients wait). This bench runs both side by side, with PgBouncer as the
reference, in front of one PostgreSQL 15 primary (`pgshardctl lab up
--no-proxy`, ports 7650-7659, data under /tmp):

  shared     BUILD/pgshard             (this tree; workers = 2)
  split      BASELINE/pgshard          (--baseline: a build of a commit with
                                        the split pool, e.g. git worktree add
                                        /tmp/split 4ec31fc and cmake there)
  pgbouncer  Debian's pgbouncer        (default_pool_size = the same)

all with transaction pooling and pool_size 10 (--pool-size). Cells: pgbench
-S -M simple and -M prepared at -c 64, the TPC-B-like script -M prepared at
-c 64 (row locks: clients wait on each other inside transactions), and the
TPC-B-like script -M prepared at -c 10 -j 2, which hung through the split
pool (a run that times out is reported as such). Each repetition runs the
targets in a rotated order; the table gives median TPS and the ratios.

  /usr/bin/python3 bench/pool_shared.py --build build --baseline /tmp/split/build
  /usr/bin/python3 bench/pool_shared.py --build build --baseline ... --quick
"""
import sys
from pathlib import Path

from benchlib import (BenchBase, about, add_output_options, bench_parser, cell_summary,
                      connect_args, fmt_ratio, fmt_tps, init_pgbench, log, md_table, one_primary_lab, pgshard_ini,
                      prepare_work, print_table, ratio, require_binaries, rotated, row_errors,
                      run_guarded, run_pgbench, shard_section, split_choices, stamp,
                      start_pgbouncer, start_pgshard, stop_process, write_results)

PORT_BASE = 7650
PRIMARY_PORT = PORT_BASE
SHARED_PORT = PORT_BASE + 1
SPLIT_PORT = PORT_BASE + 2
PGBOUNCER_PORT = PORT_BASE + 3
LAB_PROXY_PORT = PORT_BASE + 4  # named in the lab config, never started (--no-proxy)
WORK = Path(f"/tmp/pgshard-bench-{PORT_BASE}")
TARGETS = ["shared", "split", "pgbouncer"]
PORTS = {"shared": SHARED_PORT, "split": SPLIT_PORT, "pgbouncer": PGBOUNCER_PORT}
# (name, pgbench options). Prepared cells have more clients than servers
# only with -S: pgbench prepares synchronously (PQprepare) on a client's
# first transaction, so with the TPC-B-like script's row locks and fewer
# servers than clients it can deadlock through any transaction pooler (its
# blocked thread's other clients hold the servers and the locks). PgBouncer
# 1.18 (Debian 12) has no prepared statements in transaction pooling: it
# runs the simple and extended cells only.
CELLS = [
    ("-S simple -c 64", ["-S", "-M", "simple", "-c", "64", "-j", "2"]),
    ("-S extended -c 64", ["-S", "-M", "extended", "-c", "64", "-j", "2"]),
    ("-S prepared -c 64", ["-S", "-M", "prepared", "-c", "64", "-j", "2"]),
    ("tpcb extended -c 64", ["-M", "extended", "-c", "64", "-j", "2"]),
    ("tpcb prepared -c 10", ["-M", "prepared", "-c", "10", "-j", "2"]),
]


class Bench(BenchBase):
    def __init__(self, args):
        super().__init__(args, WORK / "lab.ini", WORK / "lab")
        self.baseline_bin = Path(args.baseline).resolve() / "pgshard" if args.baseline else None
        self.cells = [CELLS[i - 1] for i in args.cells] if args.cells else CELLS

    def start_lab(self):
        prepare_work(WORK)
        self.lab.config.write_text(one_primary_lab(
            "written by bench/pool_shared.py: one primary for the benchmark", LAB_PROXY_PORT,
            self.args.pool_size, PRIMARY_PORT))
        self.lab.up(f"primary on {PRIMARY_PORT}", (PRIMARY_PORT,), what="lab primary")
        # 64 clients each holding a server at -c 64 through PgBouncer is
        # not the point; the server has room for every target's pool.
        log(f"pgbench -i -s {self.args.scale}")
        init_pgbench(PRIMARY_PORT, self.args.scale)

    def start_pgshard(self, name, binary, port):
        config = WORK / f"{name}.ini"
        config.write_text(pgshard_ini(
            f"written by bench/pool_shared.py ({name})", port, self.args.workers,
            self.args.pool_size, shard_section("app", "s0", PRIMARY_PORT), auth="trust"))
        log(f"pgshard {name} on {port} ({binary}, workers {self.args.workers}, pool_size "
            f"{self.args.pool_size})")
        start_pgshard(self.procs, name, binary, config, port, WORK / f"{name}.log")

    def measure(self):
        targets = self.args.targets
        log("warm-up: 1 s per target")
        for target in targets:
            self.pgbench(target, ["-S", "-c", "16", "-j", "2"], 1)
        total = len(self.cells) * self.args.reps * len(targets) * self.args.duration
        log(f"measuring {len(self.cells)} cells x {self.args.reps} reps x {len(targets)} targets x "
            f"{self.args.duration}s = about {about(total)}")
        for cell, options in self.cells:
            for rep in range(self.args.reps):
                for target in rotated(targets, rep):
                    if target == "pgbouncer" and "prepared" in options:
                        continue
                    res = self.pgbench(target, options, self.args.duration)
                    res.update(target=target, cell=cell, rep=rep)
                    self.runs.append(res)
                    shown = f"{res['tps']:.0f} tps" if res["tps"] is not None else res["error"]
                    log(f"  {cell:<20} rep {rep + 1} {target:<9} {shown}")

    def pgbench(self, target, options, duration):
        return run_pgbench(["-n", *options, "-T", str(duration)],
                           connect_args(PORTS[target], "app"), duration + 30)

    def report(self):
        rows = cell_summary(self.runs, [(c, {"cell": c}) for c, _ in self.cells], self.args.targets)
        for row in rows:
            row["shared/split"] = ratio(row.get("shared"), row.get("split"))
            row["shared/pgbouncer"] = ratio(row.get("shared"), row.get("pgbouncer"))
        header = ["cell", "shared TPS", "split TPS", "pgbouncer TPS", "shared/split",
                  "shared/pgbouncer"]
        table = [[r["cell"], fmt_tps(r.get("shared")), fmt_tps(r.get("split")),
                  fmt_tps(r.get("pgbouncer")), fmt_ratio(r["shared/split"]),
                  fmt_ratio(r["shared/pgbouncer"])] for r in rows]
        errors = row_errors(rows, self.args.targets)
        print_table(header, table, errors)
        meta = (f"pgbench scale {self.args.scale}, {self.args.duration} s per run, median of "
                f"{self.args.reps} interleaved repetitions; transaction pooling, pool_size "
                f"{self.args.pool_size}, pgshard workers {self.args.workers}. {stamp()}.")
        md = ["# pool_size shared by the workers vs split among them", "", meta, "",
              *md_table(header, table)]
        if errors:
            md += ["", "Errors (a split-pool hang shows here as a timeout):", ""]
            md += [f"- {c} {t}: {e}" for c, t, e in errors]
        write_results(Path(self.args.out), "pool_shared", md,
                      {"meta": meta, "args": vars(self.args), "runs": self.runs, "summary": rows})
        log(f"wrote {self.args.out}/pool_shared.md, pool_shared.json")
        # Only the shared pool must never fail; the baseline's hang is the finding.
        return not [e for e in errors if e[1] != "split"]

    def cleanup(self):
        problems = []
        stop_process("pgbouncer", self.procs.get("pgbouncer"), problems, check_exit=False)
        for name in ("shared", "split"):
            stop_process(name, self.procs.get(name), problems)
        return self.lab.release((PRIMARY_PORT, *PORTS.values()), WORK, self.args.keep, problems)


def main():
    parser = bench_parser(__doc__, duration=10)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 rep")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="pgshard workers (default 2)")
    parser.add_argument("--pool-size", type=int, default=10, help="pool_size (default 10)")
    parser.add_argument("--baseline", help="build directory of a pgshard with the split pool")
    parser.add_argument("--targets", default=None,
                        help="comma-separated subset of shared,split,pgbouncer "
                             "(default: all; split only with --baseline)")
    parser.add_argument("--cells", type=lambda v: [int(x) for x in v.split(",")],
                        help="comma-separated cell numbers, 1 to %d (default: all)" % len(CELLS))
    add_output_options(parser, "pool_shared.md/.json", WORK)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.reps = 2, 1
    default = [t for t in TARGETS if t != "split" or args.baseline]
    args.targets = (split_choices(parser, "--targets", args.targets, TARGETS)
                    if args.targets else default)
    if "split" in args.targets and not args.baseline:
        parser.error("target split needs --baseline")

    bench = Bench(args)
    require_binaries(parser, args.build, bench.ctl_bin, bench.pgshard_bin,
                     *((bench.baseline_bin,) if "split" in args.targets else ()))

    def body():
        bench.start_lab()
        if "shared" in args.targets:
            bench.start_pgshard("shared", bench.pgshard_bin, SHARED_PORT)
        if "split" in args.targets:
            bench.start_pgshard("split", bench.baseline_bin, SPLIT_PORT)
        if "pgbouncer" in args.targets:
            log(f"pgbouncer on {PGBOUNCER_PORT} (default_pool_size {args.pool_size})")
            start_pgbouncer(bench.procs, WORK / "pgbouncer", PGBOUNCER_PORT, PRIMARY_PORT,
                            args.pool_size, "trust", "written by bench/pool_shared.py")
        bench.measure()
        return bench.report()

    return run_guarded(body, bench.cleanup,
                       [("shared log tail", WORK / "shared.log"),
                        ("split log tail", WORK / "split.log")])


if __name__ == "__main__":
    sys.exit(main())
