#!/usr/bin/python3
"""Bounded soak: pgshard under mixed load while faults are injected.

`make soak` (SOAK_SECONDS, default 600) runs this. It starts a lab with the
project's lab code (`pgshardctl lab up --no-proxy`, through the integration
fixtures' Lab class): database app on two shards, each a PostgreSQL 15
primary and one streaming replica, and one pgshard in front of it (replicas
on, cross_shard_writes = 2pc, transaction pooling, pool_size 10,
client_write_timeout_ms set). Then, for SOAK_SECONDS:

  load    about 30 client threads (psycopg 3 and raw sockets): cross-shard
          transfers (one account on each shard, both legs and a row in
          xfer_leg on each shard, in one transaction: two-phase commit),
          reads by key, keyless sums (fan-out), clients that vanish in the
          middle of a transaction or of a COMMIT, and a reader that stops
          reading a large result;
  faults  about one a minute, cycling: pg_terminate_backend of pgshard's
          servers, replica replay paused and resumed, a replica stopped and
          started, SIGHUP with the same config, SIGHUP with a broken config
          (must be refused), a primary stopped for 10 s and started.

Every operation runs under a watchdog: one that has not returned after
SOAK_HUNG_SECONDS (60) counts as a hung client and its socket is shut so the
soak itself goes on. At the end the load stops and the checks run directly
against the primaries:

  lost           acknowledged transfers (COMMIT answered COMMIT) missing a leg
  half-applied   transfers with one leg only, accounts whose balance is not
                 their initial balance plus their legs, total balance drift
  phantom        transfers whose client got an error before COMMIT, present
  hung           operations that did not return within the bound
  leaked slots   pgshard's servers not idle once the load stopped (or more of
                 them on a node than pool_size allows)
  prepared left  pg_prepared_xacts on a primary after the recovery bound
and prints a table (also written as JSON beside the lab). Errors clients get
while faults happen are expected; they are counted by SQLSTATE class and by
the fault whose window they fell in. Exit status 1 when any count above is
not zero, pgshard died or did not exit cleanly, or an anomaly was seen (a
broken config accepted, a stalled reader not closed, a read by key without
its row, a keyless count(*) short); 2 when the soak could not run.

Environment: SOAK_SECONDS, SOAK_PORT_BASE (5900: lab servers BASE..BASE+3,
pgshard from BASE+10), SOAK_FAULT_INTERVAL (seconds; default 60, shorter for
short runs so every fault comes round), SOAK_CLIENTS (30), SOAK_KEEP_LAB=1,
PGSHARD_BUILD (default <repo>/build).
"""
import argparse
import collections
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", "600")))
    p.add_argument("--build", default=os.environ.get("PGSHARD_BUILD") or str(REPO / "build"))
    p.add_argument("--port-base", type=int, default=int(os.environ.get("SOAK_PORT_BASE", "5900")))
    p.add_argument("--clients", type=int, default=int(os.environ.get("SOAK_CLIENTS", "30")))
    p.add_argument("--fault-interval", type=float,
                   default=float(os.environ.get("SOAK_FAULT_INTERVAL", "0")) or None)
    p.add_argument("--hung-seconds", type=float,
                   default=float(os.environ.get("SOAK_HUNG_SECONDS", "60")))
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or None)
    p.add_argument("--keep-lab", action="store_true",
                   default=os.environ.get("SOAK_KEEP_LAB") == "1")
    return p.parse_args()


ARGS = parse_args()
# The integration fixtures read these at import: the lab binaries, and the
# port range their Proxy class picks pgshard's port from (BASE+10 ..).
os.environ["PGSHARD_BUILD"] = str(Path(ARGS.build).resolve())
os.environ["PGSHARD_IT_PORT_BASE"] = str(ARGS.port_base)
sys.path.insert(0, str(REPO / "tests" / "integration"))

import psycopg  # noqa: E402
import conftest  # noqa: E402
import pgwire  # noqa: E402
from conftest import Lab, LabShard, Proxy  # noqa: E402

INITIAL_BALANCE = 1000
CLIENT_WRITE_TIMEOUT_MS = 3000
QUERY_WAIT_TIMEOUT_MS = 20000
# Server-side bounds every client session carries (startup options): a
# transfer waiting on a row lock held by a transaction in doubt gets 55P03
# instead of waiting for recovery.
SERVER_OPTIONS = "-c statement_timeout=30000 -c lock_timeout=15000"
MAP = """
[table.app.acct]
column = id
type = bigint
strategy = hash

[table.app.xfer_leg]
column = acct_id
type = bigint
strategy = hash
"""
FAULTS = ["terminate_backends", "replay_pause", "replica_restart", "sighup_same",
          "sighup_broken", "primary_stop"]


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- the lab

class SoakLab(Lab):
    """Shards s0 and s1 of database app, each a primary and one streaming
    replica, on ports BASE .. BASE+3."""

    def __init__(self, root, base):
        super().__init__(root, [LabShard("s0", base, base + 1), LabShard("s1", base + 2, base + 3)],
                         title="the soak lab (2 shards x primary + replica)")
        self.unused_listen = base + 9

    def write_config(self):
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.config.write_text(f"""\
; written by tests/soak/soak.py: {self.title}
[pgshard]
listen = 127.0.0.1:{self.unused_listen}
workers = 2
auth = scram-sha-256

[user.app]
password = secret

[database.app]
pool_mode = transaction
pool_size = 20
""" + "\n".join(self.shard_sections()) + "\n")


# ---------------------------------------------------------------- bookkeeping

def error_class(exc):
    """A short class for an error a client got: the SQLSTATE's class (two
    characters), or a name for errors without one."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return state[:2]
    if isinstance(exc, HungOp):
        return "hung"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, (EOFError, ConnectionError, BrokenPipeError)):
        return "eof"
    if isinstance(exc, psycopg.OperationalError):
        return "conn"  # libpq: connection refused, closed unexpectedly ...
    if isinstance(exc, Anomaly):
        return "anomaly"
    return type(exc).__name__


def error_text(exc):
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return normalise(text)[:200]


def normalise(text):
    """Numbers (but ports) and gids replaced, so that alike messages group."""
    text = re.sub(r"pgshard_[0-9a-f_]+", "pgshard_<gid>", text)
    return re.sub(r"(?<!port )\b\d+\b", "N", text)


class HungOp(Exception):
    """The watchdog shut this operation's socket."""


