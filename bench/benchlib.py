"""What the pgbench benchmarks in bench/ share: processes and ports, the lab,
pgshard and PgBouncer, pgbench runs and their latency logs, the tables and
result files, and the guarded main that cleans up after any error or signal.

Every benchmark imports from here and from nowhere else in bench/. Each one
keeps what is its own: its ports, its configs' contents, its workload, its
table's columns and its report's wording. Everything here listens and
connects on 127.0.0.1 only.
"""
import argparse
import datetime
import glob
import json
import math
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived (see run_guarded)."""


# ---- processes and ports ----

def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_port(port, timeout, proc=None, what="server", logfile=None):
    """Wait until PORT accepts connections; fail early if PROC has exited
    (with the tail of LOGFILE in the error)."""
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


def run(cmd, env=None, timeout=None, check=True):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---- the command line and main ----

def bench_parser(doc, duration):
    """The argument parser of a benchmark described by DOC (its first line):
    --build, --duration (default DURATION seconds) and --reps first."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--build", default=str(REPO / "build"),
                        help="build directory with pgshard and pgshardctl (default: build)")
    parser.add_argument("--duration", type=int, default=duration,
                        help=f"seconds per run (default {duration})")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per cell (default: the bench's own)")
    return parser


def add_client_options(parser, clients):
    """-c (default CLIENTS), -j and --modes."""
    parser.add_argument("-c", "--clients", type=int, default=clients,
                        help=f"pgbench clients (default {clients})")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="pgbench threads (default 2)")
    parser.add_argument("--modes", default="simple,extended",
                        help="pgbench -M modes, comma-separated (default simple,extended)")


def add_pgshard_options(parser, pool_size=None):
    """--workers, and --pool-size (default POOL_SIZE) if given."""
    parser.add_argument("--workers", type=int, default=2, help="pgshard workers (default 2)")
    if pool_size is not None:
        parser.add_argument("--pool-size", type=int, default=pool_size,
                            help=f"pgshard pool_size, server connections per node "
                                 f"(default {pool_size})")


def add_output_options(parser, files, work, kept="(logs)"):
    """--out (where FILES are written) and --keep (WORK, with what it KEPT)."""
    parser.add_argument("--out", default=str(RESULTS), help=f"where to write {files}")
    parser.add_argument("--keep", action="store_true", help=f"keep {work} {kept} afterwards")


def split_choices(parser, option, value, choices):
    """The comma-separated VALUE of OPTION as a list of CHOICES."""
    items = [x for x in value.split(",") if x]
    if not items or any(x not in choices for x in items):
        parser.error(f"{option}: choose from {','.join(choices)}")
    return items


def require_binaries(parser, build, *binaries):
    for binary in binaries:
        if not binary.exists():
            parser.error(f"{binary} not found: build first (cmake --build {build})")


def run_guarded(body, cleanup, log_files=()):
    """Run BODY (returns whether it succeeded) with SIGTERM and SIGHUP raised
    as Interrupted, then CLEANUP (returns whether it was complete) whatever
    happened, with SIGTERM and SIGINT ignored so that it runs to the end. On
    an error, the tail of each existing file of LOG_FILES ((title, path)
    pairs) is logged. Returns the exit status: 0 only if both succeeded."""
    def on_signal(signum, frame):
        raise Interrupted(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    ok = False
    try:
        ok = body()
    except (Interrupted, KeyboardInterrupt) as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}): cleaning up")
    except Exception as exc:  # noqa: BLE001 - report, clean up, fail
        log(f"error: {type(exc).__name__}: {exc}")
        for title, path in log_files:
            if path.exists():
                log(f"{title}:\n" + path.read_text(errors="replace")[-2000:])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        clean = cleanup()
    return 0 if ok and clean else 1


# ---- a benchmark ----

class BenchBase:
    """What every benchmark holds: ARGS, the binaries of --build, its lab
    (LAB_CONFIG, LAB_DIR), the processes it started (name -> Popen) and its
    pgbench runs."""

    def __init__(self, args, lab_config, lab_dir):
        self.args = args
        self.build = Path(args.build).resolve()
        self.pgshard_bin = self.build / "pgshard"
        self.ctl_bin = self.build / "pgshardctl"
        self.lab = Lab(self.ctl_bin, lab_config, lab_dir)
        self.procs = {}  # name -> Popen
        self.runs = []   # every pgbench run: dict


