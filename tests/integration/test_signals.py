"""Signals: SIGHUP reloads users and pool sizes, SIGTERM drains, SIGINT
exits now."""
import signal
import threading
import time

import psycopg
import pytest

from pgwire import ServerError
from support import BackendSampler, wait_for


class Load:
    """N clients running short transactions until stopped."""

    def __init__(self, px, clients, sleep=0.1):
        self.px = px
        self.clients = clients
        self.sleep = sleep
        self.stop = threading.Event()
        self.errors = []
        self.transactions = 0
        self.lock = threading.Lock()
        self.threads = []

    def _client(self):
        try:
            with self.px.connect() as conn:
                while not self.stop.is_set():
                    with conn.transaction():
                        conn.execute("select pg_sleep(%s)", (self.sleep,))
                    with self.lock:
                        self.transactions += 1
        except Exception as exc:  # noqa: BLE001
            self.errors.append(exc)

    def __enter__(self):
        self.threads = [threading.Thread(target=self._client, daemon=True)
                        for _ in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)


def can_log_in(px, user, password):
    try:
        with px.connect(user=user, password=password, autocommit=True, connect_timeout=2) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_sighup_pool_size(proxy, lab):
    workers = 2
    px = proxy(pool_size=1, workers=workers)
    with BackendSampler(lab) as before:
        with Load(px, clients=12) as load:
            time.sleep(2)
    assert not load.errors, load.errors[:3]
    assert load.transactions > 10
    assert before.peak_busy <= 1 * workers, before
    assert before.peak <= 1 * workers + before.baseline, before

    px.reconfigure(pool_size=4)
    time.sleep(1)
    px.assert_alive()
    with BackendSampler(lab) as after:
        with Load(px, clients=12) as load:
            time.sleep(2)
    assert not load.errors, load.errors[:3]
    # New connections get the new limit: more servers busy than before, but
    # never more than the new ceiling.
    assert after.peak_busy > 1 * workers, after
    assert after.peak_busy <= 4 * workers, after


def test_sighup_users(proxy):
    px = proxy()
    with px.raw() as raw:
        with pytest.raises(ServerError) as exc:
            raw.login(user="newbie", password="newpw")
        assert exc.value.sqlstate == "28000"
    survivor = px.connect(autocommit=True)
    try:
        px.reconfigure(users={"newbie": "newpw", "app": "secret2"})
        wait_for(lambda: can_log_in(px, "newbie", "newpw"), 5, interval=0.2,
                 message="the new user to log in after SIGHUP")
        # The changed password applies to new logins.
        assert can_log_in(px, "app", "secret2")
        assert not can_log_in(px, "app", "secret")
        # A client logged in before the reload carries on.
        assert survivor.execute("select 'still here'").fetchone() == ("still here",)
        # A broken config is refused and the running one kept.
        px.reconfigure(pool_size="banana")
        time.sleep(1)
        assert px.proc.poll() is None, "pgshard exited on a bad config reload"
        assert can_log_in(px, "newbie", "newpw")
        assert survivor.execute("select 'and here'").fetchone() == ("and here",)
        px.reconfigure(pool_size=4)
    finally:
        survivor.close()


def test_sigterm_drains(proxy, primary):
    primary.execute("drop table if exists it_drain")
    primary.execute("create table it_drain (v int)")
    px = proxy()
    conn = px.connect()
    try:
        conn.execute("insert into it_drain values (1)")  # a transaction is open
        px.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # No new clients.
        wait_for(lambda: not can_log_in(px, "app", "secret"), 3,
                 message="pgshard to refuse new clients after SIGTERM")
        assert px.proc.poll() is None, "pgshard exited with a transaction still open"
        # The open transaction finishes.
        conn.execute("insert into it_drain values (2)")
        conn.commit()
        committed = time.monotonic()
        rc = px.wait_exit(8)
        assert rc is not None, "pgshard still running 8 s after the last transaction ended"
        assert rc == 0
        assert time.monotonic() - committed < 5, "exit waited for shutdown_timeout"
    finally:
        conn.close()
    assert primary.execute("select array_agg(v order by v) from it_drain").fetchone() == ([1, 2],)
    primary.execute("drop table it_drain")


def test_sigterm_idle_exits_at_once(proxy):
    px = proxy()
    idle = px.connect(autocommit=True)
    try:
        assert idle.execute("select 1").fetchone() == (1,)
        started = time.monotonic()
        px.send_signal(signal.SIGTERM)
        rc = px.wait_exit(5)
        assert rc == 0
        assert time.monotonic() - started < 3
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")
    finally:
        idle.close()


def test_sigint_exits_now(proxy, primary):
    primary.execute("drop table if exists it_sigint")
    primary.execute("create table it_sigint (v int)")
    px = proxy()
    conn = px.connect()
    try:
        conn.execute("insert into it_sigint values (1)")  # transaction open
        started = time.monotonic()
        px.send_signal(signal.SIGINT)
        rc = px.wait_exit(3)
        assert rc is not None, "pgshard still running 3 s after SIGINT"
        assert time.monotonic() - started < 2
        assert rc in (0, 130, -signal.SIGINT), f"exit status {rc}"
        with pytest.raises(psycopg.OperationalError):
            conn.execute("insert into it_sigint values (2)")
            conn.commit()
    finally:
        conn.close()
    # The interrupted transaction never committed.
    wait_for(lambda: not primary.execute(
        "select 1 from pg_stat_activity where datname = 'app' and state like 'idle in transaction%'"
    ).fetchone(), 5, message="the interrupted transaction's backend to go")
    assert primary.execute("select count(*) from it_sigint").fetchone() == (0,)
    primary.execute("drop table it_sigint")
