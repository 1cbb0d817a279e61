#!/usr/bin/python3
"""Memory per idle client: pgshard and PgBouncer side by side, same run.

Both poolers stand in front of one PostgreSQL 15 primary (`pgshardctl lab
up --no-proxy`, ports 6600-6603, data under /tmp), with transaction pooling
and trust auth. For each target in turn (one running at a time):

  1. one client logs in, and a warm-up crowd of 200 (the logins in flight
     at a time) logs in, runs a query each and leaves, so that what the
     pooler keeps for a burst of traffic whatever the number of clients (its
     buffer caches) is in the baseline; the process's resident memory
     (VmRSS) is read when it has settled: the idle process;
  2. N clients log in (--clients, default 10,000; 200 logins in flight at a
     time) and stay connected, idle: RSS again, and the time the logins
     took;
  3. every one of them runs one `SELECT 1` and goes idle again (what an
     application's pooled connection looks like): RSS again;
  4. with all N still connected, pgbench -S -c 16 runs for --duration
     seconds through the same pooler; its TPS is compared with a pgbench run
     of the same length before the crowd came (--load; skipped with
     --no-load): idle clients must not slow the others;
  5. the N clients disconnect: RSS once more.

KiB per client = (RSS after 2 or 3 - RSS of 1) / N. Clients come from
127.0.0.1 up to 127.0.0.4 (each source address has ~28,000 ephemeral
ports), so 100,000 clients fit on loopback. Each process needs a file per
client: the bench raises its soft limit and the poolers inherit it (beyond
the hard limit only with CAP_SYS_RESOURCE).

  /usr/bin/python3 bench/idle_clients.py --build build
  /usr/bin/python3 bench/idle_clients.py --build build --clients 100000 --targets pgshard
"""
import resource
import selectors
import socket
import struct
import sys
import time
from pathlib import Path

from benchlib import (BenchBase, add_output_options, bench_parser, connect_args, fmt_ratio,
                      init_pgbench, log, md_table, one_primary_lab, pgshard_ini, prepare_work,
                      print_table, ratio, require_binaries, run_guarded, run_pgbench,
                      shard_section, split_choices, stamp, start_pgbouncer, start_pgshard,
                      stop_process, write_results)