# ---- the lab ----

def prepare_work(work):
    """WORK, readable by the postgres user the lab's servers run as."""
    work.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(work, 0o755)


class Lab:
    """`pgshardctl lab VERB -c CONFIG --dir DIRECTORY` for one benchmark."""

    def __init__(self, ctl_bin, config, directory):
        self.ctl_bin = ctl_bin
        self.config = config
        self.dir = directory
        self.started = False

    def __call__(self, *verb, check=True, timeout=300):
        cmd = [str(self.ctl_bin), "lab", *verb, "-c", str(self.config), "--dir", str(self.dir)]
        for attempt in range(30):
            try:
                return run(cmd, timeout=timeout, check=check)
            except OSError:
                # pgshardctl is being relinked by a concurrent build (EACCES,
                # ETXTBSY): wait for it rather than leave servers running.
                if attempt == 29:
                    raise
                time.sleep(1)

    def up(self, description, ports, timeout=300, what="lab server {port}", tls=False):
        """`lab up --no-proxy` (after purging what a previous run left) and
        wait until every one of PORTS listens. TLS: `--tls`, servers that take
        TLS connections only, their certificate and CA in tls_file()."""
        if self.dir.exists():
            self("down", "--purge", check=False)
        log(f"lab up: {description}, data in {self.dir}")
        self.started = True
        self("up", "--no-proxy", *(("--tls",) if tls else ()), timeout=timeout)
        for port in ports:
            wait_port(port, 60, what=what.format(port=port))

    def tls_file(self, name):
        """A file of a TLS lab's material: ca.crt, server.crt, server.key
        (postgres-owned, 0600)."""
        return self.dir / "tls" / name

    def release(self, ports, work, keep, problems):
        """The end of every benchmark: `lab down --purge` if the lab was
        started, wait for PORTS to close, remove WORK unless KEEP, log
        PROBLEMS. Returns whether there were none."""
        if self.started and self.ctl_bin.exists():
            proc = self("down", "--purge", check=False)
            if proc.returncode != 0:
                problems.append(f"lab down --purge: exit {proc.returncode} {proc.stderr.strip()}")
                self("down", check=False)
        for port in ports:
            deadline = time.monotonic() + 20
            while port_open(port) and time.monotonic() < deadline:
                time.sleep(0.2)
            if port_open(port):
                problems.append(f"port {port} still open after cleanup")
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        for p in problems:
            log(f"cleanup: {p}")
        return not problems


def shard_section(database, shard, port, dbname="app", replicas=(), conninfo_extra=""):
    """A [shard.DATABASE.SHARD] section: the server on PORT (and REPLICAS),
    user postgres, then CONNINFO_EXTRA (say "sslmode=require") in each
    conninfo."""
    extra = f" {conninfo_extra}" if conninfo_extra else ""
    text = (f"[shard.{database}.{shard}]\n"
            f"primary = host=127.0.0.1 port={port} dbname={dbname} user=postgres{extra}\n")
    for replica in replicas:
        text += f"replica = host=127.0.0.1 port={replica} dbname={dbname} user=postgres{extra}\n"
    return text


def lab_preamble(comment, lab_proxy_port):
    """A benchmark lab config up to its [database.app] line (the section's
    keys and the shards follow): COMMENT, a [pgshard] on LAB_PROXY_PORT
    (never started: `lab up --no-proxy`), trust auth, user app."""
    return f"""\
; {comment}
[pgshard]
listen = 127.0.0.1:{lab_proxy_port}
auth = trust

[user.app]
password = secret

[database.app]
"""


def one_primary_lab(comment, lab_proxy_port, pool_size, primary_port, conninfo_extra=""):
    """The lab config of a benchmark with one primary on PRIMARY_PORT (user
    app, transaction pooling, POOL_SIZE). Its proxy, on LAB_PROXY_PORT, is
    never started (`lab up --no-proxy`): the benchmark starts its own."""
    return (lab_preamble(comment, lab_proxy_port)
            + f"pool_mode = transaction\npool_size = {pool_size}\n\n"
            + shard_section("app", "s0", primary_port, conninfo_extra=conninfo_extra))


