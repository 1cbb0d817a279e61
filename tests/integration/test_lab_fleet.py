"""`pgshardctl lab up --proxies N`: a fleet of pgshard on consecutive ports.

Each test builds its own lab (database app, shard s0 = one primary on
PORT_BASE-70) in /tmp/pgshard-it-PORT_BASE-fleet, not the session's labs, and
removes it afterwards whatever happened. The config's listen port L is the
highest port from PORT_BASE+190 down with L .. L+7 free (the proxies take
L .. L+2, their metrics L+5 .. L+7), inside this suite's proxy range and
clear of the next suite's labs.

Run: PGSHARD_IT_PORT_BASE=8000 python3 -m pytest tests/integration/test_lab_fleet.py
"""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

import pgwire
from conftest import PGSHARDCTL, PORT_BASE, _port_is_free, port_is_open
from support import wait_for

ROOT = Path(f"/tmp/pgshard-it-{PORT_BASE}-fleet")
SERVER_PORT = PORT_BASE - 70
METRICS_OFFSET = 5  # proxy I's metrics on L + 5 + I


def _listen_port():
    for port in range(PORT_BASE + 190, PORT_BASE + 149, -1):
        if all(_port_is_free(p) for p in range(port, port + 8)):
            return port
    pytest.fail(f"no 8 free consecutive ports in {PORT_BASE + 150} .. {PORT_BASE + 197}")


class Fleet:
    """A lab with its own config; `ctl(...)` runs `pgshardctl lab ...` on it."""

    def __init__(self, listen_port):
        self.root = ROOT
        self.dir = ROOT / "lab"
        self.config = ROOT / "lab.ini"
        self.listen_port = listen_port

    def ports(self, n=3):
        return [self.listen_port + i for i in range(n)]

    def write_config(self):
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.config.write_text(f"""\
; written by tests/integration/test_lab_fleet.py
[pgshard]
listen = 127.0.0.1:{self.listen_port}
workers = 1
auth = trust
metrics_listen = 127.0.0.1:{self.listen_port + METRICS_OFFSET}

[user.app]
password = secret

[database.app]
pool_size = 4

[shard.app.s0]
primary = host=127.0.0.1 port={SERVER_PORT} dbname=app user=postgres
""")

    def ctl(self, *args, check=True, with_config=True):
        cmd = [str(PGSHARDCTL), "lab", *args]
        if with_config:
            cmd += ["-c", str(self.config)]
        cmd += ["--dir", str(self.dir)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120)
        with open(self.root / "lab-commands.log", "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}[exit {proc.returncode}]\n")
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}")
        return proc

    def pid_file(self, index):
        return self.dir / ("pgshard.pid" if index == 0 else f"pgshard-{index}.pid")

    def pids(self, n=3):
        return [int(self.pid_file(i).read_text()) for i in range(n)]

    def status(self):
        """{name: (address, state, pid or None)} of the proxy lines, and the exit status."""
        proc = self.ctl("status", check=False)
        proxies = {}
        for line in proc.stdout.splitlines():
            m = re.match(r"(pgshard(?:-\d+)?)\s+proxy\s+(\S+)\s+(\S+)", line)
            if m:
                pid = re.search(r"pid (\d+)", line)
                proxies[m.group(1)] = (m.group(2), m.group(3), int(pid.group(1)) if pid else None)
        return proxies, proc.returncode, proc.stdout


def select_through(port):
    """`select 1` through the pgshard on PORT; the answering server's port
    proves the query went through to the lab's primary."""
    with psycopg.connect(host="127.0.0.1", port=port, dbname="app", user="app",
                         password="secret", connect_timeout=5, autocommit=True) as conn:
        return conn.execute("select 1, inet_server_port()").fetchone()


