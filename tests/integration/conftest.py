"""Fixtures for pgshard's integration tests: a lab cluster and proxies.

One lab cluster serves the whole session: database `app`, shard s0 = a
primary and one streaming replica, started by `pgshardctl lab up --no-proxy`
(the only way these tests start PostgreSQL) and removed by `lab down --purge`
at the end, whatever happened. Each test then starts the proxies it needs with
the `proxy(**overrides)` factory, which writes a config of its own, runs
`build/pgshard -c FILE`, and on teardown sends SIGTERM and requires a clean
exit (status 0, no sanitizer report in the log).

A second, sharded lab (`shard_lab`, started only by the tests that ask for
it) has two shards for database app, s0 (region eu) and s1 (region us), each
a primary without replicas; `sharded_proxy(**overrides)` starts a pgshard on
it, with `extra_ini=` text (the [table.app.*], [geo.app], [tenants.app]
sections) appended to its config. `proxy(lab=shard_lab, extra_ini=...)` does
the same.

A replicated lab (`replica_lab`, started only by the tests that ask for it)
has two shards for database app, s0 and s1, each a primary and two streaming
replicas; `replica_proxy(**overrides)` starts a pgshard on it that reads from
the replicas (replica=True unless overridden). `failover_lab` is the same
layout on its own ports, built fresh for each test that uses it and purged
afterwards, for tests that stop or promote servers.

A TLS lab (`tls_lab`, started only by the tests that ask for it) has one
shard s0, a primary that takes TLS connections only, with a certificate
from the lab's own CA (`pgshardctl lab up --tls`, CA in tls_lab.ca_file);
`proxy(lab=tls_lab, node_options="sslmode=verify-full sslrootcert=...")`
points a pgshard at it (node_options is appended to every node's conninfo).

Ports: the lab uses PORT_BASE (primary) and PORT_BASE+1 (replica); the
sharded lab PORT_BASE-10 (s0) and PORT_BASE-9 (s1); the TLS lab
PORT_BASE-20; the replicated lab
PORT_BASE-40 .. PORT_BASE-35 (s0 primary, replica 0, replica 1, then s1's);
the failover lab PORT_BASE-50 .. PORT_BASE-45 (same order); proxies take free ports
from PORT_BASE+10 to PORT_BASE+199, so suites 300 apart run side by side. PORT_BASE defaults to 7700 (env
PGSHARD_IT_PORT_BASE). Everything on disk lives under /tmp, because the
repository may sit where the postgres user cannot traverse.

Environment:
  PGSHARD_BUILD          build directory holding pgshard and pgshardctl
                         (default: <repo>/build)
  PGSHARD_IT_PORT_BASE   first lab port (default 7700)
  PGSHARD_IT_KEEP_LAB=1  leave the lab running after the session (debugging)
"""
import itertools
import os
from typing import NamedTuple, Optional, Tuple
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgwire  # noqa: E402
from support import wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("PGSHARD_BUILD") or REPO / "build").resolve()
PGSHARD = BUILD / "pgshard"
PGSHARDCTL = BUILD / "pgshardctl"

PORT_BASE = int(os.environ.get("PGSHARD_IT_PORT_BASE", "7700"))
PRIMARY_PORT = PORT_BASE
REPLICA_PORT = PORT_BASE + 1
LAB_PROXY_PORT = PORT_BASE + 2  # named in the lab config; never started (--no-proxy)
PROXY_PORTS = range(PORT_BASE + 10, PORT_BASE + 200)  # below the next suite's labs (PORT_BASE + 250 - 50)
LAB_ROOT = Path(f"/tmp/pgshard-it-{PORT_BASE}")
SHARD_LAB_PORTS = (PORT_BASE - 10, PORT_BASE - 9)  # s0, s1 primaries of the sharded lab
SHARD_LAB_ROOT = Path(f"/tmp/pgshard-it-{PORT_BASE}-sharded")
TLS_LAB_PORT = PORT_BASE - 20  # the TLS lab's one primary
TLS_LAB_ROOT = Path(f"/tmp/pgshard-it-{PORT_BASE}-tls")
REPLICA_LAB_BASE = PORT_BASE - 40  # replicated lab: s0 = base, base+1, base+2; s1 = base+3..+5
REPLICA_LAB_ROOT = Path(f"/tmp/pgshard-it-{PORT_BASE}-replicas")
FAILOVER_LAB_BASE = PORT_BASE - 50  # same layout, rebuilt per test (servers stopped, promoted)
FAILOVER_LAB_ROOT = Path(f"/tmp/pgshard-it-{PORT_BASE}-failover")
PG_BIN = Path(os.environ.get("PGSHARD_PG_BIN") or "/usr/lib/postgresql/15/bin")