class Anomaly(Exception):
    """A result that must not happen (wrong row count, unexpected tag)."""


class Soak:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.phase = "baseline"
        self.phase_counts = collections.Counter()
        self.errors = collections.defaultdict(collections.Counter)  # phase -> class -> n
        self.error_samples = collections.defaultdict(collections.Counter)  # (phase, class) -> text
        self.ops = collections.defaultdict(collections.Counter)  # kind -> ok/err
        self.anomalies = collections.Counter()
        self.anomaly_samples = []
        self.transfers = {}  # xid -> (status, legs)
        self.acked = 0
        self.hung = []  # (client, op, phase, seconds)
        self.clients = []
        self.rss = []  # (t, kB, fds)
        self.node_tx = []  # (t, {port: transactions so far})
        self.fault_log = []
        self.stalled_readers = collections.Counter()
        self.proxy = None
        self.lab = None
        self.s_ids = {}
        self.start_time = None

    def elapsed(self):
        return time.monotonic() - self.start_time if self.start_time else 0.0

    def record_ok(self, kind):
        with self.lock:
            self.ops[kind]["ok"] += 1

    def record_error(self, kind, exc):
        cls = error_class(exc)
        with self.lock:
            self.ops[kind]["error"] += 1
            self.errors[self.phase][cls] += 1
            self.error_samples[(self.phase, cls)][f"{kind}: {error_text(exc)}"] += 1

    def anomaly(self, what, detail):
        with self.lock:
            self.anomalies[what] += 1
            if len(self.anomaly_samples) < 50:
                self.anomaly_samples.append(f"{self.elapsed():.0f}s {what}: {detail}")
        log(f"ANOMALY {what}: {detail}")

    def transfer_status(self, xid, status, legs):
        with self.lock:
            self.transfers[xid] = (status, legs)
            if status == "acked":
                self.acked += 1

    def conninfo(self):
        return self.proxy.conninfo(connect_timeout=10, options=SERVER_OPTIONS)


# ---------------------------------------------------------------- clients

def shut_socket(fd_or_sock):
    """Shut a socket both ways without closing its descriptor (the owner
    closes it): a blocked read returns at once."""
    try:
        if isinstance(fd_or_sock, socket.socket):
            fd_or_sock.shutdown(socket.SHUT_RDWR)
            return
        dup = socket.socket(fileno=os.dup(fd_or_sock))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()
    except OSError:
        pass


class Client(threading.Thread):
    kind = "client"

    def __init__(self, soak, index):
        super().__init__(name=f"{self.kind}-{index}", daemon=True)
        self.soak = soak
        self.index = index
        self.rng = random.Random((soak.args.seed or 0) * 1000 + index)
        self.conn = None  # a psycopg connection
        self.raw = None  # a pgwire.RawConn
        self.guard = threading.Lock()
        self.op = None  # (seq, name, started, phase)
        self.op_seq = 0
        self.hung_ops = set()
        self.seq = 0

    # -- the watchdog's side --

    def check_hung(self, now, bound):
        with self.guard:
            op = self.op
            if op is None or now - op[2] < bound or op[0] in self.hung_ops:
                return None
            self.hung_ops.add(op[0])
            if self.conn is not None:
                try:
                    fd = self.conn.pgconn.socket
                except Exception:  # noqa: BLE001 - closed meanwhile
                    fd = None
                if fd is not None and fd >= 0:
                    shut_socket(fd)
            if self.raw is not None:
                shut_socket(self.raw.sock)
            return op

    # -- the client's side --

    def begin_op(self, name):
        with self.guard:
            self.op_seq += 1
            self.op = (self.op_seq, name, time.monotonic(), self.soak.phase)
            return self.op_seq

    def end_op(self, seq):
        with self.guard:
            self.op = None
            return seq in self.hung_ops

    def connect(self):
        if self.conn is not None and not self.conn.closed and not self.conn.broken:
            return self.conn
        self.drop_conn()
        conn = psycopg.connect(self.soak.conninfo(), autocommit=True)
        with self.guard:
            self.conn = conn
        return conn

    def drop_conn(self):
        with self.guard:
            conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def after_error(self):
        """Keep a healthy session (roll back what is open), drop a broken one."""
        conn = self.conn
        if conn is None:
            return
        if conn.closed or conn.broken:
            self.drop_conn()
            return
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001
            self.drop_conn()

    def run(self):
        while not self.soak.stop.is_set():
            seq = self.begin_op(self.kind)
            failed = None
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001
                failed = exc
            hung = self.end_op(seq)
            if hung:
                failed = HungOp(f"{self.kind} op did not return in {self.soak.args.hung_seconds}s"
                                f" ({failed!r})")
            if failed is not None:
                self.soak.record_error(self.kind, failed)
                if not isinstance(failed, (psycopg.Error, HungOp, Anomaly, OSError, EOFError,
                                           pgwire.ServerError, pgwire.ProtocolError)):
                    self.soak.anomaly("client exception", "".join(
                        traceback.format_exception_only(type(failed), failed)).strip())
                try:
                    self.after_error()
                except Exception:  # noqa: BLE001
                    self.drop_conn()
                self.close_raw()
                # Do not spin while a node or pgshard refuses.
                self.soak.stop.wait(0.2 + self.rng.random() * 0.5)
            else:
                self.soak.record_ok(self.kind)
            self.soak.stop.wait(self.pause())
        self.drop_conn()
        self.close_raw()

    def close_raw(self):
        with self.guard:
            raw, self.raw = self.raw, None
        if raw is not None:
            raw.close()

    def pause(self):
        return self.rng.uniform(0.05, 0.15)

    def step(self):
        raise NotImplementedError

    def next_xid(self):
        self.seq += 1
        return self.index * 10_000_000 + self.seq

    def pick_transfer(self):
        a = self.rng.choice(self.soak.s_ids["s0"])
        b = self.rng.choice(self.soak.s_ids["s1"])
        amount = self.rng.randint(1, 100)
        src, dst = (a, b) if self.rng.random() < 0.5 else (b, a)
        # Rows are locked in one global order (by id): no distributed deadlock.
        return sorted([(src, -amount), (dst, amount)])