def start_two_shard_lab(lab, work, title, s0_port, s1_port, solo_port, lab_proxy_port,
                        extra_sections, solo_what):
    """`lab up --no-proxy` of shards s0 and s1 of database app and of a third
    server on SOLO_PORT whose databases EXTRA_SECTIONS names; waits until the
    three listen."""
    prepare_work(work)
    lab.config.write_text(lab_preamble(f"written by {title}", lab_proxy_port)
                          + shard_section("app", "s0", s0_port)
                          + shard_section("app", "s1", s1_port) + extra_sections)
    lab.up(f"s0 on {s0_port}, s1 on {s1_port}, {solo_what}", (s0_port, s1_port, solo_port))


# ---- the servers' data ----

def psql(port, *sql, dbname="app", timeout=600):
    """Run each of SQL on the server on PORT as postgres; its output (-At)."""
    cmd = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
           "-p", str(port), "-U", "postgres", "-d", dbname]
    for s in sql:
        cmd += ["-c", s]
    return run(cmd, timeout=timeout).stdout


def copy_in(port, dbname, copy, data, what):
    """psql's COPY (the \\copy command COPY) of the text DATA into DBNAME on
    PORT; an error names WHAT."""
    proc = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                           "-p", str(port), "-U", "postgres", "-d", dbname, "-c", copy],
                          input=data, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"COPY into {what}: {proc.stderr.strip()}")


def init_pgbench(port, scale):
    """`pgbench -i` at SCALE on the server on PORT, VACUUM ANALYZE, a checkpoint."""
    run(["pgbench", "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
         "-p", str(port), "-U", "postgres", "app"], timeout=1200)
    run(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
         "-d", "app", "-c", "vacuum analyze", "-c", "checkpoint"], timeout=600)


# ---- pgshard and PgBouncer ----

def pgshard_ini(comment, port, workers, pool_size, shards, auth="trust", database_extra="",
                pgshard_extra="", max_client_conn=1000):
    """A pgshard config: listen on PORT, MAX_CLIENT_CONN, PGSHARD_EXTRA (lines of [pgshard]),
    user app (password secret), database app with transaction pooling and
    DATABASE_EXTRA, then SHARDS (sections)."""
    return f"""\
; {comment}
[pgshard]
listen = 127.0.0.1:{port}
workers = {workers}
auth = {auth}
log_format = text
max_client_conn = {max_client_conn}
{pgshard_extra}

[user.app]
password = secret

[database.app]
pool_mode = transaction
pool_size = {pool_size}
{database_extra}
{shards}"""


def hash_table_section(table, column):
    """A [table.app.TABLE] section: hash on the bigint COLUMN."""
    return f"\n[table.app.{table}]\ncolumn = {column}\ntype = bigint\nstrategy = hash\n"