# Every key router/config.c accepts, by section, so overrides land where they
# belong and a typo fails loudly instead of being ignored.
PGSHARD_KEYS = {
    "listen", "workers", "metrics_listen", "log_format", "log_debug", "auth",
    "max_client_conn", "max_message_size", "query_wait_timeout_ms",
    "server_connect_timeout_ms", "client_login_timeout_ms",
    "server_idle_timeout_ms", "shutdown_timeout_ms", "twophase_recovery_user",
    "client_idle_timeout_ms", "idle_transaction_timeout_ms", "client_write_timeout_ms", "max_client_memory",
    "max_total_client_memory", "max_merge_bytes", "max_notify_queue_bytes", "query_timeout_ms",
    "server_lifetime_ms",
    "log_min_duration_ms", "trace_comments",
    "client_tls", "tls_cert_file", "tls_key_file", "tls_ca_file", "map_source", "peer_id", "peers",
}
DATABASE_KEYS = {
    "pool_mode", "pool_size", "read_your_writes", "ryw_window_ms",
    "max_replica_lag_ms", "max_replica_lag_bytes", "lag_check_interval_ms",
    "lag_fallback", "cross_shard_reads", "cross_shard_writes", "tenant_isolation", "hash", "node_down_failures",
}
DEFAULT_USERS = {"app": ("secret", False), "admin": ("adminpw", True)}

# Any report of a sanitizer pgshard was built with (PGS_SANITIZE, PGS_TSAN):
# ASan's "ERROR: AddressSanitizer", TSan's "WARNING: ThreadSanitizer: data
# race", UBSan's "runtime error".
SANITIZER_PATTERNS = re.compile(
    r"AddressSanitizer|LeakSanitizer|ThreadSanitizer|UndefinedBehaviorSanitizer|runtime error")
# ThreadSanitizer's known false positives (tests/tsan.supp says why each).
TSAN_SUPPRESSIONS = REPO / "tests" / "tsan.supp"

# Proxies still running if the session dies; killed at session end.
_ALL_PROXIES = []

# Seconds one test (setup, call and teardown) may take before it is failed:
# a proxy that never answers must not hang the suite.
TEST_TIMEOUT = int(os.environ.get("PGSHARD_IT_TEST_TIMEOUT", "150"))


class TestTimeout(Exception):
    """Raised in the main thread by SIGALRM. Not KeyboardInterrupt: psycopg
    answers that by cancelling and waiting again for the result, which never
    comes from a hung proxy."""