class Transfer(Client):
    """Moves an amount between an account on s0 and one on s1 in one
    transaction (two-phase commit), each leg logged in xfer_leg on its shard."""
    kind = "transfer"

    def pause(self):
        return self.rng.uniform(0.05, 0.25)

    def step(self):
        conn = self.connect()
        legs = self.pick_transfer()
        xid = self.next_xid()
        self.soak.transfer_status(xid, "failed", legs)
        conn.execute("BEGIN")
        for acct, delta in legs:
            cur = conn.execute("update acct set balance = balance + %s where id = %s",
                               (delta, acct))
            if cur.rowcount != 1:
                raise Anomaly(f"update of account {acct} touched {cur.rowcount} rows")
            conn.execute("insert into xfer_leg (xfer_id, acct_id, delta) values (%s, %s, %s)",
                         (xid, acct, delta))
        self.soak.transfer_status(xid, "in_doubt", legs)
        cur = conn.execute("COMMIT")
        if cur.statusmessage != "COMMIT":
            self.soak.transfer_status(xid, "failed", legs)  # still checked: both or none
            raise Anomaly(f"COMMIT answered {cur.statusmessage!r}")
        self.soak.transfer_status(xid, "acked", legs)


class KeyReader(Client):
    kind = "read_key"

    def step(self):
        conn = self.connect()
        acct = self.rng.randint(1, self.soak.args.accounts)
        rows = conn.execute("select balance from acct where id = %s", (acct,)).fetchall()
        if len(rows) != 1:
            self.soak.anomaly("read by key", f"account {acct}: {len(rows)} rows")


class SumReader(Client):
    kind = "keyless_sum"

    def pause(self):
        return self.rng.uniform(0.1, 0.4)

    def step(self):
        conn = self.connect()
        total, count = conn.execute("select sum(balance), count(*) from acct").fetchone()
        if count != self.soak.args.accounts:
            self.soak.anomaly("keyless count", f"count(*) = {count}")


class Vanisher(Client):
    """Raw protocol: starts something, then closes its socket without a
    Terminate (FIN or, with SO_LINGER 0, RST)."""
    kind = "vanish"
    MODES = ["after_first_leg", "before_commit", "during_commit", "mid_sum", "mid_big_read"]

    def pause(self):
        return self.rng.uniform(0.3, 1.0)

    def open_raw(self):
        raw = pgwire.RawConn(self.soak.proxy.port, timeout=self.soak.args.hung_seconds + 10)
        with self.guard:
            self.raw = raw
        raw.login(options=SERVER_OPTIONS)
        return raw

    def vanish(self, raw):
        if self.rng.random() < 0.5:
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_raw()

    def step(self):
        mode = self.rng.choice(self.MODES)
        raw = self.open_raw()
        if mode == "mid_sum":
            raw.send(pgwire.query("select sum(balance), count(*) from acct"))
            self.vanish(raw)
            return
        if mode == "mid_big_read":
            raw.send(pgwire.query("select id, repeat('v', 3000) from acct"))
            raw.read_message()
            self.vanish(raw)
            return
        legs = self.pick_transfer()
        xid = self.next_xid()
        self.soak.transfer_status(xid, "vanished", legs)
        raw.simple_query("BEGIN")
        for n, (acct, delta) in enumerate(legs):
            raw.simple_query(f"update acct set balance = balance + {delta} where id = {acct}")
            raw.simple_query(f"insert into xfer_leg (xfer_id, acct_id, delta) "
                             f"values ({xid}, {acct}, {delta})")
            if mode == "after_first_leg" and n == 0:
                break
        if mode == "during_commit":
            self.soak.transfer_status(xid, "in_doubt", legs)
            raw.send(pgwire.query("COMMIT"))
        self.vanish(raw)


class StalledReader(Client):
    """Asks for a large result, reads a little of it, then stops reading:
    pgshard must close it after client_write_timeout_ms (and its server)."""
    kind = "stalled_reader"
    QUERIES = [
        "/* pgshard: shard=s0 */ select repeat('x', 1000), g from generate_series(1, 3000000) g",
        "/* pgshard: shard=s1 */ select repeat('x', 1000), g from generate_series(1, 3000000) g",
        "select id, balance, repeat('y', 8000) from acct",
    ]

    def pause(self):
        return self.rng.uniform(1.0, 3.0)

    def step(self):
        sock_timeout = self.soak.args.hung_seconds + 10
        raw = pgwire.RawConn.__new__(pgwire.RawConn)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        sock.settimeout(sock_timeout)
        sock.connect(("127.0.0.1", self.soak.proxy.port))
        raw.sock, raw.buf, raw.parameters, raw.backend_key, raw.auth_codes = sock, b"", {}, None, []
        with self.guard:
            self.raw = raw
        raw.login(options=SERVER_OPTIONS)
        query = self.rng.choice(self.QUERIES)
        raw.send(pgwire.query(query))
        kind, payload = raw.read_message()
        if kind == "E":
            raise pgwire.ServerError(pgwire.parse_error_fields(payload))
        # Stop reading for a few times the timeout, then see whether pgshard
        # closed us: what it had written is drained, then EOF must come.
        stall = 3 * CLIENT_WRITE_TIMEOUT_MS / 1000
        if self.soak.stop.wait(stall):
            self.close_raw()  # the load stops: no verdict on a stall cut short
            return
        deadline = time.monotonic() + 30
        drained = 0
        tail = b""
        outcome = "not closed"
        while time.monotonic() < deadline:
            raw.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = raw.sock.recv(1 << 20)
            except (ConnectionResetError, BrokenPipeError):
                outcome = "closed"
                break
            except socket.timeout:
                # Silent after a whole ReadyForQuery: the query ended before
                # the stall mattered (a server lost mid-read fails the
                # request and keeps the session) -- answered, not stuck.
                # Silent otherwise: a stuck session.
                outcome = "answered" if tail[-6:-5] == b"Z" and tail[-5:-1] == \
                    b"\x00\x00\x00\x05" else "silent"
                break
            if not chunk:
                outcome = "closed"
                break
            drained += len(chunk)
            tail = (tail + chunk)[-6:]
            if drained > 64 << 20:
                break  # still streaming: it was never cut off
        with self.soak.lock:
            self.soak.stalled_readers[outcome] += 1
        self.close_raw()
        if outcome not in ("closed", "answered"):
            self.soak.anomaly("stalled reader", f"{outcome} after a {stall:.0f}s stall and "
                              f"{drained} bytes drained ({query[:40]}...)")


