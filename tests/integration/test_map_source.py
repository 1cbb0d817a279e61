"""map_source: the shard map kept in PostgreSQL, a fleet of pgshard switching together.

Three pgshard on the sharded lab (s0, s1), each with `map_source` pointing at
database pgshard_maps on s0's primary. The map pins tenant 42 of table
ms_invoices: s0 in the file, s1 (then back) in the versions pushed.

Run: PGSHARD_IT_PORT_BASE=8400 python3 -m pytest tests/integration/test_map_source.py
"""
import re
import signal
import statistics
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import PGSHARDCTL, SHARD_LAB_PORTS
from support import wait_for
import test_reshard
from test_reshard import old_view, reshard_lab, tables  # noqa: F401 - fixtures

MAP_DB = "pgshard_maps"
SOURCE = f"host=127.0.0.1 port={SHARD_LAB_PORTS[0]} dbname={MAP_DB} user=postgres"
TABLE = "ms_invoices"


def tenant_map(shard):
    return f"""\
[table.app.{TABLE}]
column = tenant_id
type = bigint
strategy = tenant
[tenants.app]
42 = {shard}
"""


def direct(port, dbname="app"):
    return psycopg.connect(host="127.0.0.1", port=port, dbname=dbname, user="postgres",
                           connect_timeout=5, autocommit=True)


def reset_database(dbname, port=SHARD_LAB_PORTS[0]):
    """DBNAME on the server on PORT (s0's primary), empty of pgshard's tables."""
    with direct(port, "postgres") as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (dbname,)).fetchone():
            conn.execute(f"create database {dbname}")
    with direct(port, dbname) as conn:
        conn.execute("drop schema if exists pgshard cascade")


@pytest.fixture
def maps(shard_lab):
    reset_database(MAP_DB)
    for port in SHARD_LAB_PORTS:
        with direct(port) as conn:
            conn.execute(f"create table if not exists {TABLE} (tenant_id bigint, via text)")
            conn.execute(f"truncate {TABLE}")
    return shard_lab