def check_config(ctl_bin, path):
    proc = run([str(ctl_bin), "check", str(path)], check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pgshardctl check {path}:\n{proc.stdout}{proc.stderr}")


def route_keys(ctl_bin, config, table, keys, shards, what="pgshardctl route --stdin"):
    """The shard `pgshardctl route --stdin` names for each of KEYS (strings)
    of TABLE in database app under CONFIG; each must be one of SHARDS."""
    proc = subprocess.run([str(ctl_bin), "route", "--stdin", str(config), "app", table],
                          input="\n".join(keys) + "\n", capture_output=True, text=True,
                          timeout=600)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != len(keys):
        raise RuntimeError(f"{what}: exit {proc.returncode}, {len(lines)} lines for "
                           f"{len(keys)} keys: {proc.stderr.strip()}")
    out = []
    for key, line in zip(keys, lines):
        k, _, shard = line.partition("\t")
        if k != key or shard not in shards:
            raise RuntimeError(f"{what}: unexpected line {line!r}")
        out.append(shard)
    return out


def start_pgshard(procs, name, binary, config, port, logfile):
    """Start `pgshard -c CONFIG` (output appended to LOGFILE) as PROCS[NAME],
    so that cleanup stops it even if it never listens, and wait for PORT."""
    with open(logfile, "ab") as logf:
        procs[name] = subprocess.Popen([str(binary), "-c", str(config)],
                                       stdin=subprocess.DEVNULL, stdout=logf,
                                       stderr=subprocess.STDOUT)
    wait_port(port, 15, procs[name], name, logfile)


def start_pgbouncer(procs, directory, port, server_port, pool_size, auth, comment, extra="",
                    max_client_conn=1000):
    """Debian's pgbouncer on PORT in front of database app on SERVER_PORT:
    transaction pooling, DEFAULT_POOL_SIZE, MAX_CLIENT_CONN, AUTH (trust or md5, user app with
    password secret), EXTRA (lines of [pgbouncer]: TLS settings, say), its
    files in DIRECTORY. Stored as PROCS["pgbouncer"]."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "userlist.txt").write_text('"app" "secret"\n')
    (directory / "pgbouncer.ini").write_text(f"""\
; {comment}
[databases]
app = host=127.0.0.1 port={server_port} dbname=app user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = {auth}
auth_file = {directory}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_client_conn}
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
{extra}""")
    as_user = {}
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: run it as postgres (what
        # `runuser -u postgres` does, but as our own child, so that we
        # signal and reap it directly). Its files must be postgres's.
        pw = pwd.getpwnam("postgres")
        for path in [directory, *directory.iterdir()]:
            os.chown(path, pw.pw_uid, pw.pw_gid)
        as_user = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                       env=dict(os.environ, HOME=pw.pw_dir, USER="postgres"))
    procs["pgbouncer"] = subprocess.Popen(
        [binary, str(directory / "pgbouncer.ini")], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user)
    wait_port(port, 15, procs["pgbouncer"], "pgbouncer", directory / "pgbouncer.log")


# ---- pgbench ----

def connect_args(port, user):
    """pgbench's (and psql's) options for database app on PORT as USER."""
    return ["-h", "127.0.0.1", "-p", str(port), "-U", user, "app"]


def run_pgbench(options, target, timeout, keys=("tps", "seconds", "error"),
                latency_prefix=None, need_latency_avg=False):
    """`pgbench OPTIONS TARGET` (TARGET: connect_args), as user app's password
    secret, killed after TIMEOUT seconds. With LATENCY_PREFIX, pgbench writes
    its per-transaction log there (-l), read for p50/p99 and then removed.

    The result has the KEYS it names, in that order, among: tps (without
    initial connection time), latency_ms (pgbench's average), transactions,
    seconds (wall clock), loadavg (before the run), error (None or why the
    run does not count: an exit status, failed transactions), p50_ms,
    p99_ms, latency_samples. A run counts only if pgbench exited 0 and printed
    its tps (and its latency average if NEED_LATENCY_AVG); otherwise tps and
    latency_ms are None. After a timeout: only tps, latency_ms, p50_ms,
    p99_ms, loadavg and error, of KEYS."""
    cmd = ["pgbench", *options]
    if latency_prefix is not None:
        cmd += ["-l", f"--log-prefix={latency_prefix}"]
    cmd += target
    env = dict(os.environ, PGPASSWORD="secret", PGCONNECT_TIMEOUT="10")
    load = loadavg()
    started = time.monotonic()
    try:
        proc = run(cmd, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        res = {"tps": None, "latency_ms": None, "p50_ms": None, "p99_ms": None,
               "loadavg": load, "error": f"pgbench timed out after {timeout}s"}
        return {k: res[k] for k in keys if k in res}
    seconds = round(time.monotonic() - started, 2)
    out = proc.stdout + proc.stderr
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    lat = re.search(r"latency average = ([0-9.]+) ms", out)
    xacts = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    ok = proc.returncode == 0 and tps and (lat or not need_latency_avg)
    res = {"tps": float(tps.group(1)) if ok else None,
           "latency_ms": float(lat.group(1)) if ok and lat else None,
           "transactions": int(xacts.group(1)) if xacts else None,
           "seconds": seconds, "loadavg": load, "error": None,
           "p50_ms": None, "p99_ms": None, "latency_samples": 0}
    if not ok:
        res["error"] = f"exit {proc.returncode}: " + " | ".join(out.strip().splitlines()[-3:])
    elif failed and int(failed.group(1)) > 0:
        res["error"] = f"{failed.group(1)} failed transactions"
    if latency_prefix is not None:
        samples = latency_samples(latency_prefix)
        if samples:
            res.update(p50_ms=percentile(samples, 50) / 1000.0,
                       p99_ms=percentile(samples, 99) / 1000.0,
                       latency_samples=len(samples))
    return {k: res[k] for k in keys}


def process_cpu(pid):
    """(CPU seconds, voluntary and involuntary context switches) PID's
    threads have used so far, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    seconds = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    switches = [0, 0]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        for i, key in enumerate(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            switches[i] += int(re.search(rf"^{key}:\s+(\d+)", text, re.M).group(1))
    return seconds, switches[0], switches[1]


def latency_samples(prefix):
    """Every transaction's latency (µs, the third column) from pgbench's
    per-transaction logs PREFIX.*, sorted; the files are removed."""
    samples = []
    for path in glob.glob(f"{prefix}.*"):
        with open(path) as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    samples.append(int(fields[2]))
        os.unlink(path)
    samples.sort()
    return samples


def rotated(targets, rep):
    """TARGETS in the order of repetition REP: each repetition starts one
    further, so that drift during a run (caches, CPU clock, background work)
    is spread over all targets instead of favouring one."""
    shift = rep % max(1, len(targets))
    return targets[shift:] + targets[:shift]


def about(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ---- statistics ----

def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    k = math.ceil(q / 100.0 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def target_medians(row, target, runs, extra=()):
    """Into ROW: TARGET's median TPS over RUNS (its runs of one cell), and the
    medians of EXTRA ((suffix, run key) pairs) as TARGET + suffix, None if any
    run failed; TARGET_runs (every TPS) and TARGET_errors."""
    errors = [r["error"] for r in runs if r["error"]]
    ok = [r for r in runs if r["tps"] is not None]
    good = ok and not errors
    row[target] = median_or_none([r["tps"] for r in ok]) if good else None
    for suffix, key in extra:
        row[target + suffix] = median_or_none([r[key] for r in ok]) if good else None
    row[target + "_runs"] = [r["tps"] for r in ok]
    row[target + "_errors"] = errors


def cell_summary(runs, cells, targets, extra=()):
    """One row per cell of CELLS ((name, {run key: value}) pairs: the runs of
    that cell): the cell's name and keys, then target_medians for each of
    TARGETS."""
    rows = []
    for name, keys in cells:
        row = {"cell": name, **keys}
        mine = [r for r in runs if all(r[k] == v for k, v in keys.items())]
        for target in targets:
            target_medians(row, target, [r for r in mine if r["target"] == target], extra)
        rows.append(row)
    return rows


def ratio(a, b):
    return a / b if a is not None and b else None


# ---- reporting ----

def fmt_tps(v):
    return f"{v:,.0f}" if v is not None else "n/a"


def fmt_ratio(v):
    return f"{v:.2f}" if v is not None else "n/a"


def fmt_ms(v, digits=2):
    return f"{v:.{digits}f}" if v is not None else "n/a"


def text_table(header, rows):
    """Lines of a plain-text table: the first column left-aligned, the others
    right-aligned."""
    widths = [max(len(h), *(len(t[i]) for t in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    for t in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(t, widths))))
    return lines


def print_table(header, rows, errors):
    """The table after a blank line, then the first 20 ERRORS (row_errors)."""
    print()
    print("\n".join(text_table(header, rows)))
    for cell, target, error in errors[:20]:
        print(f"error: {cell} {target}: {error}")


def md_table(header, rows, left=1):
    """Lines of a markdown table: the first LEFT columns left-aligned, the
    others right-aligned."""
    md = ["| " + " | ".join(header) + " |",
          "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"]
    return md + ["| " + " | ".join(t) + " |" for t in rows]


def row_errors(rows, targets):
    """(cell, target, error) of every failed run in summary ROWS."""
    return [(r["cell"], t, e) for r in rows for t in targets for e in r[t + "_errors"]]


def stamp(cpus=True):
    """"Commit ..., date[, N CPUs], machine" for a report's header."""
    commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                 check=False).stdout.strip()
    return (f"Commit {commit or '?'}, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
            + (f"{os.cpu_count()} CPUs, " if cpus else "") + platform.machine())


def write_results(out_dir, stem, md, data):
    """OUT_DIR/STEM.md (the lines MD) and OUT_DIR/STEM.json (DATA)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text("\n".join(md))
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=2))