# ---------------------------------------------------------------- faults

class Faults(threading.Thread):
    def __init__(self, soak, interval, end_at):
        super().__init__(name="faults", daemon=True)
        self.soak = soak
        self.interval = interval
        self.end_at = end_at
        self.count = 0
        self.error = None

    def log_count(self, needle):
        return self.soak.proxy.log_text().count(needle)

    def run(self):
        try:
            next_at = time.monotonic() + self.interval
            while not self.soak.stop.is_set():
                if self.soak.stop.wait(max(0.0, next_at - time.monotonic())):
                    break
                # A fault needs up to ~40 s; none starts too near the end.
                if time.monotonic() + 35 > self.end_at:
                    break
                name = FAULTS[self.count % len(FAULTS)]
                cycle = self.count // len(FAULTS)
                self.count += 1
                with self.soak.lock:
                    self.soak.phase = name
                    self.soak.phase_counts[name] += 1
                started = time.monotonic()
                log_offset = self.soak.proxy.log_path.stat().st_size
                log(f"fault {self.count}: {name}")
                try:
                    detail = getattr(self, name)(cycle)
                    ok = True
                except Exception as exc:  # noqa: BLE001
                    detail = f"fault injection failed: {exc!r}"
                    ok = False
                    log(detail)
                self.soak.fault_log.append({
                    "n": self.count, "fault": name, "at_s": round(started - self.soak.start_time, 1),
                    "took_s": round(time.monotonic() - started, 1), "ok": ok, "detail": detail,
                    "log_offset": log_offset})
                log(f"fault {self.count}: {name} done: {detail}")
                next_at = started + self.interval
        except Exception as exc:  # noqa: BLE001
            self.error = exc
            log(f"fault thread died: {exc!r}")

    # -- the faults; each returns a one-line description --

    def terminate_backends(self, cycle):
        killed = {}
        for port in self.soak.lab.server_ports():
            with self.soak.lab.connect_port(port) as conn:
                killed[port] = conn.execute(
                    "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = 'app' and backend_type = 'client backend'"
                    " and application_name = 'pgshard') t").fetchone()[0]
        return "terminated pgshard servers per port: " + ", ".join(
            f"{p}={n}" for p, n in killed.items())

    def replay_pause(self, cycle):
        lab = self.soak.lab
        ports = [s.replica_port for s in lab.shards]
        for port in ports:
            with lab.connect_port(port) as conn:
                conn.execute("select pg_wal_replay_pause()")
        self.soak.stop.wait(20)
        for port in ports:
            with lab.connect_port(port) as conn:
                conn.execute("select pg_wal_replay_resume()")
        return f"replay paused 20 s on replicas {ports}, resumed"

    def replica_restart(self, cycle):
        lab = self.soak.lab
        shard = lab.shards[cycle % 2]
        port = shard.replica_port
        lab.stop_server(port, mode="fast")
        time.sleep(10)
        lab.restart_stopped(port)
        return f"replica {port} ({shard.name}) stopped (fast) 10 s, started"

    def sighup_same(self, cycle):
        px = self.soak.proxy
        before = self.log_count("reloaded ")
        px.write_config()
        px.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.log_count("reloaded ") == before:
            time.sleep(0.2)
        if self.log_count("reloaded ") == before:
            self.soak.anomaly("sighup", "no 'reloaded' log line 15 s after SIGHUP")
            return "SIGHUP sent, reload NOT logged"
        return "SIGHUP with the same config: reloaded"

    def sighup_broken(self, cycle):
        px = self.soak.proxy
        needle = "has errors; keeping the running config"
        before_refused = self.log_count(needle)
        before_reloaded = self.log_count("reloaded ")
        good = px.database["pool_size"]
        px.apply({"pool_size": "banana"})
        px.write_config()
        px.send_signal(signal.SIGHUP)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.log_count(needle) == before_refused:
                time.sleep(0.2)
            refused = self.log_count(needle) > before_refused
            reloaded = self.log_count("reloaded ") > before_reloaded
        finally:
            px.apply({"pool_size": good})
            px.write_config()  # no signal: the running config must be the old one
        alive = px.proc.poll() is None
        if not refused or reloaded or not alive:
            self.soak.anomaly("sighup broken config", f"refused={refused} reloaded={reloaded}"
                              f" alive={alive}")
        return f"SIGHUP with pool_size = banana: refused={refused}, reloaded={reloaded}, " \
               f"alive={alive}"

    def primary_stop(self, cycle):
        lab = self.soak.lab
        shard = lab.shards[(cycle + 1) % 2]
        port = shard.primary_port
        lab.stop_server(port, mode="immediate")
        time.sleep(10)
        lab.restart_stopped(port)
        return f"primary {port} ({shard.name}) stopped (immediate) 10 s, started"


# ---------------------------------------------------------------- monitors