@pytest.fixture(autouse=True)
def _test_timeout(request):
    def on_alarm(signum, frame):
        raise TestTimeout(f"{request.node.nodeid}: still running after {TEST_TIMEOUT}s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def pytest_configure(config):
    """SIGTERM ends the session the orderly way, so that the lab fixture's
    finalizer still runs `lab down` (CI runners send SIGTERM on timeout)."""
    def on_term(signum, frame):
        pytest.exit("SIGTERM: stopping, tearing the lab down", returncode=1)
    signal.signal(signal.SIGTERM, on_term)


def port_is_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def _port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not port_is_open(port)


_port_cycle = itertools.cycle(PROXY_PORTS)


def free_port():
    """A free port from this suite's range, rotating so that a port just
    released (TIME_WAIT, a proxy still exiting) is not handed out again."""
    for _ in range(len(PROXY_PORTS)):
        port = next(_port_cycle)
        if _port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {PROXY_PORTS}")


# ---------------------------------------------------------------- the lab

class LabShard(NamedTuple):
    """One shard of database app in a lab: its primary's port, its replica's
    port (None: no replica), its region (None: none) and the ports of any
    further replicas (config order: replica_port first)."""
    name: str
    primary_port: int
    replica_port: Optional[int] = None
    region: Optional[str] = None
    more_replica_ports: Tuple[int, ...] = ()

    @property
    def replica_ports(self):
        """Every replica's port, in config order (index N of `lab lag`)."""
        first = () if self.replica_port is None else (self.replica_port,)
        return first + tuple(self.more_replica_ports)


class Lab:
    """A lab cluster for database app, started by `pgshardctl lab up
    --no-proxy`. The default is the session's cluster: shard s0 = one primary
    (PORT_BASE) and one replica (PORT_BASE+1). SHARDS gives another layout."""

    def __init__(self, root=LAB_ROOT, shards=None, title="the session's lab cluster", tls=False):
        self.root = root
        self.tls = tls  # servers take TLS only (`lab up --tls`); CA in ca_file
        self.dir = root / "lab"
        self.config = root / "lab.ini"
        self.log = root / "lab-commands.log"
        self.title = title
        self.shards = list(shards or [LabShard("s0", PRIMARY_PORT, REPLICA_PORT)])
        # The first shard's servers: what the single-shard tests use.
        self.primary_port = self.shards[0].primary_port
        self.replica_port = self.shards[0].replica_port

    def shard(self, name):
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise KeyError(f"no shard {name} in {self.title}")

    def server_ports(self):
        ports = []
        for shard in self.shards:
            ports.append(shard.primary_port)
            ports.extend(shard.replica_ports)
        return ports

    @property
    def ca_file(self):
        """The CA a TLS lab's server certificates come from."""
        return self.dir / "tls" / "ca.crt"

    def shard_sections(self, replicas=True, node_user="postgres", node_options=""):
        """[shard.app.*] lines for a config naming this lab's servers, logging
        in as NODE_USER (None: as each client's user, as pgshard does for a
        node naming no user), NODE_OPTIONS appended to each conninfo."""
        login = f" user={node_user}" if node_user else ""
        if node_options:
            login += " " + node_options
        lines = []
        for shard in self.shards:
            lines += ["", f"[shard.app.{shard.name}]", f"primary = host=127.0.0.1 "
                      f"port={shard.primary_port} dbname=app{login}"]
            for replica_port in (shard.replica_ports if replicas else ()):
                lines.append(f"replica = host=127.0.0.1 port={replica_port} dbname=app{login}")
            if shard.region:
                lines.append(f"region = {shard.region}")
        return lines

    def write_config(self):
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.config.write_text(f"""\
; written by tests/integration/conftest.py: {self.title}
[pgshard]
listen = 127.0.0.1:{LAB_PROXY_PORT}
workers = 2
auth = scram-sha-256

[user.app]
password = secret
[user.admin]
password = adminpw
admin = true

[database.app]
pool_mode = transaction
pool_size = 20
""" + "\n".join(self.shard_sections()) + "\n")

    def ctl(self, *args, check=True, timeout=180):
        cmd = [str(PGSHARDCTL), "lab", *args, "-c", str(self.config), "--dir", str(self.dir)]
        for attempt in range(30):
            try:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, timeout=timeout)
                break
            except OSError:
                # The binary is being relinked by a concurrent build (EACCES,
                # ETXTBSY): wait for it rather than leave servers running.
                if attempt == 29:
                    raise
                time.sleep(1)
        with open(self.log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}[exit {proc.returncode}]\n")
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}")
        return proc

    def up(self):
        self.ctl("up", "--no-proxy", *(["--tls"] if self.tls else []))
        for port in self.server_ports():
            wait_for(lambda p=port: self._can_connect(p), 60,
                     interval=0.2, message=f"lab server on port {port}")

    def down(self):
        """Stop everything and remove the data. Never raises: it runs in
        teardown, and a second cleanup path follows it."""
        problems = []
        if PGSHARDCTL.exists() and self.config.exists():
            try:
                proc = self.ctl("down", "--purge", check=False)
                if proc.returncode != 0:
                    problems.append(f"lab down --purge exited {proc.returncode}: {proc.stdout}")
                    self.ctl("down", check=False)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"lab down failed: {exc!r}")
        for port in self.server_ports():
            try:
                wait_for(lambda p=port: not port_is_open(p), 30, interval=0.2,
                         message=f"port {port} to close after lab down")
            except AssertionError as exc:
                problems.append(str(exc))
        return problems

    @staticmethod
    def _can_connect(port):
        with psycopg.connect(host="127.0.0.1", port=port, dbname="app", user="postgres",
                             connect_timeout=2, autocommit=True) as conn:
            return conn.execute("select 1").fetchone()[0] == 1

    def _connect(self, port, kwargs):
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(host="127.0.0.1", port=port, dbname="app", user="postgres",
                               connect_timeout=5, **kwargs)

    def connect_primary(self, shard=None, **kwargs):
        """A direct autocommit connection to the primary (user postgres,
        trust) of SHARD (a name; default the first shard)."""
        port = self.shard(shard).primary_port if shard else self.primary_port
        return self._connect(port, kwargs)

    def connect_replica(self, shard=None, index=0, **kwargs):
        """A direct autocommit connection to replica INDEX (config order) of
        SHARD (default the first shard)."""
        port = self.shard(shard).replica_ports[index] if shard else \
            self.shards[0].replica_ports[index]
        return self._connect(port, kwargs)

    def connect_port(self, port, **kwargs):
        """A direct autocommit connection to this lab's server on PORT."""
        return self._connect(port, kwargs)

    # -- servers, for replica and failover tests --

    def shard_of_port(self, port):
        """(shard name, role) of the server on PORT: role "primary" or
        "replica N"."""
        for shard in self.shards:
            if port == shard.primary_port:
                return shard.name, "primary"
            if port in shard.replica_ports:
                return shard.name, f"replica {shard.replica_ports.index(port)}"
        raise KeyError(f"no server on port {port} in {self.title}")

    def datadir(self, port):
        """The data directory of the server on PORT (`lab up` keeps each
        server in DIR/PORT/data, see proxy/ctl/lab_server.c)."""
        return self.dir / str(port) / "data"

    def pg_ctl(self, port, *args, check=True, timeout=90):
        """Run pg_ctl ARGS on the server on PORT (as the postgres OS user
        when root, like the lab does). Returns the CompletedProcess."""
        cmd = [str(PG_BIN / "pg_ctl"), *args, "-D", str(self.datadir(port))]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, cwd="/tmp")
        with open(self.log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}[exit {proc.returncode}]\n")
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}")
        return proc

    def stop_server(self, port, mode="immediate"):
        """Stop the server on PORT (pg_ctl stop -m MODE) and wait until its
        port is closed."""
        self.pg_ctl(port, "stop", "-m", mode, "-w", "-t", "60")
        wait_for(lambda: not port_is_open(port), 30, interval=0.05,
                 message=f"port {port} to close after pg_ctl stop")

    def restart_stopped(self, port, timeout=60):
        """Start this lab's stopped server on PORT again with `lab up
        --no-proxy` (idempotent: it starts what is not running and waits for
        replicas to stream) and wait until PORT takes connections."""
        self.ctl("up", "--no-proxy")

        def answers():
            with psycopg.connect(host="127.0.0.1", port=port, dbname="app", user="postgres",
                                 connect_timeout=10, autocommit=True) as conn:
                return conn.execute("select 1").fetchone()[0] == 1
        wait_for(answers, timeout, interval=0.1, message=f"lab server on port {port} to restart")

    def lag(self, shard, index, action, *more):
        """`pgshardctl lab lag app.SHARD INDEX pause|resume|delay MS`."""
        return self.ctl("lag", f"app.{shard}", str(index), action, *map(str, more))

    def replay_paused(self, shard, index):
        with self.connect_replica(shard, index) as conn:
            return conn.execute("select pg_is_wal_replay_paused()").fetchone()[0]

    def resume_all(self):
        """Resume WAL replay on every replica (clearing any apply delay) and
        wait until each has replayed everything its primary had written.
        Raises when a replica does not catch up within 30 s."""
        for shard in self.shards:
            for index in range(len(shard.replica_ports)):
                self.lag(shard.name, index, "resume")
        self.wait_caught_up()

    def wait_caught_up(self, timeout=30):
        """Wait until every replica has replayed all its primary had
        committed when called: `pgshardctl lab wait`, the primitive users'
        CI has too (how it knows, in proxy/ctl/lab_status.c: the end of a WAL
        message committed synchronously, since the lab commits
        asynchronously)."""
        self.ctl("wait", "--timeout", str(timeout), timeout=timeout + 30)

    def primary_url(self, shard=None):
        port = self.shard(shard).primary_port if shard else self.primary_port
        return f"host=127.0.0.1 port={port} dbname=app user=postgres"


