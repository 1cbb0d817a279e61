#!/usr/bin/python3
"""pgbench -S through direct Postgres, pgshard and PgBouncer, interleaved.

One PostgreSQL 15 primary is started by the lab (`pgshardctl lab up
--no-proxy`, ports 7900-7999, data under /tmp), pgbench tables are created at
scale 10, and two poolers are put in front of it with the same settings:
transaction pooling, 16 server connections, the same auth method:

  pgshard    build/pgshard -c pgshard.ini        (workers = 2)
  PgBouncer  Debian's pgbouncer with pgbouncer.ini (run as postgres when we
             are root: it refuses to run as root)

Every cell (-c 1 and -c 16, -M simple and -M extended; pgbench -S, -j 2)
runs for --duration seconds against each target; each repetition runs the
three targets in a rotated order so that drift (caches, CPU frequency,
autovacuum) does not favour one. The median TPS of --reps repetitions is
reported. Results: a table on stdout, bench/results/pgbench.md,
bench/results/pgbench.json (every run) and bench/results/pgbench.png.

Everything started here is stopped in a finally block, also on Ctrl-C and
SIGTERM.

  /usr/bin/python3 bench/pgbench_compare.py --build build            # full run
  /usr/bin/python3 bench/pgbench_compare.py --build build --quick    # smoke test
"""
import argparse
import datetime
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PORT_BASE = 7900
PRIMARY_PORT = PORT_BASE
PGSHARD_PORT = PORT_BASE + 1
PGBOUNCER_PORT = PORT_BASE + 2
LAB_PROXY_PORT = PORT_BASE + 3  # named in the lab config, never started (--no-proxy)
WORK = Path(f"/tmp/pgshard-bench-{PORT_BASE}")
TARGETS = ["direct", "pgshard", "pgbouncer"]
CLIENTS = [1, 16]
MODES = ["simple", "extended"]
POOL_SIZE = 16


class Interrupted(Exception):
    pass


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_port(port, timeout, proc=None, what="server", logfile=None):
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if proc is not None and proc.poll() is not None:
            tail = Path(logfile).read_text(errors="replace")[-3000:] if logfile else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not listening on port {port} after {timeout}s")
        time.sleep(0.1)



def stop_process(name, proc, problems, check_exit=True):
    """SIGTERM PROC (if running) and wait; a non-zero exit (when CHECK_EXIT)
    or a kill after 20 s is added to PROBLEMS."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(20)
        if rc != 0 and check_exit:
            problems.append(f"{name} exited {rc} on SIGTERM")
    except subprocess.TimeoutExpired:
        problems.append(f"{name} did not exit within 20 s of SIGTERM; killed")
        proc.kill()
        proc.wait()


def release_lab(bench, ports, work, problems):
    """The end of every benchmark: `lab down --purge` if BENCH started a lab,
    wait for PORTS to close, remove WORK unless --keep, log PROBLEMS.
    Returns whether there were none."""
    if bench.lab_started and bench.ctl_bin.exists():
        proc = bench.lab("down", "--purge", check=False)
        if proc.returncode != 0:
            problems.append(f"lab down --purge: exit {proc.returncode} {proc.stderr.strip()}")
            bench.lab("down", check=False)
    for port in ports:
        deadline = time.monotonic() + 20
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        if port_open(port):
            problems.append(f"port {port} still open after cleanup")
    if not bench.args.keep:
        shutil.rmtree(work, ignore_errors=True)
    for p in problems:
        log(f"cleanup: {p}")
    return not problems

def run(cmd, env=None, timeout=None, check=True):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


class Bench:
    def __init__(self, args):
        self.args = args
        self.build = Path(args.build).resolve()
        self.pgshard_bin = self.build / "pgshard"
        self.ctl_bin = self.build / "pgshardctl"
        self.lab_config = WORK / "lab.ini"
        self.lab_dir = WORK / "lab"
        self.pgshard_config = WORK / "pgshard.ini"
        self.pgshard_log = WORK / "pgshard.log"
        self.bouncer_dir = WORK / "pgbouncer"
        self.pgshard_proc = None
        self.bouncer_proc = None
        self.lab_started = False
        self.runs = []  # every pgbench run: dict

    # ---- setup ----

    def lab(self, *verb, check=True, timeout=300):
        cmd = [str(self.ctl_bin), "lab", *verb, "-c", str(self.lab_config),
               "--dir", str(self.lab_dir)]
        return run(cmd, timeout=timeout, check=check)

    def start_lab(self):
        WORK.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(WORK, 0o755)
        self.lab_config.write_text(f"""\