def watchdog(soak):
    bound = soak.args.hung_seconds
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        for client in soak.clients:
            op = client.check_hung(now, bound)
            if op is not None:
                with soak.lock:
                    soak.hung.append({"client": client.name, "op": op[1], "phase": op[3],
                                      "started_s": round(op[2] - soak.start_time, 1)})
                log(f"HUNG: {client.name} {op[1]} since {now - op[2]:.0f}s (fault window {op[3]})")
        if soak.stop.is_set() and not any(c.is_alive() for c in soak.clients):
            return


def proc_rss(pid):
    kb = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    kb = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None, None
    return kb, fds


def rss_sampler(soak, stop):
    while True:
        kb, fds = proc_rss(soak.proxy.proc.pid)
        if kb is not None:
            soak.rss.append((round(soak.elapsed(), 1), kb, fds))
        if stop.wait(5.0):
            return


def node_sampler(soak, stop):
    """Transactions each server has run (pg_stat_database, database app),
    every 5 s: where the load goes (reads on replicas or on primaries)."""
    conns = {}
    while True:
        counts = {}
        for port in soak.lab.server_ports():
            try:
                conn = conns.get(port)
                if conn is None or conn.closed or conn.broken:
                    conn = conns[port] = psycopg.connect(
                        host="127.0.0.1", port=port, dbname="app", user="postgres",
                        connect_timeout=2, autocommit=True)
                counts[port] = conn.execute(
                    "select xact_commit + xact_rollback from pg_stat_database"
                    " where datname = 'app'").fetchone()[0]
            except Exception:  # noqa: BLE001 - a server stopped by a fault
                conns.pop(port, None)
                counts[port] = None
        soak.node_tx.append((soak.elapsed(), counts))
        if stop.wait(5.0):
            break
    for conn in conns.values():
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


def node_rates(soak, boundaries):
    """Transactions a second per server in each window [b_i, b_i+1): the sum
    of increases between consecutive samples (a drop is a restart: counted
    from zero), over the window's sampled time."""
    ports = soak.lab.server_ports()
    sums = [collections.Counter() for _ in boundaries]
    spans = [collections.Counter() for _ in boundaries]
    for (t0, c0), (t1, c1) in zip(soak.node_tx, soak.node_tx[1:]):
        w = max(i for i, b in enumerate(boundaries) if b <= t1)
        for port in ports:
            if c0.get(port) is None or c1.get(port) is None:
                continue
            delta = c1[port] - c0[port]
            sums[w][port] += delta if delta >= 0 else c1[port]
            spans[w][port] += t1 - t0
    return [{p: (sums[w][p] / spans[w][p] if spans[w][p] else None) for p in ports}
            for w in range(len(boundaries))]


# ---------------------------------------------------------------- setup and checks

def setup_schema(soak):
    lab = soak.lab
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists acct, xfer_leg")
            conn.execute("create table acct (id bigint primary key, balance bigint not null)")
            conn.execute("create table xfer_leg (xfer_id bigint, acct_id bigint,"
                         " delta bigint not null, primary key (xfer_id, acct_id))")
    n = soak.args.accounts
    with psycopg.connect(soak.conninfo()) as conn:  # through pgshard: rows go by the map
        with conn.transaction():
            for first in range(1, n + 1, 200):
                ids = range(first, min(n, first + 199) + 1)
                conn.execute("insert into acct (id, balance) values "
                             + ", ".join(f"({i}, {INITIAL_BALANCE})" for i in ids))
    seen = set()
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            ids = [r[0] for r in conn.execute("select id from acct order by id")]
        soak.s_ids[shard.name] = ids
        if seen & set(ids) or not ids:
            raise RuntimeError(f"account placement: {shard.name} has {len(ids)} accounts,"
                               f" {len(seen & set(ids))} also elsewhere")
        seen |= set(ids)
    if len(seen) != n:
        raise RuntimeError(f"{len(seen)} accounts on the shards, {n} inserted")
    lab.wait_caught_up(60)
    log("accounts: " + ", ".join(f"{k}={len(v)}" for k, v in soak.s_ids.items()))


def repair_lab(soak):
    """After the load: every server up, replay resumed."""
    lab = soak.lab
    try:
        lab.ctl("up", "--no-proxy")
    except Exception as exc:  # noqa: BLE001
        log(f"lab up after the load: {exc!r}")
    for shard in lab.shards:
        try:
            with lab.connect_port(shard.replica_port) as conn:
                conn.execute("select pg_wal_replay_resume()")
        except Exception as exc:  # noqa: BLE001
            log(f"resume replay on {shard.replica_port}: {exc!r}")
    try:
        lab.wait_caught_up(60)
    except AssertionError as exc:
        log(f"replicas did not catch up: {exc}")


def wait_prepared(soak, bound=120):
    """pg_prepared_xacts of every primary, polled until empty or BOUND s."""
    deadline = time.monotonic() + bound
    while True:
        left = {}
        for shard in soak.lab.shards:
            try:
                with soak.lab.connect_primary(shard.name) as conn:
                    rows = conn.execute("select gid, prepared::text, owner from pg_prepared_xacts"
                                        " where database = 'app'").fetchall()
            except Exception as exc:  # noqa: BLE001
                rows = [("<unreachable>", repr(exc), "")]
            if rows:
                left[shard.name] = rows
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1.0)


def pgshard_backends(soak, port):
    with soak.lab.connect_port(port) as conn:
        return conn.execute(
            "select pid, state, coalesce(left(query, 80), ''), "
            "extract(epoch from now() - state_change)::int from pg_stat_activity"
            " where datname = 'app' and backend_type = 'client backend'"
            " and application_name = 'pgshard' and pid <> pg_backend_pid()").fetchall()


def wait_idle(soak, bound=30):
    """pgshard's servers per node once the load stopped: wait up to BOUND s
    for every one to be idle, then report what is not."""
    deadline = time.monotonic() + bound
    while True:
        per_node = {}
        for port in soak.lab.server_ports():
            try:
                per_node[port] = pgshard_backends(soak, port)
            except Exception as exc:  # noqa: BLE001
                per_node[port] = [(-1, f"unreachable: {exc!r}", "", 0)]
        busy = {p: [r for r in rows if r[1] != "idle"] for p, rows in per_node.items()}
        if not any(busy.values()) or time.monotonic() > deadline:
            return per_node, busy
        time.sleep(1.0)


