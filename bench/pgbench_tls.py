#!/usr/bin/python3
"""pgbench -S over TLS through direct Postgres, pgshard and PgBouncer, interleaved.

The same comparison as pgbench_compare.py with every client connection on
TLS (pgbench with sslmode=require) and the same certificate everywhere: the
lab is started with `pgshardctl lab up --tls --no-proxy` (ports 8400-8403,
data under /tmp), which makes a CA and a server certificate in
LAB/tls/ and gives the primary ssl = on with it and TLS-only pg_hba lines.
pgbench tables are created at scale 10, and the two poolers are put in
front of the primary with the same settings: transaction pooling, 16 server
connections, auth trust, that certificate and key for their clients, and
TLS to the server too (the lab's primary takes nothing else):

  direct     the primary, ssl = on
  pgshard    build/pgshard: client_tls = require, tls_cert_file/tls_key_file,
             node conninfo sslmode=require (workers = 2)
  PgBouncer  Debian's pgbouncer: client_tls_sslmode = require,
             client_tls_cert_file/key_file, server_tls_sslmode = require
             (run as postgres when we are root: it refuses to run as root)

Before measuring, each target is asked once whether the connection is on TLS
(pg_stat_ssl on the server for direct; through the poolers, that the
client's own connection says SSL: psql's \\conninfo); a target that is not is
an error, never measured in plain text.

Every cell (-c 1 and -c 16, -M simple and -M extended; pgbench -S, -j up to
2) runs for --duration seconds against each target; each repetition runs the
three targets in a rotated order. The median TPS of --reps repetitions is
reported with pgshard/PgBouncer and pgshard/direct. Results: a table on
stdout, bench/results/pgbench_tls.md and bench/results/pgbench_tls.json.

--plain runs the same thing with TLS nowhere (a lab without --tls, no TLS
keys, sslmode=disable; results pgbench_tls_plain.*): the baseline that tells
what TLS itself costs each target, in one script with the same ports and
settings.

  /usr/bin/python3 bench/pgbench_tls.py --build build            # ~5 minutes
  /usr/bin/python3 bench/pgbench_tls.py --build build --quick    # smoke test
  /usr/bin/python3 bench/pgbench_tls.py --build build --plain    # the same without TLS
"""
import os
import sys
from pathlib import Path

from benchlib import (BenchBase, about, add_output_options, add_pgshard_options, bench_parser,
                      cell_summary, connect_args, fmt_ratio, fmt_tps, init_pgbench, log,
                      md_table, one_primary_lab, pgshard_ini, prepare_work, print_table, ratio, require_binaries,
                      rotated, row_errors, run, run_guarded, run_pgbench, shard_section,
                      split_choices, stamp, start_pgbouncer, start_pgshard, stop_process,
                      write_results)

PORT_BASE = 8400
PRIMARY_PORT = PORT_BASE
PGSHARD_PORT = PORT_BASE + 1
PGBOUNCER_PORT = PORT_BASE + 2
LAB_PROXY_PORT = PORT_BASE + 3  # named in the lab config, never started (--no-proxy)
WORK = Path(f"/tmp/pgshard-bench-tls-{PORT_BASE}")
TARGETS = ["direct", "pgshard", "pgbouncer"]
CLIENTS = [1, 16]
MODES = ["simple", "extended"]
POOL_SIZE = 16
SCRIPT = "bench/pgbench_tls.py"