; written by bench/pgbench_compare.py: one primary for the benchmark
[pgshard]
listen = 127.0.0.1:{LAB_PROXY_PORT}
workers = 2
auth = trust

[user.app]
password = secret

[database.app]
pool_mode = transaction
pool_size = {POOL_SIZE}

[shard.app.s0]
primary = host=127.0.0.1 port={PRIMARY_PORT} dbname=app user=postgres
""")
        if self.lab_dir.exists():
            self.lab("down", "--purge", check=False)
        log(f"lab up: primary on {PRIMARY_PORT}, data in {self.lab_dir}")
        self.lab_started = True
        self.lab("up", "--no-proxy")
        wait_port(PRIMARY_PORT, 60, what="lab primary")

    def init_pgbench(self):
        log(f"pgbench -i -s {self.args.scale}")
        env = dict(os.environ)
        run(["pgbench", "-i", "-q", "-s", str(self.args.scale), "-h", "127.0.0.1",
             "-p", str(PRIMARY_PORT), "-U", "postgres", "app"], env=env, timeout=1200)
        run(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(PRIMARY_PORT), "-U", "postgres",
             "-d", "app", "-c", "vacuum analyze", "-c", "checkpoint"], timeout=600)

    def start_pgshard(self):
        auth = self.args.auth
        self.pgshard_config.write_text(f"""\
; written by bench/pgbench_compare.py
[pgshard]
listen = 127.0.0.1:{PGSHARD_PORT}
workers = {self.args.workers}
auth = {auth}
log_format = text
max_client_conn = 1000

[user.app]
password = secret

[database.app]
pool_mode = transaction
pool_size = {POOL_SIZE}

[shard.app.s0]
primary = host=127.0.0.1 port={PRIMARY_PORT} dbname=app user=postgres
""")
        log(f"pgshard on {PGSHARD_PORT} (workers {self.args.workers}, pool_size {POOL_SIZE}, "
            f"auth {auth})")
        logf = open(self.pgshard_log, "ab")
        self.pgshard_proc = subprocess.Popen(
            [str(self.pgshard_bin), "-c", str(self.pgshard_config)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        wait_port(PGSHARD_PORT, 15, self.pgshard_proc, "pgshard", self.pgshard_log)

    def start_pgbouncer(self):
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.bouncer_dir.mkdir(parents=True, exist_ok=True)
        as_root = os.geteuid() == 0
        auth = self.args.auth
        (self.bouncer_dir / "userlist.txt").write_text('"app" "secret"\n')
        (self.bouncer_dir / "pgbouncer.ini").write_text(f"""\