def check_data(soak):
    """Every transfer's legs on the primaries against what clients were told."""
    lab = soak.lab
    legs_found = collections.defaultdict(dict)  # xid -> {acct: delta}
    balances = {}
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            for xid, acct, delta in conn.execute("select xfer_id, acct_id, delta from xfer_leg"):
                legs_found[xid][acct] = delta
            for acct, balance in conn.execute("select id, balance from acct"):
                balances[acct] = balance
    with soak.lock:
        transfers = dict(soak.transfers)
    result = collections.Counter()
    samples = collections.defaultdict(list)

    def note(what, text):
        result[what] += 1
        if len(samples[what]) < 10:
            samples[what].append(text)

    for xid, (status, legs) in transfers.items():
        want = dict(legs)
        got = legs_found.get(xid, {})
        if got and got != want:
            note("half_applied", f"xfer {xid} ({status}): legs {got}, expected {want}")
        elif status == "acked" and not got:
            note("lost", f"xfer {xid}: acknowledged, no leg on any shard")
        elif status in ("failed", "vanished") and got:
            note("phantom", f"xfer {xid} ({status}): committed though its client was not told so")
        if status == "in_doubt":
            result["in_doubt_committed" if got else "in_doubt_absent"] += 1
    for xid in legs_found.keys() - transfers.keys():
        note("unknown_xfer", f"xfer {xid} on the shards, never attempted: {legs_found[xid]}")
    # Balances: each account is its initial balance plus its legs.
    sums = collections.Counter()
    for got in legs_found.values():
        for acct, delta in got.items():
            sums[acct] += delta
    for acct in range(1, soak.args.accounts + 1):
        if acct not in balances:
            note("balance_mismatch", f"account {acct} missing")
        elif balances[acct] != INITIAL_BALANCE + sums[acct]:
            note("balance_mismatch", f"account {acct}: balance {balances[acct]}, initial + legs "
                 f"{INITIAL_BALANCE + sums[acct]}")
    drift = sum(balances.values()) - INITIAL_BALANCE * soak.args.accounts
    result["committed_on_shards"] = len(legs_found)
    return result, samples, drift


def final_through_pgshard(soak):
    """pgshard still serves: one transfer and a keyless sum that must equal
    the invariant total (replicas caught up, no load)."""
    out = {}
    try:
        with psycopg.connect(soak.conninfo(), autocommit=True) as conn:
            legs = sorted([(soak.s_ids["s0"][0], -1), (soak.s_ids["s1"][0], 1)])
            conn.execute("BEGIN")
            for acct, delta in legs:
                conn.execute("update acct set balance = balance + %s where id = %s", (delta, acct))
                conn.execute("insert into xfer_leg (xfer_id, acct_id, delta) values (%s, %s, %s)",
                             (999_999_999, acct, delta))
            out["transfer"] = conn.execute("COMMIT").statusmessage
            soak.transfer_status(999_999_999, "acked", legs)
            soak.lab.wait_caught_up(60)
            total, count = conn.execute("select sum(balance), count(*) from acct").fetchone()
            out["keyless_sum"] = int(total)
            out["keyless_count"] = count
            out["sum_ok"] = int(total) == INITIAL_BALANCE * soak.args.accounts
    except Exception as exc:  # noqa: BLE001
        out["error"] = repr(exc)
    return out


def scan_log(text, fault_log):
    """Warnings and errors of pgshard's log, by pattern and fault window."""
    windows = [(0, "baseline")] + [(f["log_offset"], f"{f['n']}:{f['fault']}") for f in fault_log]
    by_window = collections.defaultdict(collections.Counter)
    pos = 0
    for line in text.splitlines(keepends=True):
        start, pos = pos, pos + len(line.encode(errors="replace"))
        m = re.match(r"\S+ \[\d+\] (warning|error|fatal): (.*)", line)
        if not m:
            if re.search(r"Sanitizer|runtime error|Assertion|Aborted|core dumped", line):
                window = [w for off, w in windows if off <= start][-1]
                by_window[window][f"RAW {line.strip()[:160]}"] += 1
            continue
        window = [w for off, w in windows if off <= start][-1]
        msg = normalise(m.group(2))
        by_window[window][f"{m.group(1)}: {msg[:200]}"] += 1
    return by_window


# ---------------------------------------------------------------- report

def table(rows, headers):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*["-" * w for w in widths])]
    out += [line.format(*map(str, r)) for r in rows]
    return "\n".join(out)


