#!/usr/bin/python3
"""What /metrics costs: pgbench -S through pgshard without metrics_listen vs with it, scraped every second.

One PostgreSQL 15 primary is started by the lab (`pgshardctl lab up
--no-proxy`, ports 8420-8424, data under /tmp), pgbench tables are created
at scale 10, and two pgshard processes with the same settings (transaction
pooling, pool_size 16, workers 2, auth trust) are put in front of it:

  off       build/pgshard without metrics_listen (port 8421)
  scraped   build/pgshard with metrics_listen = 127.0.0.1:8423 (port 8422),
            GET /metrics every --scrape-interval seconds (default 1) for
            the whole of each of its runs, by a thread of this script

Both run all the time; only the one measured gets pgbench's load. Each
repetition runs the two in a rotated order (pgbench -S -c 16 -j 2,
--duration seconds, -M simple and -M extended), and the median TPS of
--reps repetitions is reported with the ratio scraped/off (1.00: scraping
costs nothing). Every scrape must answer 200 with a pgshard_up line: a
failed one makes the run an error. The scrapes' own time (median and max)
and size are reported too. Results: a table on stdout,
bench/results/pgbench_metrics.md and .json.

  /usr/bin/python3 bench/pgbench_metrics.py --build build            # ~4 minutes
  /usr/bin/python3 bench/pgbench_metrics.py --build build --quick    # smoke test
"""
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from benchlib import (BenchBase, about, add_output_options, add_pgshard_options, bench_parser,
                      cell_summary, connect_args, fmt_ms, fmt_ratio, fmt_tps, init_pgbench, log,
                      md_table, one_primary_lab, median_or_none, pgshard_ini, prepare_work, print_table, ratio,
                      require_binaries, rotated, row_errors, run_guarded, run_pgbench,
                      shard_section, split_choices, stamp, start_pgshard, stop_process,
                      write_results)

PORT_BASE = 8420
PRIMARY_PORT = PORT_BASE
OFF_PORT = PORT_BASE + 1
SCRAPED_PORT = PORT_BASE + 2
METRICS_PORT = PORT_BASE + 3
LAB_PROXY_PORT = PORT_BASE + 4  # named in the lab config, never started (--no-proxy)
WORK = Path(f"/tmp/pgshard-bench-metrics-{PORT_BASE}")
TARGETS = ["off", "scraped"]
POOL_SIZE = 16
SCRIPT = "bench/pgbench_metrics.py"
METRICS_URL = f"http://127.0.0.1:{METRICS_PORT}/metrics"


class Scraper(threading.Thread):
    """GET /metrics every INTERVAL seconds until stopped: each scrape's
    seconds and bytes, and the errors."""

    def __init__(self, interval):
        super().__init__(daemon=True)
        self.interval = interval
        self.stopped = threading.Event()
        self.seconds, self.sizes, self.errors = [], [], []

    def run(self):
        next_at = time.monotonic()
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(METRICS_URL, timeout=10) as resp:
                    body = resp.read()
                if resp.status != 200 or b"\npgshard_up 1\n" not in body:
                    self.errors.append(f"status {resp.status}, {len(body)} bytes")
                self.seconds.append(time.monotonic() - started)
                self.sizes.append(len(body))
            except OSError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            next_at += self.interval
            self.stopped.wait(max(0.0, next_at - time.monotonic()))

    def stop(self):
        self.stopped.set()
        self.join(15)