def _run_lab(the_lab):
    """Session lifetime of THE_LAB: up, yield, then down (whatever happened)."""
    if not PGSHARDCTL.exists():
        pytest.fail(f"{PGSHARDCTL} not built (set PGSHARD_BUILD or run cmake --build)")
    the_lab.write_config()
    the_lab.down()  # leftovers from an interrupted run
    try:
        the_lab.up()
        yield the_lab
    finally:
        for proxy in _ALL_PROXIES:
            if proxy.lab is the_lab:
                proxy.kill()
        if os.environ.get("PGSHARD_IT_KEEP_LAB") == "1":
            print(f"\nlab left running: {the_lab.config} --dir {the_lab.dir}")
        else:
            problems = the_lab.down()
            shutil.rmtree(the_lab.dir, ignore_errors=True)
            if problems:
                pytest.fail("lab teardown: " + "; ".join(problems))


@pytest.fixture(scope="session")
def lab():
    yield from _run_lab(Lab())


@pytest.fixture(scope="session")
def tls_lab():
    """Database app on one shard s0: a primary taking TLS connections only
    (hostssl), its certificate from the lab's CA (tls_lab.ca_file), port
    PORT_BASE-20."""
    yield from _run_lab(Lab(TLS_LAB_ROOT, [LabShard("s0", TLS_LAB_PORT)],
                            title="the TLS lab cluster (TLS-only primary)", tls=True))