def ctl(*args, check=True):
    proc = subprocess.run([str(PGSHARDCTL), "map", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"pgshardctl map {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc


def body_file(proxy, tmp_path, shard, name="map.ini"):
    """PROXY's config with tenant 42 pinned to SHARD: what `map push` takes
    (its [pgshard] section is left out of the version)."""
    text = proxy.config_path.read_text()
    assert "42 = s0" in text
    path = tmp_path / name
    path.write_text(text.replace("42 = s0", f"42 = {shard}"))
    return path


def push(path, *more):
    out = ctl("push", str(path), "--source", SOURCE, *more).stdout
    m = re.search(r"map version (\d+) pushed \(committed_at=([0-9.]+)\)", out)
    assert m, out
    return int(m.group(1)), float(m.group(2))


class Console:
    """An admin console connection to one pgshard."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.conn = proxy.connect(user="admin", password="adminpw", dbname="pgshard",
                                  autocommit=True)

    def config(self):
        return {key: value for section, key, value in self.conn.execute("SHOW CONFIG").fetchall()
                if section == "pgshard"}

    def version(self):
        return int(self.config()["map_version"])

    def close(self):
        self.conn.close()


def start_fleet(sharded_proxy, n=3, source=SOURCE):
    proxies = [sharded_proxy(workers=2, map_source=source, extra_ini=tenant_map("s0"))
               for _ in range(n)]
    return proxies, [Console(p) for p in proxies]


def wait_versions(consoles, version, timeout=10):
    wait_for(lambda: all(c.version() == version for c in consoles), timeout,
             message=f"every instance on map version {version}")


def rows_by_shard():
    counts = {}
    for name, port in zip(("s0", "s1"), SHARD_LAB_PORTS):
        with direct(port) as conn:
            counts[name] = sorted(r[0] for r in conn.execute(f"select via from {TABLE}"))
    return counts


def write_through_each(proxies, tag):
    for p in proxies:
        with p.connect(autocommit=True) as conn:
            conn.execute(f"insert into {TABLE} (tenant_id, via) values (42, %s)",
                         (f"{tag}-{p.port}",))
    return sorted(f"{tag}-{p.port}" for p in proxies)


def test_fleet_switches_together(maps, sharded_proxy, tmp_path):
    proxies, consoles = start_fleet(sharded_proxy)
    for c in consoles:
        cfg = c.config()
        assert cfg["map_version"] == "0" and cfg["map_origin"] == "file", cfg
        assert cfg["map_source_state"] == "listening", cfg
    wait_for(lambda: "listening" in proxies[0].log_text(), 5, message="listening logged")
    # The file's map: tenant 42 on s0 through every instance.
    assert rows_by_shard() == {"s0": [], "s1": []}
    before = write_through_each(proxies, "file")
    assert rows_by_shard() == {"s0": before, "s1": []}

    # Clients keep reading through every instance meanwhile: the switches
    # happen under traffic, and no client sees an error from them.
    stop = threading.Event()
    load = {"queries": 0, "errors": []}

    def reader(proxy_):
        try:
            with proxy_.connect(autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute(f"select count(*) from {TABLE} where tenant_id = 42").fetchone()
                    conn.execute("begin")
                    conn.execute(f"select count(*) from {TABLE} where tenant_id = 42").fetchone()
                    conn.execute("commit")
                    load["queries"] += 2
        except Exception as exc:  # noqa: BLE001 - reported below
            load["errors"].append(repr(exc))
    readers = [threading.Thread(target=reader, args=(p,), daemon=True) for p in proxies * 2]
    for t in readers:
        t.start()

    # Pushes alternate the pin s1, s0, s1...: each measured from the push's
    # commit until all three report the version in SHOW CONFIG.
    times = []
    expected = {"s0": list(before), "s1": []}
    for round_ in range(1, 8):
        shard = "s1" if round_ % 2 else "s0"
        version, committed_at = push(body_file(proxies[0], tmp_path, shard, f"map{round_}.ini"))
        assert version == round_
        while True:
            seen = [c.version() for c in consoles]
            if all(v == version for v in seen):
                switched = time.time() - committed_at
                break
            assert time.time() - committed_at < 10, f"versions {seen} 10 s after the push"
        times.append(switched)
        # Every statement through every instance now routes by the new map.
        expected[shard] += write_through_each(proxies, f"v{version}")
        expected[shard].sort()
        assert rows_by_shard() == expected, f"after version {version}"
    stop.set()
    for t in readers:
        t.join(10)
    print(f"\nswitch times (push commit -> all 3 report it in SHOW CONFIG), ms: "
          f"{[round(t * 1000, 1) for t in times]}; median {statistics.median(times) * 1000:.1f}, "
          f"max {max(times) * 1000:.1f}; {load['queries']} reads by 6 clients meanwhile")
    assert load["errors"] == [] and load["queries"] > 0, load
    assert max(times) < 1.0, times

    # map wait: every live instance serves the latest version.
    out = ctl("wait", str(len(times)), "--source", SOURCE, "--timeout-ms", "5000").stdout
    assert "served by every live instance (3)" in out, out
    # map show: the latest version's text, without the [pgshard] section.
    shown = ctl("show", "--source", SOURCE).stdout
    assert shown.startswith(f"; map version {len(times)}")
    assert "42 = s1" in shown and "[pgshard]" not in shown and "listen" not in shown
    shown = ctl("show", "--source", SOURCE, "--version", "2").stdout
    assert "42 = s0" in shown
    # The same text again: nothing pushed (a rerun is harmless).
    out = ctl("push", str(tmp_path / f"map{len(times)}.ini"), "--source", SOURCE).stdout
    assert f"map version {len(times)} already holds this map: nothing pushed" in out, out
    for c in consoles:
        c.close()
    for p in proxies:
        assert "reloaded" in p.log_text() and "map version 7" in p.log_text()


def test_bad_body_refused(maps, sharded_proxy, tmp_path):
    proxies, consoles = start_fleet(sharded_proxy)
    version, _ = push(body_file(proxies[0], tmp_path, "s1"))
    wait_versions(consoles, version)

    # map push validates with the config code: refused, nothing inserted.
    bad = tmp_path / "bad.ini"
    bad.write_text(body_file(proxies[0], tmp_path, "s9", "bad-src.ini").read_text())
    proc = ctl("push", str(bad), "--source", SOURCE, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "s9" in proc.stderr and "nothing pushed" in proc.stderr, proc.stderr
    # The error names FILE's own line (the [pgshard] lines left out keep their place).
    line = bad.read_text().splitlines().index("42 = s9") + 1
    assert f"{bad}, line {line}: " in proc.stderr, proc.stderr
    # With -c CONFIG: the source and the [pgshard] section come from CONFIG.
    proc = ctl("push", str(bad), "-c", str(proxies[0].config_path), check=False)
    assert proc.returncode == 1 and "nothing pushed" in proc.stderr, proc.stderr
    with direct(SHARD_LAB_PORTS[0], MAP_DB) as conn:
        assert conn.execute("select max(version) from pgshard.map").fetchone()[0] == version
        # Inserted by hand, and announced: every instance refuses it.
        body = bad.read_text().split("[user.", 1)[1]
        conn.execute("begin")
        conn.execute("insert into pgshard.map (version, body) values (%s, %s)",
                     (version + 1, "[user." + body))
        conn.execute("select pg_notify('pgshard_map', %s)", (str(version + 1),))
        conn.execute("commit")
    wait_for(lambda: all(c.config()["map_refused_version"] == str(version + 1) for c in consoles),
             5, message="the bad version refused everywhere")
    for c in consoles:
        cfg = c.config()
        assert cfg["map_version"] == str(version) and cfg["map_refused"] == "1", cfg
    for p in proxies:
        log = p.log_text()
        assert f"map_source: version {version + 1} refused" in log, p.log_tail()
        assert "s9" in log
    # Still routing by the version held: tenant 42 on s1.
    rows = write_through_each(proxies, "held")
    assert rows_by_shard() == {"s0": [], "s1": rows}
    # A good version after it is taken (pushed with -c CONFIG).
    out = ctl("push", str(body_file(proxies[0], tmp_path, "s0", "good.ini")), "-c",
              str(proxies[0].config_path)).stdout
    good = int(re.search(r"map version (\d+) pushed", out).group(1))
    assert good == version + 2
    wait_versions(consoles, good, timeout=5)
    for c in consoles:
        c.close()


def test_source_down_at_startup_then_back(maps, sharded_proxy, tmp_path):
    late_db = "pgshard_maps_late"
    with direct(SHARD_LAB_PORTS[0], "postgres") as conn:
        conn.execute(f"drop database if exists {late_db}")
    late = f"host=127.0.0.1 port={SHARD_LAB_PORTS[0]} dbname={late_db} user=postgres"
    proxy = sharded_proxy(map_source=late, extra_ini=tenant_map("s0"))
    console = Console(proxy)
    cfg = console.config()
    assert cfg["map_version"] == "0" and cfg["map_origin"] == "file", cfg
    assert cfg["map_source_state"] == "stale" and cfg["map_source_since"], cfg
    assert late_db in cfg["map_source_error"], cfg
    # The file's map serves meanwhile.
    rows = write_through_each([proxy], "down")
    assert rows_by_shard() == {"s0": rows, "s1": []}
    # The source comes back holding a version (pushed while no instance
    # listened): the instance reads it when it reconnects.
    with direct(SHARD_LAB_PORTS[0], "postgres") as conn:
        conn.execute(f"create database {late_db}")
    out = ctl("push", str(body_file(proxy, tmp_path, "s1")), "--source", late).stdout
    assert "map version 1 pushed" in out
    wait_versions([console], 1, timeout=10)
    cfg = console.config()
    assert cfg["map_source_state"] == "listening" and cfg["map_origin"] == "map_source", cfg
    more = write_through_each([proxy], "back")
    assert rows_by_shard() == {"s0": rows, "s1": more}
    console.close()


def test_missed_notify_read_after_reconnect(maps, sharded_proxy, tmp_path):
    proxies, consoles = start_fleet(sharded_proxy, n=1)
    version, _ = push(body_file(proxies[0], tmp_path, "s1"))
    wait_versions(consoles, version)
    with direct(SHARD_LAB_PORTS[0], MAP_DB) as conn:
        # Hold the lock the instance's reconnect takes first (its schema
        # setup, before LISTEN), kill its connection, and insert a version
        # with no notification: only a read after the reconnect finds it.
        conn.execute("begin")
        conn.execute("select pg_advisory_xact_lock(7226381473560111)")
        killed = conn.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity "
            "where application_name = 'pgshard map_source' and datname = %s",
            (MAP_DB,)).fetchone()[0]
        assert killed == 1
        body = body_file(proxies[0], tmp_path, "s0", "missed.ini").read_text()
        body = body.split("[user.", 1)[1]
        conn.execute("insert into pgshard.map (version, body) values (%s, %s)",
                     (version + 1, "[user." + body))
        wait_for(lambda: consoles[0].config()["map_source_state"] == "stale", 5,
                 message="the instance sees its connection gone")
        conn.execute("commit")
    wait_versions(consoles, version + 1, timeout=10)
    assert consoles[0].config()["map_source_state"] == "listening"
    rows = write_through_each(proxies, "missed")
    assert rows_by_shard() == {"s0": rows, "s1": []}
    consoles[0].close()


def test_sighup_rereads_the_file_and_the_latest_version(maps, sharded_proxy, tmp_path):
    """SIGHUP: the file's [pgshard] read again, and the latest version (one
    inserted without a notification here) read from the source."""
    proxies, consoles = start_fleet(sharded_proxy, n=1)
    version, _ = push(body_file(proxies[0], tmp_path, "s1"))
    wait_versions(consoles, version)
    body = body_file(proxies[0], tmp_path, "s0", "quiet.ini").read_text().split("[user.", 1)[1]
    with direct(SHARD_LAB_PORTS[0], MAP_DB) as conn:
        conn.execute("insert into pgshard.map (version, body) values (%s, %s)",
                     (version + 1, "[user." + body))
    assert consoles[0].version() == version
    proxies[0].reconfigure(query_wait_timeout_ms=12345)
    wait_for(lambda: consoles[0].config()["query_wait_timeout_ms"] == "12345"
             and consoles[0].version() == version + 1, 5,
             message="the new [pgshard] and the latest version served")
    rows = write_through_each(proxies, "hup")
    assert rows_by_shard() == {"s0": rows, "s1": []}
    consoles[0].close()


def test_status_lists_live_instances(maps, sharded_proxy, tmp_path):
    proxies, consoles = start_fleet(sharded_proxy)
    version, _ = push(body_file(proxies[0], tmp_path, "s1"))
    wait_versions(consoles, version)

    def status_rows():
        out = ctl("status", "--source", SOURCE).stdout
        rows = {}
        for line in out.splitlines()[2:]:
            fields = line.split()
            rows[fields[1]] = (int(fields[2]), int(fields[3]), fields[5])
        return out, rows

    def all_live_on_version():
        out, rows = status_rows()
        return len(rows) == 3 and all(r[1] == version and r[2] == "live" for r in rows.values())
    wait_for(all_live_on_version, 5, message="3 live instances on the version")
    out, rows = status_rows()
    assert f"latest map version {version}" in out
    assert {f"127.0.0.1:{p.port}" for p in proxies} == set(rows), out
    assert {rows[f"127.0.0.1:{p.port}"][0] for p in proxies} == {p.proc.pid for p in proxies}
    # A killed instance stops being live (its heartbeat stops).
    victim = proxies[2]
    victim.expected_exit = True
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    wait_for(lambda: status_rows()[1][f"127.0.0.1:{victim.port}"][2] == "gone", 10,
             message="the killed instance listed as gone")
    _, rows = status_rows()
    assert [r[2] for k, r in sorted(rows.items()) if k != f"127.0.0.1:{victim.port}"] == \
        ["live", "live"]
    # map wait counts the live ones only.
    newer, _ = push(body_file(proxies[0], tmp_path, "s0", "newer.ini"))
    out = ctl("wait", str(newer), "--source", SOURCE, "--timeout-ms", "5000").stdout
    assert "served by every live instance (2)" in out, out
    # One stopped cleanly is gone at once (it says so as it stops).
    consoles[1].close()
    proxies[1].send_signal(signal.SIGTERM)
    assert proxies[1].wait_exit(20) == 0
    _, rows = status_rows()
    assert rows[f"127.0.0.1:{proxies[1].port}"][2] == "gone", rows
    assert rows[f"127.0.0.1:{proxies[0].port}"][2] == "live", rows
    consoles[0].close()


def test_restart_with_source_down_serves_the_cached_version(maps, sharded_proxy, tmp_path):
    """The version an instance held is kept beside its config: restarted
    while the source is unreachable, it serves that version, never the
    file's older map."""
    proxies, consoles = start_fleet(sharded_proxy, n=1)
    proxy = proxies[0]
    version, _ = push(body_file(proxy, tmp_path, "s1"))
    wait_versions(consoles, version)
    consoles[0].close()
    cache = proxy.config_path.parent / (proxy.config_path.name + ".map-cache")
    assert f"cache: version {version}" in cache.read_text().splitlines()[0]
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait_exit(20) == 0
    proxy.log_file.close()
    proxy.apply({"map_source": SOURCE.replace(MAP_DB, "pgshard_maps_gone")})
    proxy.expected_exit = False
    proxy.start()
    console = Console(proxy)
    cfg = console.config()
    assert cfg["map_version"] == str(version) and cfg["map_source_state"] == "stale", cfg
    rows = write_through_each([proxy], "cached")
    assert rows_by_shard() == {"s0": [], "s1": rows}
    console.close()


def test_reshard_cutover_pushes_the_new_map(reshard_lab, old_view, sharded_proxy,  # noqa: F811
                                            tables, tmp_path):  # noqa: F811
    """With map_source, cutover holds every live instance, pushes NEW as a
    version (OLD's file stays as it is) and returns once every live
    instance serves it, not only the one whose console it talks to: writes
    through the other instance during the cut are neither lost nor
    applied twice."""
    port = reshard_lab.shard("s0").primary_port
    reset_database(MAP_DB, port)
    source = f"host=127.0.0.1 port={port} dbname={MAP_DB} user=postgres"
    proxies = [sharded_proxy(lab=old_view, extra_ini=test_reshard.TENANTS_OLD, map_source=source)
               for _ in range(2)]
    consoles = [Console(p) for p in proxies]
    test_reshard.populate(proxies[0])
    before = test_reshard.shard_sums(reshard_lab, "counters")
    new_map = test_reshard.TENANTS_OLD.replace("2 = s0", "2 = s1")
    new = test_reshard.new_config(proxies[0], reshard_lab, test_reshard.TENANTS_OLD, new_map,
                                  tmp_path / "new.ini", add_s2=False)
    old_text = proxies[0].config_path.read_text()
    with open(tmp_path / "start.log", "w") as log:
        streamer = test_reshard.start_streamer(proxies[0].config_path, new, log)
    try:
        test_reshard.wait_streaming(reshard_lab, ["s1"], streamer)
        load = test_reshard.run_load(proxies[1], tmp_path, test_reshard.COUNTERS_LOAD, 4)
        time.sleep(1.5)
        out = test_reshard.ctl("cutover", proxies[0].config_path, new).stdout
        assert "cut over" in out, out
        # Both instances serve it already: cutover waited for them.
        assert [c.version() for c in consoles] == [1, 1]
        done, _ = test_reshard.load_result(load, tmp_path)
        streamer.wait(30)
        test_reshard.ctl("cleanup", proxies[0].config_path, new)
    finally:
        test_reshard.stop(streamer)
    assert proxies[0].config_path.read_text() == old_text
    assert not list(tmp_path.glob("*.pre-reshard-*"))
    shown = ctl("show", "--source", source).stdout
    assert "2 = s1" in shown and "reshard" in shown.splitlines()[0], shown
    after = test_reshard.shard_sums(reshard_lab, "counters")
    assert sum(c for c, _ in after.values()) == sum(c for c, _ in before.values())
    assert sum(s for _, s in after.values()) == sum(s for _, s in before.values()) + done
    assert test_reshard.tenant_rows(reshard_lab, "s0", 2) == 0
    assert test_reshard.tenant_rows(reshard_lab, "s1", 2) == 50
    # Writes through the instance cutover did not talk to follow NEW too.
    with proxies[1].connect(autocommit=True) as conn:
        conn.execute("insert into counters (tenant_id, k, n) values (2, 1000, 7)")
    assert test_reshard.tenant_rows(reshard_lab, "s1", 2) == 51
    for c in consoles:
        c.close()