class Bench(BenchBase):
    def __init__(self, args):
        super().__init__(args, WORK / "lab.ini", WORK / "lab")

    def config(self, target):
        return WORK / f"pgshard-{target}.ini"

    def logfile(self, target):
        return WORK / f"pgshard-{target}.log"

    # ---- setup ----

    def start_lab(self):
        prepare_work(WORK)
        self.lab.config.write_text(one_primary_lab(f"written by {SCRIPT}: one primary",
                                                   LAB_PROXY_PORT, POOL_SIZE, PRIMARY_PORT))
        self.lab.up(f"primary on {PRIMARY_PORT}", (PRIMARY_PORT,), what="lab primary")

    def init_pgbench(self):
        log(f"pgbench -i -s {self.args.scale}")
        init_pgbench(PRIMARY_PORT, self.args.scale)

    def start_proxies(self):
        for target, port in (("off", OFF_PORT), ("scraped", SCRAPED_PORT)):
            extra = f"metrics_listen = 127.0.0.1:{METRICS_PORT}\n" if target == "scraped" else ""
            self.config(target).write_text(pgshard_ini(
                f"written by {SCRIPT}: {target}", port, self.args.workers, POOL_SIZE,
                shard_section("app", "s0", PRIMARY_PORT), pgshard_extra=extra))
            log(f"pgshard {target} on {port}" + (f", metrics on {METRICS_PORT}" if extra else ""))
            start_pgshard(self.procs, target, self.pgshard_bin, self.config(target), port,
                          self.logfile(target))
        with urllib.request.urlopen(METRICS_URL, timeout=10) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {METRICS_URL}: {resp.status}")

    # ---- measuring ----

    def pgbench(self, target, mode, duration):
        port = OFF_PORT if target == "off" else SCRAPED_PORT
        scraper = Scraper(self.args.scrape_interval) if target == "scraped" else None
        if scraper:
            scraper.start()
        try:
            res = run_pgbench(["-n", "-S", "-M", mode, "-c", str(self.args.clients),
                               "-j", str(min(self.args.clients, 2)), "-T", str(duration)],
                              connect_args(port, "app"), duration + 60,
                              keys=("tps", "latency_ms", "seconds", "loadavg", "error"))
        finally:
            if scraper:
                scraper.stop()
        if scraper:
            res.update(scrapes=len(scraper.seconds), scrape_errors=scraper.errors,
                       scrape_ms_median=1000 * statistics.median(scraper.seconds)
                       if scraper.seconds else None,
                       scrape_ms_max=1000 * max(scraper.seconds) if scraper.seconds else None,
                       scrape_bytes=max(scraper.sizes) if scraper.sizes else None)
            if scraper.errors and res["error"] is None:
                res["error"] = f"{len(scraper.errors)} failed scrapes: {scraper.errors[0]}"
            elif len(scraper.seconds) < duration / self.args.scrape_interval / 2:
                res["error"] = res["error"] or f"only {len(scraper.seconds)} scrapes"
        return res

    def measure(self):
        log("warm-up: 1 s per target")
        for target in TARGETS:
            self.pgbench(target, "simple", 1)
        cells = self.args.modes
        total = len(cells) * self.args.reps * len(TARGETS) * self.args.duration
        log(f"measuring {len(cells)} cells x {self.args.reps} reps x {len(TARGETS)} targets "
            f"x {self.args.duration}s = about {about(total)}")
        for mode in cells:
            for rep in range(self.args.reps):
                for target in rotated(TARGETS, rep):
                    res = self.pgbench(target, mode, self.args.duration)
                    res.update(target=target, clients=self.args.clients, mode=mode, rep=rep)
                    self.runs.append(res)
                    shown = f"{res['tps']:.0f} tps" if res["tps"] is not None else res["error"]
                    if target == "scraped" and res.get("scrapes"):
                        shown += (f", {res['scrapes']} scrapes, median "
                                  f"{res['scrape_ms_median']:.1f} ms")
                    log(f"  -c {self.args.clients} {mode:<8} rep {rep + 1} {target:<8} {shown}")

    # ---- reporting ----

    def summary(self):
        c = self.args.clients
        rows = cell_summary(self.runs, [(f"-c {c} {m}", {"clients": c, "mode": m})
                                        for m in self.args.modes], TARGETS)
        for row in rows:
            row["scraped/off"] = ratio(row["scraped"], row["off"])
            scraped = [r for r in self.runs if r["target"] == "scraped"
                       and r["mode"] == row["mode"] and r.get("scrapes")]
            row["scrapes"] = sum(r["scrapes"] for r in scraped)
            row["scrape_ms_median"] = median_or_none([r["scrape_ms_median"] for r in scraped])
            row["scrape_ms_max"] = max((r["scrape_ms_max"] for r in scraped), default=None)
            row["scrape_bytes"] = max((r["scrape_bytes"] for r in scraped), default=None)
        return rows

    def report(self, rows):
        out_dir = Path(self.args.out)
        header = ["cell", "off TPS", "scraped TPS", "scraped/off", "scrapes", "scrape ms (median)",
                  "scrape ms (max)", "bytes"]
        table = [[r["cell"], fmt_tps(r["off"]), fmt_tps(r["scraped"]),
                  fmt_ratio(r["scraped/off"]), str(r["scrapes"]),
                  fmt_ms(r["scrape_ms_median"]), fmt_ms(r["scrape_ms_max"]),
                  str(r["scrape_bytes"])] for r in rows]
        errors = row_errors(rows, TARGETS)
        print_table(header, table, errors)
        meta = (f"pgbench -S -c {self.args.clients} -j {min(self.args.clients, 2)}, scale "
                f"{self.args.scale}, {self.args.duration} s per run, median of {self.args.reps} "
                f"interleaved repetitions; pgshard workers {self.args.workers}, transaction "
                f"pooling, pool_size {POOL_SIZE}, auth trust; scraped: GET /metrics every "
                f"{self.args.scrape_interval} s during its runs. {stamp()}.")
        md = ["# pgbench: pgshard without metrics vs with /metrics scraped", "", meta, "",
              *md_table(header, table)]
        if errors:
            md += ["", "Errors:", ""] + [f"- {c} {t}: {e}" for c, t, e in errors]
        md += ["", "scraped/off below 1.00 is what scraping costs. Raw runs: "
               "pgbench_metrics.json.", ""]
        write_results(out_dir, "pgbench_metrics", md,
                      {"meta": meta, "args": vars(self.args), "runs": self.runs, "summary": rows})
        log(f"wrote {out_dir}/pgbench_metrics.md, pgbench_metrics.json")
        return not errors

    # ---- teardown ----

    def cleanup(self):
        problems = []
        for target in TARGETS:
            stop_process(f"pgshard {target}", self.procs.get(target), problems)
        return self.lab.release((PRIMARY_PORT, OFF_PORT, SCRAPED_PORT, METRICS_PORT), WORK,
                                self.args.keep, problems)


def main():
    parser = bench_parser(__doc__, duration=10)
    parser.set_defaults(reps=5)
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 s runs, 1 rep")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    parser.add_argument("-c", "--clients", type=int, default=16,
                        help="pgbench clients (default 16)")
    parser.add_argument("--modes", default="simple,extended",
                        help="pgbench -M modes, comma-separated (default simple,extended)")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="seconds between scrapes (default 1)")
    add_pgshard_options(parser)
    add_output_options(parser, "pgbench_metrics.md/.json", WORK)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.reps = 3, 1
    args.modes = split_choices(parser, "--modes", args.modes, ["simple", "extended", "prepared"])

    bench = Bench(args)
    require_binaries(parser, args.build, bench.ctl_bin, bench.pgshard_bin)

    def body():
        bench.start_lab()
        bench.init_pgbench()
        bench.start_proxies()
        bench.measure()
        return bench.report(bench.summary())

    return run_guarded(body, bench.cleanup,
                       [(f"pgshard {t} log tail", bench.logfile(t)) for t in TARGETS])


if __name__ == "__main__":
    sys.exit(main())
