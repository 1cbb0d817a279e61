"""Helpers shared by the integration tests (fixtures are in conftest.py)."""
import os
import threading
import time


def wait_for(predicate, timeout, interval=0.05, message="condition"):
    """Poll PREDICATE until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - report the last one
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


def app_backends(conn, where="true"):
    """Client backends connected to database app, other than CONN itself and
    pgshard's health monitor (one connection per node, not a pool's)."""
    return conn.execute(
        "select pid, state, query, application_name from pg_stat_activity"
        " where datname = 'app' and backend_type = 'client backend'"
        " and application_name <> 'pgshard monitor'"
        f" and pid <> pg_backend_pid() and ({where})").fetchall()


class BackendSampler:
    """Watch the primary's pg_stat_activity while a load runs.

    On entry it opens its own direct connection and records the baseline:
    backends for database app that exist before the load (the proxy's
    monitor, the test's own checker connection). Then a thread samples every
    INTERVAL seconds until exit. `peak` is the most backends seen at once,
    `peak_busy` the most that were not idle (running a statement or inside a
    transaction)."""

    def __init__(self, lab, interval=0.02, settle=0.5):
        self.lab = lab
        self.interval = interval
        self.settle = settle
        self.samples = []
        self.busy_samples = []
        self.baseline = None
        self._stop = threading.Event()
        self._thread = None
        self.error = None

    def __enter__(self):
        self.conn = self.lab.connect_primary()
        time.sleep(self.settle)
        self.baseline = len(app_backends(self.conn))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        try:
            while not self._stop.is_set():
                rows = app_backends(self.conn)
                self.samples.append(len(rows))
                self.busy_samples.append(sum(1 for r in rows if r[1] and r[1] != "idle"))
                time.sleep(self.interval)
        except Exception as exc:  # noqa: BLE001
            self.error = exc

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        self.conn.close()
        if self.error and exc[0] is None:
            raise self.error

    @property
    def peak(self):
        return max(self.samples, default=0)

    @property
    def peak_busy(self):
        return max(self.busy_samples, default=0)

    def __repr__(self):
        return (f"BackendSampler(baseline={self.baseline}, peak={self.peak}, "
                f"peak_busy={self.peak_busy}, samples={len(self.samples)})")


def local_port(conn):
    """The client-side port of a psycopg connection (as pgshard's SHOW
    CLIENTS address ends)."""
    import socket
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        return sock.getsockname()[1]


def clients_by_worker(px, per_worker, workers=2, attempts=80, **kwargs):
    """Open connections to PX until each of its WORKERS holds PER_WORKER of
    them (SO_REUSEPORT spreads clients by their address): {worker: [conn]}.
    KWARGS go to px.connect (autocommit by default)."""
    kwargs.setdefault("autocommit", True)
    groups = {w: [] for w in range(workers)}
    with px.connect(autocommit=True, user="admin", password="adminpw", dbname="pgshard") as admin:
        for _ in range(attempts):
            if all(len(g) >= per_worker for g in groups.values()):
                return groups
            conn = px.connect(**kwargs)
            port = local_port(conn)
            rows = admin.execute("SHOW CLIENTS").fetchall()
            worker = [r[9] for r in rows if r[3].endswith(f":{port}")]
            assert len(worker) == 1, (port, rows)
            if len(groups[worker[0]]) < per_worker:
                groups[worker[0]].append(conn)
            else:
                conn.close()
    for g in groups.values():
        for conn in g:
            conn.close()
    raise AssertionError(f"clients did not spread over {workers} workers in {attempts} connections")