@pytest.fixture(scope="session")
def shard_lab():
    """Database app on two shards: s0 (region eu) and s1 (region us), one
    primary each, no replicas (ports PORT_BASE-10 and PORT_BASE-9)."""
    yield from _run_lab(Lab(SHARD_LAB_ROOT,
                            [LabShard("s0", SHARD_LAB_PORTS[0], region="eu"),
                             LabShard("s1", SHARD_LAB_PORTS[1], region="us")],
                            title="the sharded lab cluster (2 shards)"))


def _replica_layout(base):
    """Shards s0 and s1, each a primary and two replicas, on ports BASE ..
    BASE+5 (s0 primary, its replicas 0 and 1, then s1's)."""
    return [LabShard("s0", base, base + 1, more_replica_ports=(base + 2,)),
            LabShard("s1", base + 3, base + 4, more_replica_ports=(base + 5,))]


@pytest.fixture(scope="session")
def replica_lab():
    """Database app on two shards, s0 and s1, each a primary and two
    streaming replicas (ports PORT_BASE-40 .. PORT_BASE-35). Tests that pause
    replay must resume it (lab.resume_all()) before they end."""
    yield from _run_lab(Lab(REPLICA_LAB_ROOT, _replica_layout(REPLICA_LAB_BASE),
                            title="the replicated lab cluster (2 shards x primary + 2 replicas)"))


@pytest.fixture
def failover_lab():
    """The replicated lab's layout on its own ports (PORT_BASE-50 ..
    PORT_BASE-45), built for one test and purged after it: for tests that
    stop primaries or promote replicas."""
    yield from _run_lab(Lab(FAILOVER_LAB_ROOT, _replica_layout(FAILOVER_LAB_BASE),
                            title="a failover lab cluster (2 shards x primary + 2 replicas)"))


@pytest.fixture
def primary(lab):
    """A direct autocommit connection to the lab primary, for checks."""
    conn = lab.connect_primary()
    try:
        yield conn
    finally:
        conn.close()


# ---------------------------------------------------------------- proxies

