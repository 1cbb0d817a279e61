#!/usr/bin/python3
"""pgbench -S through direct Postgres, pgshard and PgBouncer, interleaved.

One PostgreSQL 15 primary is started by the lab (`pgshardctl lab up
--no-proxy`, ports 7900-7999, data under /tmp), pgbench tables are created at
scale 10, and two poolers are put in front of it with the same settings:
transaction pooling, 16 server connections, the same auth method:

  pgshard    build/pgshard -c pgshard.ini        (workers = 2)
  PgBouncer  Debian's pgbouncer with pgbouncer.ini (run as postgres when we
             are root: it refuses to run as root)

Every cell (-c 1, 16, 64 and 256 × -M simple, extended and prepared;
pgbench -S, -j 2; --clients and --modes pick fewer) runs for --duration
seconds against each target; each repetition runs the three targets in a
rotated order so that drift (caches, CPU frequency, autovacuum) does not
favour one. The median TPS of --reps repetitions is reported, and at -c 16
the median of each run's p99 latency (pgbench -l). PgBouncer 1.18 (Debian
12) keeps no prepared statements in transaction pooling: it sits out the
prepared cells, whose pgshard/PgBouncer column compares with its extended
cell (the same statements, parsed every time). Results: a table on stdout, bench/results/pgbench.md,
bench/results/pgbench.json (every run) and bench/results/pgbench.png.

Everything started here is stopped in a finally block, also on Ctrl-C and
SIGTERM.

  /usr/bin/python3 bench/pgbench_compare.py --build build            # full run
  /usr/bin/python3 bench/pgbench_compare.py --build build --quick    # smoke test
"""
import sys
from pathlib import Path

from benchlib import (BenchBase, about, add_output_options, add_pgshard_options, bench_parser,
                      cell_summary, connect_args, fmt_ms, fmt_ratio, fmt_tps, init_pgbench, log,
                      md_table, one_primary_lab, pgshard_ini, prepare_work, print_table,
                      process_cpu, ratio, require_binaries,
                      rotated, row_errors, run_guarded, run_pgbench, shard_section,
                      split_choices, stamp, start_pgbouncer, start_pgshard, stop_process,
                      write_results)

PORT_BASE = 7900
PRIMARY_PORT = PORT_BASE
PGSHARD_PORT = PORT_BASE + 1
PGBOUNCER_PORT = PORT_BASE + 2
LAB_PROXY_PORT = PORT_BASE + 3  # named in the lab config, never started (--no-proxy)
WORK = Path(f"/tmp/pgshard-bench-{PORT_BASE}")
TARGETS = ["direct", "pgshard", "pgbouncer"]
CLIENTS = [1, 16, 64, 256]
MODES = ["simple", "extended", "prepared"]
P99_CLIENTS = 16  # the cells whose per-transaction latencies are logged
POOL_SIZE = 16