class Bench(BenchBase):
    def __init__(self, args):
        super().__init__(args, WORK / "lab.ini", WORK / "lab")
        self.pgshard_config = WORK / "pgshard.ini"
        self.pgshard_log = WORK / "pgshard.log"
        self.bouncer_dir = WORK / "pgbouncer"

    # ---- setup ----

    @property
    def tls(self):
        return not self.args.plain

    def conninfo_extra(self):
        return "sslmode=require" if self.tls else "sslmode=disable"

    def start_lab(self):
        prepare_work(WORK)
        self.lab.config.write_text(one_primary_lab(
            f"written by {SCRIPT}: one primary{', TLS only' if self.tls else ''}",
            LAB_PROXY_PORT, POOL_SIZE, PRIMARY_PORT, conninfo_extra=self.conninfo_extra()))
        self.lab.up(f"primary on {PRIMARY_PORT}" + (" (TLS only)" if self.tls else ""),
                    (PRIMARY_PORT,), what="lab primary", tls=self.tls)
        for name in ("ca.crt", "server.crt", "server.key") if self.tls else ():
            if not self.lab.tls_file(name).exists():
                raise RuntimeError(f"lab up --tls made no {self.lab.tls_file(name)}")

    def init_pgbench(self):
        log(f"pgbench -i -s {self.args.scale}")
        init_pgbench(PRIMARY_PORT, self.args.scale)

    def start_pgshard(self):
        tls = (f"client_tls = require\n"
               f"tls_cert_file = {self.lab.tls_file('server.crt')}\n"
               f"tls_key_file = {self.lab.tls_file('server.key')}\n") if self.tls else ""
        self.pgshard_config.write_text(pgshard_ini(
            f"written by {SCRIPT}", PGSHARD_PORT, self.args.workers, POOL_SIZE,
            shard_section("app", "s0", PRIMARY_PORT, conninfo_extra=self.conninfo_extra()),
            pgshard_extra=tls))
        log(f"pgshard on {PGSHARD_PORT} (client_tls = {'require' if self.tls else 'disable'}, "
            f"node {self.conninfo_extra()}, workers {self.args.workers}, pool_size {POOL_SIZE})")
        start_pgshard(self.procs, "pgshard", self.pgshard_bin, self.pgshard_config, PGSHARD_PORT,
                      self.pgshard_log)

    def start_pgbouncer(self):
        tls = (f"client_tls_sslmode = require\n"
               f"client_tls_cert_file = {self.lab.tls_file('server.crt')}\n"
               f"client_tls_key_file = {self.lab.tls_file('server.key')}\n"
               f"client_tls_ca_file = {self.lab.tls_file('ca.crt')}\n"
               f"server_tls_sslmode = require\n") if self.tls else ""
        mode = "require" if self.tls else "disable"
        log(f"pgbouncer on {PGBOUNCER_PORT} (client_tls_sslmode = {mode}, server_tls_sslmode "
            f"= {mode}, default_pool_size {POOL_SIZE})")
        start_pgbouncer(self.procs, self.bouncer_dir, PGBOUNCER_PORT, PRIMARY_PORT, POOL_SIZE,
                        "trust", f"written by {SCRIPT}", extra=tls)

    def preflight(self):
        """Every target answers, on TLS (or, --plain, not): an error otherwise.
        On the primary, every client backend (the poolers' servers among them)
        is alike."""
        for target in self.args.targets:
            cmd = ["psql", "-X", "-At", *self.target_args(target), "-c", "select 1",
                   "-c", r"\conninfo"]
            out = run(cmd, env=dict(os.environ, PGPASSWORD="secret")).stdout
            if ("SSL connection" in out) != self.tls:
                raise RuntimeError(f"{target}: TLS is not as asked: {out.strip()}")
            log(f"  {target}: {out.strip().splitlines()[-1]}")
        other = run(["psql", "-X", "-At", *connect_args(PRIMARY_PORT, "postgres"), "-c",
                     f"select count(*) filter (where ssl <> {self.tls}) from pg_stat_ssl "
                     "join pg_stat_activity using (pid) where backend_type = 'client backend'"]
                    ).stdout.strip()
        if other != "0":
            raise RuntimeError(f"{other} connection(s) to the primary with TLS not as asked")

    # ---- measuring ----

    def target_args(self, target):
        if target == "direct":
            return connect_args(PRIMARY_PORT, "postgres")
        return connect_args(PGSHARD_PORT if target == "pgshard" else PGBOUNCER_PORT, "app")

    def pgbench(self, target, clients, mode, duration):
        return run_pgbench(["-n", "-S", "-M", mode, "-c", str(clients),
                            "-j", str(min(clients, 2)), "-T", str(duration)],
                           self.target_args(target), duration + 60,
                           keys=("tps", "latency_ms", "seconds", "loadavg", "error"))

    def measure(self):
        targets = self.args.targets
        log("warm-up: 1 s per target")
        for target in targets:
            self.pgbench(target, 16, "simple", 1)
        cells = [(c, m) for c in self.args.clients for m in self.args.modes]
        total = len(cells) * self.args.reps * len(targets) * self.args.duration
        log(f"measuring {len(cells)} cells x {self.args.reps} reps x {len(targets)} targets "
            f"x {self.args.duration}s = about {about(total)}")
        for clients, mode in cells:
            for rep in range(self.args.reps):
                for target in rotated(targets, rep):
                    res = self.pgbench(target, clients, mode, self.args.duration)
                    res.update(target=target, clients=clients, mode=mode, rep=rep)
                    self.runs.append(res)
                    shown = f"{res['tps']:.0f} tps" if res["tps"] is not None else res["error"]
                    log(f"  -c {clients:<2} {mode:<8} rep {rep + 1} {target:<9} {shown}")

    # ---- reporting ----

    def summary(self):
        cells = [(f"-c {c} {m}", {"clients": c, "mode": m})
                 for c in self.args.clients for m in self.args.modes]
        rows = cell_summary(self.runs, cells, TARGETS)
        for row in rows:
            row["pgshard/pgbouncer"] = ratio(row["pgshard"], row["pgbouncer"])
            row["pgshard/direct"] = ratio(row["pgshard"], row["direct"])
        return rows

    def report(self, rows):
        out_dir = Path(self.args.out)
        header = ["cell", "direct TPS", "pgshard TPS", "pgbouncer TPS", "pgshard/pgbouncer",
                  "pgshard/direct"]
        table = [[r["cell"], fmt_tps(r["direct"]), fmt_tps(r["pgshard"]),
                  fmt_tps(r["pgbouncer"]), fmt_ratio(r["pgshard/pgbouncer"]),
                  fmt_ratio(r["pgshard/direct"])] for r in rows]
        errors = row_errors(rows, [t for t in TARGETS if t in self.args.targets])
        print_table(header, table, errors)

        over = ("over TLS (sslmode=require, one certificate from `lab up --tls`)" if self.tls
                else "without TLS (--plain)")
        meta = (f"pgbench -S {over}, "
                f"scale {self.args.scale}, -j up to 2, {self.args.duration} s per run, median "
                f"of {self.args.reps} interleaved repetitions; transaction pooling, {POOL_SIZE} "
                f"server connections{' (TLS to the server too)' if self.tls else ''}, auth "
                f"trust; pgshard workers "
                f"{self.args.workers}. {stamp()}.")
        md = [f"# pgbench {'over TLS' if self.tls else 'without TLS'}: direct Postgres vs "
              "pgshard vs PgBouncer", "", meta, "",
              *md_table(header, table)]
        if errors:
            md += ["", "Errors:", ""] + [f"- {c} {t}: {e}" for c, t, e in errors]
        md += ["", "Ratios above 1.00 mean pgshard is faster. `n/a`: a target failed in that cell.",
               f"Raw runs: {self.stem}.json.", ""]
        write_results(out_dir, self.stem, md,
                      {"meta": meta, "args": vars(self.args), "runs": self.runs, "summary": rows})
        log(f"wrote {out_dir}/{self.stem}.md, {self.stem}.json")
        return not errors

    @property
    def stem(self):
        return "pgbench_tls" if self.tls else "pgbench_tls_plain"

    # ---- teardown ----

    def cleanup(self):
        problems = []
        stop_process("pgbouncer", self.procs.get("pgbouncer"), problems, check_exit=False)
        stop_process("pgshard", self.procs.get("pgshard"), problems)
        return self.lab.release((PRIMARY_PORT, PGSHARD_PORT, PGBOUNCER_PORT), WORK,
                                self.args.keep, problems)