class Proxy:
    """One `pgshard -c FILE` process with its own config and log."""

    def __init__(self, lab, workdir, overrides):
        self.lab = lab
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / f"pgshard-{self.port}.ini"
        self.log_path = workdir / f"pgshard-{self.port}.log"
        # A queue timeout well under the default two minutes: a pool that
        # never frees a server fails a test in seconds instead of hanging it.
        self.pgshard = {"workers": 2, "auth": "scram-sha-256", "shutdown_timeout_ms": 10000,
                        "query_wait_timeout_ms": 30000}
        self.database = {"pool_mode": "transaction", "pool_size": 4}
        self.users = dict(DEFAULT_USERS)
        self.replica = False  # replicas are opt-in: proxy(replica=True) reads from them
        self.node_user = "postgres"  # node_user=None: nodes log in as each client's user
        self.node_options = ""  # appended to every node's conninfo (sslmode=...)
        self.extra_ini = ""  # appended verbatim: [table.app.*], [geo.app], [tenants.app] ...
        self.proc = None
        self.expected_exit = False  # the test stopped it on purpose
        self.apply(overrides)

    def apply(self, overrides):
        for key, value in overrides.items():
            if key == "users":
                for name, spec in value.items():
                    if spec is None:
                        self.users.pop(name, None)
                    else:
                        self.users[name] = spec if isinstance(spec, tuple) else (spec, False)
            elif key == "replica":
                self.replica = bool(value)
            elif key == "node_user":
                self.node_user = value
            elif key == "node_options":
                self.node_options = value or ""
            elif key == "extra_ini":
                self.extra_ini = value or ""
            elif key in PGSHARD_KEYS:
                if key == "listen":
                    raise ValueError("listen is chosen by the fixture")
                self.pgshard[key] = value
            elif key in DATABASE_KEYS:
                self.database[key] = value
            else:
                raise ValueError(f"unknown pgshard config key {key!r}")

    def write_config(self):
        lines = ["; written by tests/integration/conftest.py", "[pgshard]",
                 f"listen = 127.0.0.1:{self.port}"]
        lines += [f"{k} = {v}" for k, v in self.pgshard.items()]
        for name, (password, admin) in self.users.items():
            lines += ["", f"[user.{name}]"]
            if password is not None:
                lines.append(f"password = {password}")
            if admin:
                lines.append("admin = true")
        lines += ["", "[database.app]"] + [f"{k} = {v}" for k, v in self.database.items()]
        lines += self.lab.shard_sections(replicas=self.replica, node_user=self.node_user,
                                         node_options=self.node_options)
        text = "\n".join(lines) + "\n"
        if self.extra_ini:
            text += "\n" + self.extra_ini.strip("\n") + "\n"
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)  # a reload never sees half a file

    def start(self):
        if not PGSHARD.exists():
            raise AssertionError(f"{PGSHARD} not built")
        self.write_config()
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        # Under PGS_TSAN: every report is logged and the proxy goes on (the
        # log is checked at teardown, and TSan's exit status 66 fails it too).
        env.setdefault("TSAN_OPTIONS", f"suppressions={TSAN_SUPPRESSIONS}:halt_on_error=0:"
                       "second_deadlock_stack=1:history_size=4")
        # A message without a routing decision aborts pgshard (the test then
        # fails on the unclean exit) instead of being refused quietly.
        env.setdefault("PGSHARD_STRICT", "1")
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(PGSHARD), "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, env=env)
        _ALL_PROXIES.append(self)
        deadline = time.monotonic() + 15
        while not port_is_open(self.port):
            if self.proc.poll() is not None:
                raise AssertionError(f"pgshard exited with {self.proc.returncode} at startup:\n"
                                     + self.log_tail())
            if time.monotonic() > deadline:
                raise AssertionError(f"pgshard not listening on {self.port} after 15 s:\n"
                                     + self.log_tail())
            time.sleep(0.05)
        return self

    # -- clients --

    def conninfo(self, user="app", password="secret", dbname="app", **kwargs):
        params = dict(host="127.0.0.1", port=self.port, dbname=dbname, user=user,
                      connect_timeout=10)
        if password is not None:
            params["password"] = password
        params.update(kwargs)
        return make_conninfo(**params)

    def connect(self, user="app", password="secret", dbname="app", autocommit=False, **kwargs):
        return psycopg.connect(self.conninfo(user, password, dbname, **kwargs),
                               autocommit=autocommit)

    def raw(self, timeout=5.0):
        return pgwire.RawConn(self.port, timeout=timeout)

    def assert_alive(self):
        """The process runs and a fresh client gets an answer."""
        assert self.proc.poll() is None, f"pgshard exited with {self.proc.returncode}"
        with self.connect(autocommit=True) as conn:
            assert conn.execute("select 41 + 1").fetchone()[0] == 42

    # -- control --

    def reconfigure(self, **overrides):
        """Rewrite the config with OVERRIDES applied and send SIGHUP."""
        self.apply(overrides)
        self.write_config()
        self.proc.send_signal(signal.SIGHUP)

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Wait for the process to exit; the test owns the outcome."""
        self.expected_exit = True
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=60):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def shutdown_and_check(self):
        """SIGTERM, wait, and list every way the exit was not clean."""
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(25)
            except subprocess.TimeoutExpired:
                problems.append(f"pgshard on {self.port} still running 25 s after SIGTERM")
                self.kill()
            if not problems and self.proc.returncode != 0:
                problems.append(f"pgshard on {self.port} exited {self.proc.returncode} after SIGTERM")
        elif not self.expected_exit:
            problems.append(f"pgshard on {self.port} died during the test "
                            f"(exit {self.proc.returncode})")
        self.log_file.close()
        found = SANITIZER_PATTERNS.search(self.log_text())
        if found:
            problems.append(f"sanitizer report in {self.log_path}: {found.group(0)}")
        if problems:
            problems.append(f"--- tail of {self.log_path} ---\n{self.log_tail()}")
        return problems


def _proxy_factory(default_lab, request, tmp_path):
    """The body of the proxy fixtures: yields start(lab=None, **overrides),
    then stops every proxy it started and fails the test on an unclean exit."""
    started = []
    # Shared by every proxy factory a test uses, for the failure report.
    on_node = request.node.__dict__.setdefault("_pgshard_proxies", [])

    def start(lab=None, **overrides):
        proxy_ = Proxy(lab or default_lab, tmp_path, overrides)
        started.append(proxy_)
        on_node.append(proxy_)
        return proxy_.start()

    yield start
    problems = []
    for proxy_ in started:
        if proxy_.proc is not None:
            problems += proxy_.shutdown_and_check()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def proxy(lab, request, tmp_path):
    """Factory: proxy(**overrides) starts a pgshard and returns its Proxy.

    Overrides are any [pgshard] or [database.app] key (listen excepted),
    users={name: password | (password, admin) | None}, replica=False,
    node_user="postgres" (None: the nodes name no user, pgshard logs in as
    each client's user),
    extra_ini=TEXT (appended to the config), lab=ANOTHER_LAB (e.g. shard_lab:
    its shards, regions included, become the [shard.app.*] sections)."""
    yield from _proxy_factory(lab, request, tmp_path)


@pytest.fixture
def sharded_proxy(shard_lab, request, tmp_path):
    """Factory: like `proxy`, on the sharded lab (shards s0/eu and s1/us);
    pass the shard map as extra_ini=TEXT. Does not start the default lab."""
    yield from _proxy_factory(shard_lab, request, tmp_path)


def _with_replicas(factory):
    """Wrap a proxy factory generator so that replica=True is the default."""
    start = next(factory)

    def start_with_replicas(lab=None, **overrides):
        overrides.setdefault("replica", True)
        return start(lab=lab, **overrides)

    yield start_with_replicas
    for _ in factory:  # its teardown: stop the proxies, fail on an unclean exit
        pass


@pytest.fixture
def replica_proxy(replica_lab, request, tmp_path):
    """Factory: like `proxy`, on the replicated lab, with its replicas in the
    config (replica=True unless overridden): replica_proxy(extra_ini=MAP,
    read_your_writes=..., lag_check_interval_ms=..., max_replica_lag_ms=...,
    lag_fallback=...). lab=failover_lab points it at another lab. Does not
    start the default lab."""
    yield from _with_replicas(_proxy_factory(replica_lab, request, tmp_path))


@pytest.fixture
def failover_proxy(failover_lab, request, tmp_path):
    """Factory: like `replica_proxy`, on the failover lab. Does not start the
    replicated lab."""
    yield from _with_replicas(_proxy_factory(failover_lab, request, tmp_path))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed test, attach the tail of every proxy log it started."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for proxy_ in getattr(item, "_pgshard_proxies", []):
            report.sections.append((f"pgshard log {proxy_.log_path}", proxy_.log_tail()))