class Bench(BenchBase):
    def __init__(self, args):
        super().__init__(args, WORK / "lab.ini", WORK / "lab")
        self.pgshard_config = WORK / "pgshard.ini"
        self.pgshard_log = WORK / "pgshard.log"
        self.bouncer_dir = WORK / "pgbouncer"

    # ---- setup ----

    def start_lab(self):
        prepare_work(WORK)
        self.lab.config.write_text(one_primary_lab(
            "written by bench/pgbench_compare.py: one primary for the benchmark", LAB_PROXY_PORT,
            POOL_SIZE, PRIMARY_PORT))
        self.lab.up(f"primary on {PRIMARY_PORT}", (PRIMARY_PORT,), what="lab primary")

    def init_pgbench(self):
        log(f"pgbench -i -s {self.args.scale}")
        init_pgbench(PRIMARY_PORT, self.args.scale)

    def start_pgshard(self):
        auth = self.args.auth
        self.pgshard_config.write_text(pgshard_ini(
            "written by bench/pgbench_compare.py", PGSHARD_PORT, self.args.workers, POOL_SIZE,
            shard_section("app", "s0", PRIMARY_PORT), auth=auth))
        log(f"pgshard on {PGSHARD_PORT} (workers {self.args.workers}, pool_size {POOL_SIZE}, "
            f"auth {auth})")
        start_pgshard(self.procs, "pgshard", self.pgshard_bin, self.pgshard_config, PGSHARD_PORT,
                      self.pgshard_log)

    def start_pgbouncer(self):
        log(f"pgbouncer on {PGBOUNCER_PORT} (pool_mode transaction, default_pool_size "
            f"{POOL_SIZE}, auth {self.args.auth})")
        start_pgbouncer(self.procs, self.bouncer_dir, PGBOUNCER_PORT, PRIMARY_PORT, POOL_SIZE,
                        self.args.auth, "written by bench/pgbench_compare.py")

    # ---- measuring ----

    def target_args(self, target):
        if target == "direct":
            return connect_args(PRIMARY_PORT, "postgres")
        return connect_args(PGSHARD_PORT if target == "pgshard" else PGBOUNCER_PORT, "app")

    def pgbench(self, target, clients, mode, duration):
        """One run; for a pooler also its CPU time and context switches
        per transaction (all its threads, from /proc)."""
        prefix = str(WORK / f"lat-{target}") if clients == P99_CLIENTS else None
        proc = self.procs.get(target)
        before = process_cpu(proc.pid) if proc else None
        res = run_pgbench(["-n", "-S", "-M", mode, "-c", str(clients),
                           "-j", str(min(clients, 2)), "-T", str(duration)],
                          self.target_args(target), duration + 60,
                          keys=("tps", "seconds", "error", "p99_ms", "transactions"),
                          latency_prefix=prefix)
        res["cpu_us_per_tx"] = res["switches_per_tx"] = None
        if before and res.get("transactions"):
            after = process_cpu(proc.pid)
            n = res["transactions"]
            res["cpu_us_per_tx"] = 1e6 * (after[0] - before[0]) / n
            res["switches_per_tx"] = (after[1] + after[2] - before[1] - before[2]) / n
        return res

    def cells(self):
        return [(c, m) for c in self.args.clients for m in self.args.modes]

    def runs_in(self, target, mode):
        return not (target == "pgbouncer" and mode == "prepared")

    def measure(self):
        targets = self.args.targets
        log("warm-up: 1 s per target")
        for target in targets:
            self.pgbench(target, 16, "simple", 1)
        cells = self.cells()
        total = len(cells) * self.args.reps * len(targets) * self.args.duration
        log(f"measuring {len(cells)} cells x {self.args.reps} reps x {len(targets)} targets "
            f"x {self.args.duration}s = about {about(total)}")
        for clients, mode in cells:
            for rep in range(self.args.reps):
                for target in rotated(targets, rep):
                    if not self.runs_in(target, mode):
                        continue
                    res = self.pgbench(target, clients, mode, self.args.duration)
                    res.update(target=target, clients=clients, mode=mode, rep=rep)
                    self.runs.append(res)
                    shown = f"{res['tps']:.0f} tps" if res["tps"] is not None else res["error"]
                    log(f"  -c {clients:<2} {mode:<8} rep {rep + 1} {target:<9} {shown}")

    # ---- reporting ----

    def summary(self):
        rows = cell_summary(self.runs, [(f"-c {c} {m}", {"clients": c, "mode": m})
                                        for c, m in self.cells()], TARGETS,
                            extra=(("_p99", "p99_ms"), ("_cpu", "cpu_us_per_tx"),
                                   ("_switches", "switches_per_tx")))
        by_cell = {(r["clients"], r["mode"]): r for r in rows}
        for row in rows:
            bouncer = row["pgbouncer"]
            if row["mode"] == "prepared":  # PgBouncer's extended cell stands in
                bouncer = by_cell.get((row["clients"], "extended"), {}).get("pgbouncer")
            row["pgshard/pgbouncer"] = ratio(row["pgshard"], bouncer)
            row["pgshard/direct"] = ratio(row["pgshard"], row["direct"])
        return rows

    def report(self, rows):
        out_dir = Path(self.args.out)
        header = ["cell", "direct TPS", "pgshard TPS", "pgbouncer TPS", "pgshard/pgbouncer",
                  "pgshard/direct", "p99 ms direct / pgshard / pgbouncer",
                  "CPU us/tx pgshard / pgbouncer", "switches/tx pgshard / pgbouncer"]

        def pair(r, suffix, digits):
            return " / ".join(f"{r[t + suffix]:.{digits}f}" if r.get(t + suffix) is not None
                              else "-" for t in ("pgshard", "pgbouncer"))

        def p99s(r):
            if r["clients"] != P99_CLIENTS:
                return ""
            return " / ".join(fmt_ms(r.get(t + "_p99")) if r.get(t + "_p99") is not None
                              else "-" for t in TARGETS)
        table = [[r["cell"], fmt_tps(r["direct"]), fmt_tps(r["pgshard"]),
                  fmt_tps(r["pgbouncer"]) if r["mode"] != "prepared" else "(none)",
                  fmt_ratio(r["pgshard/pgbouncer"]), fmt_ratio(r["pgshard/direct"]), p99s(r),
                  pair(r, "_cpu", 1), pair(r, "_switches", 2)]
                 for r in rows]
        errors = [e for e in row_errors(rows, TARGETS)
                  if not (e[1] == "pgbouncer" and "prepared" in e[0])]
        print_table(header, table, errors)

        meta = (f"pgbench -S, scale {self.args.scale}, -j 2, {self.args.duration} s per run, "
                f"median of {self.args.reps} interleaved repetitions; transaction pooling, "
                f"{POOL_SIZE} server connections, auth {self.args.auth}; pgshard workers "
                f"{self.args.workers}. {stamp()}.")
        md = ["# pgbench: direct Postgres vs pgshard vs PgBouncer", "", meta, "",
              *md_table(header, table)]
        if errors:
            md += ["", "Errors:", ""] + [f"- {c} {t}: {e}" for c, t, e in errors]
        md += ["", "Ratios above 1.00 mean pgshard is faster. `n/a`: a target failed in that cell.",
               "Prepared cells: PgBouncer 1.18 has no prepared statements in transaction "
               "pooling; pgshard/pgbouncer compares with its extended cell.",
               "Raw runs: pgbench.json. Chart: pgbench.png.", ""]
        write_results(out_dir, "pgbench", md,
                      {"meta": meta, "args": vars(self.args), "runs": self.runs, "summary": rows})
        self.chart(rows, out_dir / "pgbench.png", meta)
        log(f"wrote {out_dir}/pgbench.md, pgbench.json, pgbench.png")
        return not errors

    def chart(self, rows, path, meta):
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log("matplotlib missing (apt-get install python3-matplotlib): no chart")
            return
        colors = {"direct": "#8c8c8c", "pgshard": "#1f77b4", "pgbouncer": "#ff7f0e"}
        fig, ax = plt.subplots(figsize=(max(9, 1.1 * len(rows)), 5))
        width = 0.26
        for i, target in enumerate(TARGETS):
            xs = [j + (i - 1) * width for j in range(len(rows))]
            ys = [r[target] or 0 for r in rows]
            if target == "pgbouncer":  # sits out the prepared cells
                rows_shown = [r if r["mode"] != "prepared" else dict(r, pgbouncer=None) for r in rows]
            else:
                rows_shown = rows
            bars = ax.bar(xs, ys, width, label=target, color=colors[target])
            for x, r, bar in zip(xs, rows_shown, bars):
                if r[target] is None:
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8)
                else:
                    ax.text(x, bar.get_height(), f"{r[target] / 1000:.1f}k", ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["cell"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("TPS (median)")
        ax.set_title("pgbench -S: direct vs pgshard vs PgBouncer")
        ax.legend(loc="upper left")
        fig.text(0.01, 0.01, meta, fontsize=6, wrap=True)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        fig.savefig(path, dpi=120)
        plt.close(fig)

    # ---- teardown ----

    def cleanup(self):
        problems = []
        stop_process("pgbouncer", self.procs.get("pgbouncer"), problems, check_exit=False)
        stop_process("pgshard", self.procs.get("pgshard"), problems)
        return self.lab.release((PRIMARY_PORT, PGSHARD_PORT, PGBOUNCER_PORT), WORK,
                                self.args.keep, problems)


def main():
    parser = bench_parser(__doc__, duration=10)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 rep")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    add_pgshard_options(parser)
    parser.add_argument("--auth", choices=["trust", "md5"], default="trust",
                        help="client auth for both poolers (default trust)")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)),
                        help="pgbench -c values, comma-separated (default 1,16,64,256)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="pgbench -M modes, comma-separated (default simple,extended,prepared)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated subset of direct,pgshard,pgbouncer")
    add_output_options(parser, "pgbench.md/.json/.png", WORK)
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.modes = split_choices(parser, "--modes", args.modes, MODES)
    if args.quick:
        args.duration, args.reps = 2, 1
    args.targets = split_choices(parser, "--targets", args.targets, TARGETS)

    bench = Bench(args)
    require_binaries(parser, args.build, bench.ctl_bin,
                     *((bench.pgshard_bin,) if "pgshard" in args.targets else ()))

    def body():
        bench.start_lab()
        bench.init_pgbench()
        if "pgshard" in args.targets:
            bench.start_pgshard()
        if "pgbouncer" in args.targets:
            bench.start_pgbouncer()
        bench.measure()
        return bench.report(bench.summary())

    return run_guarded(body, bench.cleanup, [("pgshard log tail", bench.pgshard_log)])


if __name__ == "__main__":
    sys.exit(main())