def main():
    parser = bench_parser(__doc__, duration=8)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 rep")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    parser.add_argument("--clients", default="1,16",
                        help="pgbench -c values, comma-separated (default 1,16)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="pgbench -M modes, comma-separated (default simple,extended)")
    parser.add_argument("--plain", action="store_true",
                        help="TLS nowhere: the baseline (results pgbench_tls_plain.*)")
    add_pgshard_options(parser)
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated subset of direct,pgshard,pgbouncer")
    add_output_options(parser, "pgbench_tls.md/.json", WORK)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.reps = 2, 1
    args.targets = split_choices(parser, "--targets", args.targets, TARGETS)
    args.modes = split_choices(parser, "--modes", args.modes, ["simple", "extended", "prepared"])
    args.clients = [int(c) for c in split_choices(
        parser, "--clients", args.clients, [str(c) for c in range(1, 1001)])]
    # Every libpq client here (psql, pgbench) asks for TLS: the lab's primary
    # takes nothing else, and the poolers require it. --plain: never.
    os.environ["PGSSLMODE"] = "disable" if args.plain else "require"

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
        log(f"preflight: every target {'on TLS' if not args.plain else 'without TLS'}")
        bench.preflight()
        bench.measure()
        return bench.report(bench.summary())

    return run_guarded(body, bench.cleanup,
                       [("pgshard log tail", bench.pgshard_log),
                        ("pgbouncer log tail", bench.bouncer_dir / "pgbouncer.log")])


if __name__ == "__main__":
    sys.exit(main())