PORT_BASE = 6600
PRIMARY_PORT = PORT_BASE
PGSHARD_PORT = PORT_BASE + 1
PGBOUNCER_PORT = PORT_BASE + 2
LAB_PROXY_PORT = PORT_BASE + 3  # named in the lab config, never started (--no-proxy)
WORK = Path(f"/tmp/pgshard-bench-{PORT_BASE}")
TARGETS = ["pgshard", "pgbouncer"]
PORTS = {"pgshard": PGSHARD_PORT, "pgbouncer": PGBOUNCER_PORT}
IN_FLIGHT = 200        # logins (or queries) at once
PER_SOURCE = 25000     # clients per source address (127.0.0.K)
STARTUP = struct.pack("!I", 196608) + b"user\0app\0database\0app\0\0"
STARTUP = struct.pack("!I", len(STARTUP) + 4) + STARTUP
QUERY = b"SELECT 1\0"
QUERY = b"Q" + struct.pack("!I", len(QUERY) + 4) + QUERY


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss(pid, seconds=2.0):
    """VmRSS once it has stopped moving (at most SECONDS of 0.25 s samples)."""
    last = rss_kib(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss_kib(pid)
        if now == last:
            break
        last = now
    return last


class Crowd:
    """N connections to PORT, each driven to ReadyForQuery by a small
    protocol reader (trust auth: AuthenticationOk, ParameterStatus,
    BackendKeyData, ReadyForQuery); any ErrorResponse fails the bench."""

    def __init__(self, port):
        self.port = port
        self.socks = []

    def _drive(self, starts, send, what, timeout):
        """Run SEND on each of STARTS (indexes) with at most IN_FLIGHT waiting
        for their ReadyForQuery. Returns the seconds it took."""
        sel = selectors.DefaultSelector()
        pending = list(starts)
        pending.reverse()
        buffers = {}
        t0 = time.monotonic()
        deadline = t0 + timeout
        done = 0
        total = len(pending)
        while done < total:
            while pending and len(buffers) < IN_FLIGHT:
                i = pending.pop()
                sock = send(i)
                buffers[sock] = b""
                sel.register(sock, selectors.EVENT_READ)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {done} of {total} done after {timeout} s")
            for key, _ in sel.select(timeout=1.0):
                sock = key.fileobj
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError(f"{what}: the pooler closed a connection ({done} done)")
                buf = buffers[sock] + data
                while len(buf) >= 5:
                    kind = buf[0:1]
                    size = struct.unpack("!I", buf[1:5])[0]
                    if len(buf) < 1 + size:
                        break
                    body, buf = buf[5:1 + size], buf[1 + size:]
                    if kind == b"E":
                        raise RuntimeError(f"{what}: ErrorResponse {body!r}")
                    if kind == b"Z":
                        sel.unregister(sock)
                        del buffers[sock]
                        done += 1
                        buf = None
                        break
                if buf is not None:
                    buffers[sock] = buf
        sel.close()
        return time.monotonic() - t0

    def login(self, n, timeout):
        def send(i):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((f"127.0.0.{1 + i // PER_SOURCE}", 0))
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(STARTUP)
            self.socks.append(sock)
            return sock
        return self._drive(range(n), send, "login", timeout)

    def query_each(self, timeout):
        def send(i):
            self.socks[i].sendall(QUERY)
            return self.socks[i]
        return self._drive(range(len(self.socks)), send, "SELECT 1 each", timeout)

    def close(self):
        for sock in self.socks:
            sock.close()
        self.socks = []


class Bench(BenchBase):
    def __init__(self, args):
        super().__init__(args, WORK / "lab.ini", WORK / "lab")
        self.results = []

    def start_lab(self):
        prepare_work(WORK)
        self.lab.config.write_text(one_primary_lab(
            "written by bench/idle_clients.py: one primary for the benchmark", LAB_PROXY_PORT,
            self.args.pool_size, PRIMARY_PORT))
        self.lab.up(f"primary on {PRIMARY_PORT}", (PRIMARY_PORT,), what="lab primary")
        if self.args.load:
            log("pgbench -i -s 1")
            init_pgbench(PRIMARY_PORT, 1)

    def start(self, target):
        limit = self.args.clients + 2000
        if target == "pgshard":
            config = WORK / "pgshard.ini"
            config.write_text(pgshard_ini(
                "written by bench/idle_clients.py", PGSHARD_PORT, self.args.workers,
                self.args.pool_size, shard_section("app", "s0", PRIMARY_PORT),
                max_client_conn=limit))
            start_pgshard(self.procs, target, self.pgshard_bin, config, PGSHARD_PORT,
                          WORK / "pgshard.log")
        else:
            start_pgbouncer(self.procs, WORK / "pgbouncer", PGBOUNCER_PORT, PRIMARY_PORT,
                            self.args.pool_size, "trust", "written by bench/idle_clients.py",
                            max_client_conn=limit)
        return self.procs[target].pid

    def stop(self, target):
        problems = []
        stop_process(target, self.procs.pop(target, None), problems, check_exit=target != "pgbouncer")
        if problems:
            raise RuntimeError("; ".join(problems))

    def pgbench_tps(self, target):
        res = run_pgbench(["-n", "-S", "-c", "16", "-j", "2", "-T", str(self.args.duration)],
                          connect_args(PORTS[target], "app"), self.args.duration + 60)
        if res["tps"] is None:
            raise RuntimeError(f"pgbench through {target}: {res['error']}")
        return res["tps"]

    def measure(self, target):
        n = self.args.clients
        pid = self.start(target)
        row = {"target": target, "clients": n}
        one = Crowd(PORTS[target])
        one.login(1, 30)
        warm = Crowd(PORTS[target])
        warm.login(IN_FLIGHT, 60)
        warm.query_each(60)
        warm.close()
        time.sleep(1)
        if self.args.load:
            row["tps_alone"] = self.pgbench_tps(target)
        row["rss_idle_kib"] = settled_rss(pid)
        crowd = Crowd(PORTS[target])
        try:
            row["login_s"] = crowd.login(n, 600)
            row["rss_logged_in_kib"] = settled_rss(pid)
            row["query_s"] = crowd.query_each(600)
            row["rss_after_query_kib"] = settled_rss(pid)
            if self.args.load:
                row["tps_with_crowd"] = self.pgbench_tps(target)
                row["rss_after_load_kib"] = settled_rss(pid)
        finally:
            crowd.close()
            one.close()
        time.sleep(1)
        row["rss_after_close_kib"] = settled_rss(pid)
        for key in ("logged_in", "after_query"):
            row[f"per_client_{key}_kib"] = (row[f"rss_{key}_kib"] - row["rss_idle_kib"]) / n
        self.stop(target)
        log(f"  {target}: idle {row['rss_idle_kib']} KiB; {n} logged in in {row['login_s']:.1f} s: "
            f"{row['rss_logged_in_kib']} KiB ({row['per_client_logged_in_kib']:.2f} KiB/client); "
            f"after a query each: {row['rss_after_query_kib']} KiB "
            f"({row['per_client_after_query_kib']:.2f} KiB/client); closed: "
            f"{row['rss_after_close_kib']} KiB")
        self.results.append(row)

    def report(self):
        header = ["target", "clients", "idle RSS MiB", "logged in MiB", "KiB/client",
                  "after a query each MiB", "KiB/client", "login s", "tps alone",
                  "tps with crowd", "with/alone"]
        mib = lambda kib: f"{kib / 1024:.1f}"  # noqa: E731
        table = []
        for r in self.results:
            table.append([r["target"], str(r["clients"]), mib(r["rss_idle_kib"]),
                          mib(r["rss_logged_in_kib"]), f"{r['per_client_logged_in_kib']:.2f}",
                          mib(r["rss_after_query_kib"]), f"{r['per_client_after_query_kib']:.2f}",
                          f"{r['login_s']:.1f}",
                          f"{r['tps_alone']:.0f}" if "tps_alone" in r else "-",
                          f"{r['tps_with_crowd']:.0f}" if "tps_with_crowd" in r else "-",
                          fmt_ratio(ratio(r.get("tps_with_crowd"), r.get("tps_alone")))])
        print_table(header, table, [])
        meta = (f"{self.args.clients} idle clients per target (trust auth, transaction pooling, "
                f"pool_size {self.args.pool_size}, pgshard workers {self.args.workers}); VmRSS of "
                f"the pooler's process; pgbench -S -c 16 for {self.args.duration} s. {stamp()}.")
        md = ["# Memory per idle client", "", meta, "", *md_table(header, table)]
        write_results(Path(self.args.out), "idle_clients", md,
                      {"meta": meta, "args": vars(self.args), "results": self.results})
        log(f"wrote {self.args.out}/idle_clients.md, idle_clients.json")
        return True

    def cleanup(self):
        problems = []
        for target in list(self.procs):
            stop_process(target, self.procs.get(target), problems, check_exit=False)
        return self.lab.release((PRIMARY_PORT, *PORTS.values()), WORK, self.args.keep, problems)


def main():
    parser = bench_parser(__doc__, duration=5)
    parser.add_argument("--clients", type=int, default=10000, help="idle clients (default 10000)")
    parser.add_argument("--targets", default="pgshard,pgbouncer",
                        help="comma-separated subset of pgshard,pgbouncer (default both)")
    parser.add_argument("--no-load", dest="load", action="store_false",
                        help="no pgbench runs (memory only)")
    parser.add_argument("--workers", type=int, default=2, help="pgshard workers (default 2)")
    parser.add_argument("--pool-size", type=int, default=10, help="pool_size (default 10)")
    add_output_options(parser, "idle_clients.md/.json", WORK)
    args = parser.parse_args()
    args.targets = split_choices(parser, "--targets", args.targets, TARGETS)
    if not 1 <= args.clients <= 4 * PER_SOURCE:
        parser.error(f"--clients: 1 to {4 * PER_SOURCE}")
    # Every client is a socket here and one in the pooler (with its servers
    # and files): room for them in this process and the ones it starts. A
    # hard limit below that cannot be raised without CAP_SYS_RESOURCE.
    want = args.clients + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError) as exc:
            parser.error(f"{args.clients} clients need {want} open files per process; the "
                         f"limit is {soft} (hard {hard}) and cannot be raised here ({exc})")
    bench = Bench(args)
    require_binaries(parser, args.build, bench.ctl_bin, bench.pgshard_bin)

    def body():
        bench.start_lab()
        for target in args.targets:
            log(f"{target}: {args.clients} idle clients")
            bench.measure(target)
        return bench.report()

    return run_guarded(body, bench.cleanup, [("pgshard log tail", WORK / "pgshard.log")])


if __name__ == "__main__":
    sys.exit(main())