; written by bench/pgbench_compare.py
[databases]
app = host=127.0.0.1 port={PRIMARY_PORT} dbname=app user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {PGBOUNCER_PORT}
unix_socket_dir =
auth_type = {auth}
auth_file = {self.bouncer_dir}/userlist.txt
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 1000
logfile = {self.bouncer_dir}/pgbouncer.log
pidfile = {self.bouncer_dir}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
""")
        cmd = [binary, str(self.bouncer_dir / "pgbouncer.ini")]
        as_user = {}
        if as_root:
            # PgBouncer refuses to run as root: run it as postgres (what
            # `runuser -u postgres` does, but as our own child, so that we
            # signal and reap it directly). Its files must be postgres's.
            pw = pwd.getpwnam("postgres")
            for path in [self.bouncer_dir, *self.bouncer_dir.iterdir()]:
                os.chown(path, pw.pw_uid, pw.pw_gid)
            as_user = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                           env=dict(os.environ, HOME=pw.pw_dir, USER="postgres"))
        log(f"pgbouncer on {PGBOUNCER_PORT} (pool_mode transaction, default_pool_size "
            f"{POOL_SIZE}, auth {auth})")
        self.bouncer_proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, **as_user)
        wait_port(PGBOUNCER_PORT, 15, self.bouncer_proc, "pgbouncer",
                  self.bouncer_dir / "pgbouncer.log")

    # ---- measuring ----

    def target_args(self, target):
        if target == "direct":
            return ["-h", "127.0.0.1", "-p", str(PRIMARY_PORT), "-U", "postgres"]
        port = PGSHARD_PORT if target == "pgshard" else PGBOUNCER_PORT
        return ["-h", "127.0.0.1", "-p", str(port), "-U", "app"]

    def pgbench(self, target, clients, mode, duration):
        cmd = ["pgbench", "-n", "-S", "-M", mode, "-c", str(clients),
               "-j", str(min(clients, 2)), "-T", str(duration), *self.target_args(target), "app"]
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
            result["error"] = f"exit {proc.returncode}: " + " | ".join(out.strip().splitlines()[-3:])
        elif failed and int(failed.group(1)) > 0:
            result["error"] = f"{failed.group(1)} failed transactions"
        return result

    def measure(self):
        targets = self.args.targets
        log("warm-up: 1 s per target")
        for target in targets:
            self.pgbench(target, 16, "simple", 1)
        cells = [(c, m) for c in CLIENTS for m in MODES]
        total = len(cells) * self.args.reps * len(targets) * self.args.duration
        log(f"measuring {len(cells)} cells x {self.args.reps} reps x {len(targets)} targets "
            f"x {self.args.duration}s = about {total // 60}m{total % 60:02d}s")
        for clients, mode in cells:
            for rep in range(self.args.reps):
                shift = rep % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    res = self.pgbench(target, clients, mode, self.args.duration)
                    res.update(target=target, clients=clients, mode=mode, rep=rep)
                    self.runs.append(res)
                    shown = f"{res['tps']:.0f} tps" if res["tps"] is not None else res["error"]
                    log(f"  -c {clients:<2} {mode:<8} rep {rep + 1} {target:<9} {shown}")

    # ---- reporting ----

    def summary(self):
        rows = []
        for clients in CLIENTS:
            for mode in MODES:
                row = {"cell": f"-c {clients} {mode}", "clients": clients, "mode": mode}
                for target in TARGETS:
                    values = [r["tps"] for r in self.runs if r["target"] == target and
                              r["clients"] == clients and r["mode"] == mode and
                              r["tps"] is not None]
                    errors = [r["error"] for r in self.runs if r["target"] == target and
                              r["clients"] == clients and r["mode"] == mode and r["error"]]
                    row[target] = statistics.median(values) if values and not errors else None
                    row[target + "_runs"] = values
                    row[target + "_errors"] = errors
                row["pgshard/pgbouncer"] = ratio(row["pgshard"], row["pgbouncer"])
                row["pgshard/direct"] = ratio(row["pgshard"], row["direct"])
                rows.append(row)
        return rows

    def report(self, rows):
        out_dir = Path(self.args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        header = ["cell", "direct TPS", "pgshard TPS", "pgbouncer TPS", "pgshard/pgbouncer",
                  "pgshard/direct"]
        table = [[r["cell"], fmt_tps(r["direct"]), fmt_tps(r["pgshard"]),
                  fmt_tps(r["pgbouncer"]), fmt_ratio(r["pgshard/pgbouncer"]),
                  fmt_ratio(r["pgshard/direct"])] for r in rows]
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

        commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
        meta = (f"pgbench -S, scale {self.args.scale}, -j 2, {self.args.duration} s per run, "
                f"median of {self.args.reps} interleaved repetitions; transaction pooling, "
                f"{POOL_SIZE} server connections, auth {self.args.auth}; pgshard workers "
                f"{self.args.workers}. Commit {commit or '?'}, "
                f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
                f"{os.cpu_count()} CPUs, {platform.machine()}.")
        md = ["# pgbench: direct Postgres vs pgshard vs PgBouncer", "", meta, "",
              "| " + " | ".join(header) + " |",
              "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        md += ["| " + " | ".join(t) + " |" for t in table]
        if errors:
            md += ["", "Errors:", ""] + [f"- {c} {t}: {e}" for c, t, e in errors]
        md += ["", "Ratios above 1.00 mean pgshard is faster. `n/a`: a target failed in that cell.",
               "Raw runs: pgbench.json. Chart: pgbench.png.", ""]
        (out_dir / "pgbench.md").write_text("\n".join(md))
        (out_dir / "pgbench.json").write_text(json.dumps(
            {"meta": meta, "args": vars(self.args), "runs": self.runs,
             "summary": [{k: v for k, v in r.items()} for r in rows]}, indent=2))
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
        fig, ax = plt.subplots(figsize=(9, 5))
        width = 0.26
        for i, target in enumerate(TARGETS):
            xs = [j + (i - 1) * width for j in range(len(rows))]
            ys = [r[target] or 0 for r in rows]
            bars = ax.bar(xs, ys, width, label=target, color=colors[target])
            for x, r, bar in zip(xs, rows, bars):
                if r[target] is None:
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8)
                else:
                    ax.text(x, bar.get_height(), f"{r[target] / 1000:.1f}k", ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["cell"] for r in rows])
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
        stop_process("pgbouncer", self.bouncer_proc, problems, check_exit=False)
        stop_process("pgshard", self.pgshard_proc, problems)
        return release_lab(self, (PRIMARY_PORT, PGSHARD_PORT, PGBOUNCER_PORT), WORK, problems)


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_tps(v):
    return f"{v:,.0f}" if v is not None else "n/a"


def fmt_ratio(v):
    return f"{v:.2f}" if v is not None else "n/a"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default=str(REPO / "build"),
                        help="build directory with pgshard and pgshardctl (default: build)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per cell (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 rep")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="pgshard workers (default 2)")
    parser.add_argument("--auth", choices=["trust", "md5"], default="trust",
                        help="client auth for both poolers (default trust)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated subset of direct,pgshard,pgbouncer")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"),
                        help="where to write pgbench.md/.json/.png")
    parser.add_argument("--keep", action="store_true", help=f"keep {WORK} (logs) afterwards")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.reps = 2, 1
    args.targets = [t for t in args.targets.split(",") if t]
    if not args.targets or any(t not in TARGETS for t in args.targets):
        parser.error(f"--targets: choose from {','.join(TARGETS)}")

    bench = Bench(args)
    for binary in (bench.ctl_bin,) + ((bench.pgshard_bin,) if "pgshard" in args.targets else ()):
        if not binary.exists():
            parser.error(f"{binary} not found: build first (cmake --build {args.build})")

    def on_signal(signum, frame):
        raise Interrupted(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    ok = False
    try:
        bench.start_lab()
        bench.init_pgbench()
        if "pgshard" in args.targets:
            bench.start_pgshard()
        if "pgbouncer" in args.targets:
            bench.start_pgbouncer()
        bench.measure()
        ok = bench.report(bench.summary())
    except (Interrupted, KeyboardInterrupt) as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}): cleaning up")
    except Exception as exc:  # noqa: BLE001 - report, clean up, fail
        log(f"error: {exc}")
        if bench.pgshard_log.exists():
            log("pgshard log tail:\n" + bench.pgshard_log.read_text(errors="replace")[-2000:])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        clean = bench.cleanup()
    return 0 if ok and clean else 1


if __name__ == "__main__":
    sys.exit(main())