def main():
    args = ARGS
    rng_seed = args.seed or int(time.time())
    random.seed(rng_seed)
    args.seed = rng_seed
    if args.fault_interval is None:
        args.fault_interval = 60.0 if args.seconds >= 420 else max(15.0, (args.seconds - 40) / 6)
    build = Path(os.environ["PGSHARD_BUILD"])
    for binary in ("pgshard", "pgshardctl"):
        if not (build / binary).exists():
            print(f"soak: {build / binary} not built", file=sys.stderr)
            return 2
    root = Path(f"/tmp/pgshard-soak-{args.port_base}")
    soak = Soak(args)
    lab = soak.lab = SoakLab(root, args.port_base)
    workdir = root / "proxy"

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    lab.write_config()
    lab.down()
    shutil_rmtree(lab.dir)
    shutil_rmtree(workdir)
    workdir.mkdir(parents=True)
    os.chmod(workdir, 0o755)
    report = {"seconds": args.seconds, "seed": rng_seed, "fault_interval": args.fault_interval}
    exit_code = 2
    try:
        log(f"lab up: {[s for s in lab.shards]} in {root}")
        lab.up()
        soak.proxy = Proxy(lab, workdir, {
            "workers": 2, "pool_mode": "transaction", "pool_size": args.pool_size,
            "cross_shard_writes": "2pc", "client_write_timeout_ms": CLIENT_WRITE_TIMEOUT_MS,
            "query_wait_timeout_ms": QUERY_WAIT_TIMEOUT_MS, "server_connect_timeout_ms": 5000,
            "shutdown_timeout_ms": 15000, "replica": True, "extra_ini": MAP})
        soak.proxy.start()
        log(f"pgshard pid {soak.proxy.proc.pid} on port {soak.proxy.port}, log {soak.proxy.log_path}")
        setup_schema(soak)

        kinds = []
        n = args.clients
        counts = {"stalled_reader": 1, "vanish": max(1, n * 4 // 30),
                  "keyless_sum": max(1, n * 4 // 30), "read_key": max(1, n * 6 // 30)}
        counts["transfer"] = max(1, n - sum(counts.values()))
        classes = {"transfer": Transfer, "read_key": KeyReader, "keyless_sum": SumReader,
                   "vanish": Vanisher, "stalled_reader": StalledReader}
        index = 1
        for kind, count in counts.items():
            for _ in range(count):
                soak.clients.append(classes[kind](soak, index))
                kinds.append(kind)
                index += 1
        report["clients"] = counts
        log(f"clients: {counts}; faults every {args.fault_interval:.0f}s; {args.seconds}s of load")

        soak.start_time = time.monotonic()
        end_at = soak.start_time + args.seconds
        rss_stop = threading.Event()
        sampler = threading.Thread(target=rss_sampler, args=(soak, rss_stop), daemon=True)
        sampler.start()
        node_stop = threading.Event()
        nodes = threading.Thread(target=node_sampler, args=(soak, node_stop), daemon=True)
        nodes.start()
        dog = threading.Thread(target=watchdog, args=(soak,), daemon=True)
        dog.start()
        for client in soak.clients:
            client.start()
        faults = Faults(soak, args.fault_interval, end_at)
        faults.start()
        last_note = 0
        while time.monotonic() < end_at:
            time.sleep(1.0)
            if soak.proxy.proc.poll() is not None:
                log(f"pgshard exited with {soak.proxy.proc.returncode} during the load")
                break
            if time.monotonic() - last_note >= 30:
                last_note = time.monotonic()
                with soak.lock:
                    ok = sum(c["ok"] for c in soak.ops.values())
                    err = sum(c["error"] for c in soak.ops.values())
                log(f"t={soak.elapsed():.0f}s ops ok={ok} err={err} acked={soak.acked} "
                    f"hung={len(soak.hung)} rss={soak.rss[-1][1] if soak.rss else '?'}kB "
                    f"phase={soak.phase}")
        log("stopping the load")
        soak.stop.set()
        faults.join(120)
        join_deadline = time.monotonic() + args.hung_seconds + 30
        for client in soak.clients:
            client.join(max(0.1, join_deadline - time.monotonic()))
        stuck = [c.name for c in soak.clients if c.is_alive()]
        load_seconds = soak.elapsed()
        node_stop.set()
        nodes.join(30)
        with soak.lock:
            soak.phase = "after_load"
        proxy_alive = soak.proxy.proc.poll() is None

        log("repairing the lab (servers up, replay resumed)")
        repair_lab(soak)
        log("waiting for prepared transactions to settle")
        prepared_left = wait_prepared(soak)
        log("waiting for pgshard's servers to be idle")
        per_node, busy = wait_idle(soak)
        rss_stop.set()
        sampler.join(10)
        data, data_samples, drift = check_data(soak)
        final = final_through_pgshard(soak) if proxy_alive else {"error": "pgshard not running"}
        end_kb, end_fds = proc_rss(soak.proxy.proc.pid) if proxy_alive else (None, None)

        log("stopping pgshard (SIGTERM)")
        shutdown_problems = soak.proxy.shutdown_and_check() if soak.proxy.proc else []
        log_windows = scan_log(soak.proxy.log_text(), soak.fault_log)

        leaked = sum(len(rows) for rows in busy.values())
        over_pool = {p: len(rows) for p, rows in per_node.items() if len(rows) > args.pool_size}
        leaked_total = leaked + sum(over_pool.values())
        prepared_count = sum(len(v) for v in prepared_left.values())
        hung_total = len(soak.hung) + len(stuck)
        lost = data["lost"]
        half = data["half_applied"] + data["balance_mismatch"] + (1 if drift else 0)
        rss_kb = [kb for _, kb, _ in soak.rss]
        if end_kb:
            rss_kb.append(end_kb)

        # ---- the report
        summary = [
            ("duration (load)", f"{load_seconds:.0f} s"),
            ("operations ok / error", f"{sum(c['ok'] for c in soak.ops.values())} / "
                                       f"{sum(c['error'] for c in soak.ops.values())}"),
            ("acknowledged writes (2PC transfers)", soak.acked),
            ("transfers committed on the shards", data["committed_on_shards"]),
            ("in doubt (COMMIT unanswered): committed / absent",
             f"{data['in_doubt_committed']} / {data['in_doubt_absent']}"),
            ("LOST (acked, missing)", lost),
            ("HALF-APPLIED (one leg / balance off / drift)",
             f"{half} ({data['half_applied']} / {data['balance_mismatch']} / {drift})"),
            ("phantom (error, yet committed)", data["phantom"]),
            ("HUNG clients (op > %ds, or not stopping)" % args.hung_seconds, hung_total),
            ("LEAKED server slots (not idle / over pool_size)",
             f"{leaked_total} ({leaked} / {sum(over_pool.values())})"),
            ("PREPARED left on primaries", prepared_count),
            ("pgshard RSS kB start / max / end",
             f"{rss_kb[0]} / {max(rss_kb)} / {rss_kb[-1]}" if rss_kb else "n/a"),
            ("pgshard open fds start / end",
             f"{soak.rss[0][2] if soak.rss else '?'} / {end_fds}"),
            ("pgshard alive at the end / clean SIGTERM exit",
             f"{proxy_alive} / {not shutdown_problems}"),
            ("stalled readers closed / answered first / stuck",
             f"{soak.stalled_readers['closed']} / {soak.stalled_readers['answered']} / "
             f"{sum(v for k, v in soak.stalled_readers.items() if k not in ('closed', 'answered'))}"),
            ("anomalies", dict(soak.anomalies) or 0),
            ("after the load, through pgshard", final),
        ]
        print()
        print("=" * 78)
        print(f"pgshard soak: {args.seconds} s, {sum(counts.values())} clients, "
              f"{len(soak.fault_log)} faults, seed {rng_seed}")
        print("=" * 78)
        print(table(summary, ["check", "result"]))
        print()
        step = max(1, len(soak.rss) // 12)
        print("pgshard RSS over time (s: kB, open fds): " + ", ".join(
            f"{t:.0f}: {kb} kB/{fds}" for t, kb, fds in soak.rss[::step]))
        print()
        print("operations by kind")
        print(table([(k, v["ok"], v["error"]) for k, v in sorted(soak.ops.items())],
                    ["kind", "ok", "error"]))
        print()
        classes_seen = sorted({c for per in soak.errors.values() for c in per})
        phases = ["baseline"] + FAULTS + ["after_load"]
        rows = []
        for ph in phases:
            per = soak.errors.get(ph, collections.Counter())
            rows.append([f"{ph} (x{soak.phase_counts[ph]})" if ph != "baseline" else ph]
                        + [per.get(c, 0) or "." for c in classes_seen] + [sum(per.values())])
        print("client errors by SQLSTATE class, per fault window (window = from the fault's start"
              " to the next fault)")
        print(table(rows, ["window"] + classes_seen + ["total"]))
        print()
        print("faults")
        print(table([(f["n"], f"{f['at_s']:.0f}s", f["fault"], f"{f['took_s']:.0f}s", f["detail"])
                     for f in soak.fault_log], ["#", "at", "fault", "took", "detail"]))
        print()
        boundaries = [0.0] + [f["at_s"] for f in soak.fault_log]
        rates = node_rates(soak, boundaries)
        names = ["baseline"] + [f"{f['n']}:{f['fault']}" for f in soak.fault_log]
        ports = lab.server_ports()
        print("transactions/s per server in each window (pg_stat_database; includes pgshard's"
              " health checks, ~10/s per server)")
        print(table([[name] + [f"{r[p]:.0f}" if r[p] is not None else "-" for p in ports]
                     for name, r in zip(names, rates)],
                    ["window"] + [f"{p} {' '.join(lab.shard_of_port(p))}" for p in ports]))
        report["node_tx_per_s"] = {name: r for name, r in zip(names, rates)}
        print()
        print("pgshard servers per node after the load (pool_size %d)" % args.pool_size)
        print(table([(p, lab.shard_of_port(p)[0] + " " + lab.shard_of_port(p)[1], len(rows),
                      len(busy[p]), "; ".join(f"{r[1]} {r[3]}s {r[2]!r}" for r in busy[p][:3]))
                     for p, rows in per_node.items()],
                    ["port", "node", "servers", "not idle", "not idle (state, since, query)"]))
        print()
        print("most frequent client errors per window (top 4)")
        for ph in phases:
            items = collections.Counter()
            for (p2, cls), texts in soak.error_samples.items():
                if p2 == ph:
                    for text, count in texts.items():
                        items[f"[{cls}] {text}"] += count
            for text, count in items.most_common(4):
                print(f"  {ph:<18} {count:>6}  {text}")
        print()
        print("pgshard log: warnings/errors per fault window (top 6)")
        for window, counter in log_windows.items():
            for text, count in counter.most_common(6):
                print(f"  {window:<20} {count:>6}  {text}")
        for what, texts in data_samples.items():
            print(f"\n{what}:")
            for t in texts:
                print(f"  {t}")
        if soak.hung:
            print("\nhung operations:")
            for h in soak.hung[:20]:
                print(f"  {h}")
        if stuck:
            print(f"\nclient threads still running after the stop: {stuck}")
        if prepared_left:
            print(f"\nprepared transactions left: {prepared_left}")
        if soak.anomaly_samples:
            print("\nanomalies:")
            for a in soak.anomaly_samples[:20]:
                print(f"  {a}")
        if shutdown_problems:
            print("\npgshard shutdown problems:")
            for p in shutdown_problems:
                print(f"  {p[:2000]}")
        print()

        failed = (lost or half or hung_total or leaked_total or prepared_count or data["phantom"]
                  or data["unknown_xfer"] or not proxy_alive or shutdown_problems
                  or faults.error is not None or soak.anomalies)
        report.update({
            "acknowledged": soak.acked, "lost": lost, "half_applied": half, "drift": drift,
            "phantom": data["phantom"], "hung": soak.hung, "stuck_threads": stuck,
            "leaked": leaked_total, "prepared_left": {k: [list(map(str, r)) for r in v]
                                                      for k, v in prepared_left.items()},
            "rss_samples": soak.rss, "errors": {k: dict(v) for k, v in soak.errors.items()},
            "ops": {k: dict(v) for k, v in soak.ops.items()}, "faults": soak.fault_log,
            "anomalies": dict(soak.anomalies), "final": final, "failed": bool(failed),
            "pgshard_log": str(soak.proxy.log_path)})
        (root / "soak-report.json").write_text(json.dumps(report, indent=1, default=str))
        print(f"report: {root / 'soak-report.json'}; pgshard log: {soak.proxy.log_path}")
        print("SOAK FAILED" if failed else "SOAK PASSED")
        exit_code = 1 if failed else 0
    except KeyboardInterrupt as exc:
        log(f"interrupted: {exc}")
        exit_code = 2
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        exit_code = 2
    finally:
        soak.stop.set()
        if soak.proxy is not None and soak.proxy.proc is not None:
            soak.proxy.kill()
        if args.keep_lab:
            print(f"lab left running: {lab.config} --dir {lab.dir}")
        else:
            problems = lab.down()
            if problems:
                print("lab down: " + "; ".join(problems), file=sys.stderr)
            shutil_rmtree(lab.dir)
    return exit_code


def shutil_rmtree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