def metrics_up(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return "pgshard_up 1" in resp.read().decode()


@pytest.fixture
def fleet():
    if not PGSHARDCTL.exists():
        pytest.fail(f"{PGSHARDCTL} not built (set PGSHARD_BUILD or run cmake --build)")
    the_fleet = Fleet(_listen_port())
    the_fleet.write_config()
    the_fleet.ctl("down", "--purge", check=False, with_config=False)  # an interrupted run's
    try:
        yield the_fleet
    finally:
        problems = []
        proc = the_fleet.ctl("down", "--purge", check=False, with_config=False)
        if proc.returncode != 0:
            problems.append(f"lab down --purge exited {proc.returncode}: {proc.stdout}")
        for port in [SERVER_PORT] + the_fleet.ports():
            if port_is_open(port):
                problems.append(f"port {port} still open after lab down")
        shutil.rmtree(ROOT, ignore_errors=True)
        if problems:
            pytest.fail("fleet teardown: " + "; ".join(problems))


def test_up_status_rerun_restart_down(fleet):
    out = fleet.ctl("up", "--proxies", "3").stdout
    ports = fleet.ports()
    for i, port in enumerate(ports):
        name = "pgshard" if i == 0 else f"pgshard-{i}"
        assert f"lab: {name} started" in out and f"127.0.0.1:{port}" in out, out
        assert select_through(port) == (1, SERVER_PORT)
        assert metrics_up(fleet.listen_port + METRICS_OFFSET + i)
    pids = fleet.pids()
    assert len(set(pids)) == 3

    # status: one line per proxy, each running on its port with its pid.
    proxies, rc, text = fleet.status()
    assert rc == 0, text
    assert proxies == {
        "pgshard": (f"127.0.0.1:{ports[0]}", "running", pids[0]),
        "pgshard-1": (f"127.0.0.1:{ports[1]}", "running", pids[1]),
        "pgshard-2": (f"127.0.0.1:{ports[2]}", "running", pids[2]),
    }, text

    # A second up changes nothing.
    out = fleet.ctl("up", "--proxies", "3").stdout
    assert "started" not in out, out
    assert out.count("already running (pid") == 3, out
    assert fleet.pids() == pids

    # A proxy killed outright: status says so, and up restarts only that one.
    os.kill(pids[1], signal.SIGKILL)
    wait_for(lambda: not port_is_open(ports[1]), 10, message=f"port {ports[1]} to close")
    proxies, rc, text = fleet.status()
    assert rc == 1, text
    assert proxies["pgshard-1"][1:] == ("stopped", None), text
    assert proxies["pgshard"][1] == proxies["pgshard-2"][1] == "running", text
    out = fleet.ctl("up", "--proxies", "3").stdout
    assert "lab: pgshard-1 started" in out, out
    assert out.count("already running (pid") == 2, out
    new_pids = fleet.pids()
    assert new_pids[0] == pids[0] and new_pids[2] == pids[2]
    assert new_pids[1] != pids[1]
    assert select_through(ports[1]) == (1, SERVER_PORT)

    # down --purge needs no config and no --proxies: every proxy and the server stop.
    out = fleet.ctl("down", "--purge", with_config=False).stdout
    for pid in new_pids:
        assert f"(pid {pid})" in out, out
    for port in [SERVER_PORT] + ports:
        assert not port_is_open(port), f"port {port} still open after lab down --purge"
    assert not fleet.dir.exists()


def test_derived_configs_and_fewer_proxies(fleet):
    fleet.ctl("up", "--proxies", "3")
    ports = fleet.ports()
    # Proxy 2 runs on DIR/pgshard-2.ini: FILE line for line, the per-proxy keys
    # commented out in place and set again in an appended [pgshard]; nothing
    # else differs (two-phase commit decisions live in the shards).
    original = fleet.config.read_text().splitlines()
    derived = (fleet.dir / "pgshard-2.ini").read_text().splitlines()
    assert oct((fleet.dir / "pgshard-2.ini").stat().st_mode & 0o777) == "0o600"
    for i, line in enumerate(original):
        if line.startswith(("listen", "metrics_listen")):
            assert derived[i] == "; replaced below by pgshardctl lab: " + line
        else:
            assert derived[i] == line
    appended = derived[len(original):]
    assert "[pgshard]" in appended
    assert f"listen = 127.0.0.1:{ports[2]}" in appended
    assert f"metrics_listen = 127.0.0.1:{fleet.listen_port + METRICS_OFFSET + 2}" in appended
    assert not any(line.startswith("twophase_log") for line in appended)
    assert not (fleet.dir / "pgshard.ini").exists()  # proxy 0 runs on FILE itself

    # up without --proxies means one proxy: it stops the other two, saying so.
    pids = fleet.pids()
    out = fleet.ctl("up").stdout
    assert f"lab: stopped pgshard-1 (pid {pids[1]}): lab up asked for 1 proxy" in out, out
    assert f"lab: stopped pgshard-2 (pid {pids[2]}): lab up asked for 1 proxy" in out, out
    assert "lab: pgshard already running" in out, out
    assert not port_is_open(ports[1]) and not port_is_open(ports[2])
    assert select_through(ports[0]) == (1, SERVER_PORT)
    proxies, rc, text = fleet.status()
    assert rc == 0, text
    assert list(proxies) == ["pgshard"], text

    # Grown again to two: proxy 0 stays, proxy 1 starts.
    out = fleet.ctl("up", "--proxies", "2").stdout
    assert "lab: pgshard-1 started" in out and "pgshard-2" not in out, out
    assert fleet.pids(1) == pids[:1]
    assert select_through(ports[1]) == (1, SERVER_PORT)

    # --proxies is checked before anything runs.
    for bad in ("0", "17", "x"):
        proc = fleet.ctl("up", "--proxies", bad, check=False)
        assert proc.returncode == 2 and "--proxies needs a number from 1 to 16" in proc.stdout
    proc = fleet.ctl("status", "--proxies", "2", check=False)
    assert proc.returncode == 2 and "lab status does not take --proxies" in proc.stdout


def send_cancel(port, pid, key, code=80877102):
    """A CancelRequest (or, CODE, pgshard's peer cancel) for (PID, KEY) to PORT."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("!iiii", 16, code, pid, key))
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed without an answer, as PostgreSQL does


def test_cancel_reaches_the_instance_holding_the_session(fleet):
    """Behind a load balancer a CancelRequest may land on another pgshard
    than the session's. With peers listed (and peer_id, which the lab sets
    to I + 1 for proxy I), the cancel key carries its instance, and the
    others send the request on to it. A key no peer owns, or a wrong
    secret, cancels nothing."""
    ports = fleet.ports()
    text = fleet.config.read_text().replace(
        "workers = 1\n",
        "workers = 2\npeer_id = 1\npeers = " + ", ".join(f"127.0.0.1:{p}" for p in ports) + "\n")
    fleet.config.write_text(text)
    fleet.ctl("up", "--proxies", "3")
    for i in (1, 2):
        derived = (fleet.dir / f"pgshard-{i}.ini").read_text()
        assert re.search(rf"^peer_id = {i + 1}$", derived, re.M), derived
    for owner in range(3):
        raw = pgwire.RawConn(ports[owner], timeout=30)
        try:
            raw.login()
            pid, key = raw.backend_key
            assert (key >> 24) & 0xff == owner + 1, hex(key)
            # A wrong secret through another instance: nothing happens.
            other = ports[(owner + 1) % 3]
            raw.send(pgwire.query("select pg_sleep(1.5), 'slept'"))
            send_cancel(other, pid, key ^ 0x5a5a)
            assert raw.read_query_result() == [["", "slept"]]
            # The right one, through each other instance, cancels.
            for via in (ports[(owner + 1) % 3], ports[(owner + 2) % 3]):
                raw.send(pgwire.query("select pg_sleep(20)"))
                time.sleep(0.3)
                started = time.monotonic()
                send_cancel(via, pid, key)
                with pytest.raises(pgwire.ServerError) as exc:
                    raw.read_query_result()
                assert exc.value.fields["C"] == "57014", exc.value.fields
                assert time.monotonic() - started < 5
            # A peer cancel is never passed on: sent to a peer that does not
            # hold the session, it cancels nothing.
            raw.send(pgwire.query("select pg_sleep(1.5), 'slept'"))
            send_cancel(other, pid, key, code=80877123)
            assert raw.read_query_result() == [["", "slept"]]
        finally:
            raw.close()
    # Every instance still answers.
    for port in ports:
        assert select_through(port)[0] == 1
