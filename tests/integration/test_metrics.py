"""Prometheus metrics at GET /metrics (metrics_listen): a real HTTP scrape
(urllib), parsed line by line as the text format says, cross-checked with
the admin console's SHOW STATS and SHOW POOLS and with the lab's nodes.
"""
import re
import socket
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from conftest import free_port
from support import wait_for
from test_admin import admin, rows
from test_replicas import FAST, wait_replicas_readable

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples, types = [], {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    for name, _, _ in samples:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"{name} has no # TYPE"
    return samples, types


def value(samples, name, **labels):
    found = [v for n, lab, v in samples
             if n == name and all(lab.get(k) == str(w) for k, w in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_scrape_agrees_with_the_admin_console(proxy):
    port = free_port()
    px = proxy(metrics_listen=f"127.0.0.1:{port}", pool_size=3)
    url = f"http://127.0.0.1:{port}/metrics"
    with px.connect(autocommit=True) as app:
        for i in range(30):
            app.execute("select %s::int", (i,))
        with pytest.raises(psycopg.Error):
            app.execute("select 1/0")
        held = px.connect()
        held.execute("select 1")  # holds a server, idle in transaction
        try:
            samples, types = scrape(url)
            with admin(px) as conn:
                stats = {r["database"]: r for r in rows(conn, "show stats")}["app"]
                pools = [p for p in rows(conn, "show pools") if p["database"] == "app"]
        finally:
            held.close()
    assert value(samples, "pgshard_up") == 1
    # select 1/0: the server's 22012, in class 22.
    assert value(samples, "pgshard_client_errors_total", database="app", **{"class": "22"}) == 1
    assert types["pgshard_requests_total"] == "counter"
    assert types["pgshard_request_duration_seconds"] == "histogram"
    requests = value(samples, "pgshard_requests_total", database="app")
    # SHOW STATS ran after the scrape; nothing else talked to app in between.
    assert requests == stats["requests"] >= 32
    assert value(samples, "pgshard_errors_total", database="app") == stats["errors"] >= 1
    assert value(samples, "pgshard_queries_total", database="app") == stats["queries"]
    buckets = [(float(lab["le"]), v) for n, lab, v in samples
               if n == "pgshard_request_duration_seconds_bucket" and lab["database"] == "app"]
    assert buckets[-1][0] == float("inf") and buckets[-1][1] == requests
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "buckets not cumulative"
    assert value(samples, "pgshard_request_duration_seconds_count", database="app") == requests
    assert value(samples, "pgshard_request_duration_seconds_sum", database="app") > 0
    # Servers and clients: the transaction held one server while scraped.
    assert len(pools) == 1
    active = value(samples, "pgshard_servers", database="app", user="app", shard="s0", node=0,
                   state="active")
    assert active >= 1
    assert value(samples, "pgshard_clients", database="app", state="active") >= 1
    assert value(samples, "pgshard_node_up", database="app", shard="s0", node=0,
                 role="primary") == 1


def check_histogram(samples, **labels):
    """The health check histogram of the node LABELS names: (count, sum),
    after checking that its buckets are cumulative and end at +Inf = count."""
    name = "pgshard_health_check_seconds"
    buckets = [(float(lab["le"]), v) for n, lab, v in samples
               if n == name + "_bucket"
               and all(lab.get(k) == str(w) for k, w in labels.items())]
    assert len(buckets) == 14, buckets  # 0.5 ms .. 5 s, then +Inf
    assert buckets[0][0] == 0.0005 and buckets[-2][0] == 5.0
    assert buckets[-1][0] == float("inf")
    assert [b for b, _ in buckets] == sorted(b for b, _ in buckets)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "buckets not cumulative"
    count = value(samples, name + "_count", **labels)
    assert buckets[-1][1] == count
    return count, value(samples, name + "_sum", **labels)


def test_health_check_latency(proxy):
    port = free_port()
    interval_ms = 50
    px = proxy(metrics_listen=f"127.0.0.1:{port}", lag_check_interval_ms=interval_ms)
    url = f"http://127.0.0.1:{port}/metrics"
    node = dict(database="app", shard="s0", node=0, role="primary")

    def answered():
        # The first check may not have answered yet when pgshard listens.
        found = scrape(url)
        return found if value(found[0], "pgshard_health_check_seconds_count", **node) else None

    samples, types = wait_for(answered, 10, message="a first health check")
    assert types["pgshard_health_check_seconds"] == "histogram"
    assert types["pgshard_health_check_last_seconds"] == "gauge"
    first, _ = check_histogram(samples, **node)
    started = time.monotonic()

    def later():
        # The monitor checks every interval: a scrape after one has counted more.
        if time.monotonic() - started <= interval_ms / 1000:
            return None
        st = scrape(url)[0]
        return st if check_histogram(st, **node)[0] > first else None
    samples = wait_for(later, 10, message="the check count to grow")
    count, total = check_histogram(samples, **node)
    assert count > first and total > 0
    last = value(samples, "pgshard_health_check_last_seconds", **node)
    assert 0 < last < 5
    assert total >= last  # the sum holds the last check among others
    # The console's SHOW NODES shows the same kind of number in ms.
    with admin(px) as conn:
        nodes = [n for n in rows(conn, "show nodes") if n["shard"] == "s0" and n["node"] == 0]
    assert len(nodes) == 1 and nodes[0]["check_ms"] is not None
    assert 0 < nodes[0]["check_ms"] < 5000


def test_only_get_metrics_is_served(proxy):
    port = free_port()
    px = proxy(metrics_listen=f"127.0.0.1:{port}")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert exc.value.code == 404
    # A request that never ends its head is closed, not kept.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000)
        s.settimeout(15)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    samples, _ = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "pgshard_up") == 1
    px.assert_alive()


def test_replica_lag_and_read_set(replica_lab, replica_proxy):
    lab = replica_lab
    port = free_port()
    px = replica_proxy(metrics_listen=f"127.0.0.1:{port}", **FAST)
    wait_replicas_readable(px, lab)
    samples, _ = scrape(f"http://127.0.0.1:{port}/metrics")
    for shard in lab.shards:
        assert value(samples, "pgshard_node_writer", database="app", shard=shard.name, node=0,
                     role="primary") == 1
        for i in (1, 2):
            assert value(samples, "pgshard_node_up", database="app", shard=shard.name, node=i,
                         role="replica") == 1
            assert value(samples, "pgshard_node_writer", database="app", shard=shard.name,
                         node=i, role="replica") == 0
            lag = value(samples, "pgshard_replica_lag_bytes", database="app", shard=shard.name,
                        node=i, role="replica")
            assert lag >= 0
    # Every node's checks are timed (the replicas have answered: readable).
    for shard in lab.shards:
        for i in (0, 1, 2):
            count, total = check_histogram(samples, database="app", shard=shard.name, node=i,
                                           role="primary" if i == 0 else "replica")
            assert count >= 1 and total > 0
    in_set = [v for n, lab_, v in samples if n == "pgshard_node_in_read_set"]
    assert len(in_set) == 4 and sum(in_set) >= 3


def test_a_busy_metrics_port_stops_startup(proxy, request):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        taken = blocker.getsockname()[1]
        with pytest.raises(AssertionError) as exc:
            proxy(metrics_listen=f"127.0.0.1:{taken}")
        assert "metrics_listen" in str(exc.value)
        assert "address already in use" in str(exc.value)
        request.node._pgshard_proxies[-1].expected_exit = True  # the exit is the point
    finally:
        blocker.close()


def test_errors_by_class_count_each_error_once(shard_lab, sharded_proxy):
    port = free_port()
    px = sharded_proxy(metrics_listen=f"127.0.0.1:{port}",
                       extra_ini="[table.app.users]\ncolumn = id\ntype = bigint\nstrategy = hash\n")
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as direct:
            direct.execute("drop table if exists users")
            direct.execute("create table users (id bigint primary key)")
            direct.execute("insert into users values (1), (2)")
    try:
        with px.connect(autocommit=True) as app:
            # A read over both shards failing on each: the client gets one error.
            with pytest.raises(psycopg.errors.DivisionByZero):
                app.execute("select 1 / (id - id) from users")
            with pytest.raises(psycopg.errors.UndefinedTable):
                app.execute("select * from nosuchtable")
            # Refused by pgshard: a write without a key under deny. (Not an
            # INSERT ... SELECT 3: once the monitor has read the columns it is
            # routed by its value.)
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                app.execute("delete from users")
        samples, _ = scrape(f"http://127.0.0.1:{port}/metrics")
        classes = {lab["class"]: v for n, lab, v in samples
                   if n == "pgshard_client_errors_total" and lab["database"] == "app"}
        assert classes.get("22") == 1 and classes.get("42") == 1, classes
        assert classes.get("0A") == 1, classes
        assert sum(classes.values()) == 3, classes
    finally:
        for shard in shard_lab.shards:
            with shard_lab.connect_primary(shard.name) as direct:
                direct.execute("drop table if exists users")
