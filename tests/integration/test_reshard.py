"""`pgshardctl reshard`: moving rows between shards while clients write.

The lab here has three shards for database app (s0, s1, s2; primaries on
PORT_BASE-60 .. -58, s2 with a streaming replica on PORT_BASE-57); the old
map serves s0 and s1 only (`old_view`), the new one adds s2. Every check of
where a row is reads the shards directly.

The load is pgbench through pgshard: each transaction adds 1 to one row of
`counters` chosen at random and reads it back. Every row exists before the
move, so after it the sum of n over the shards must equal the sum before
plus the transactions pgbench reports as done (every acknowledged write
present, none applied twice), and each row must be exactly on the shard the
new map names.
"""
import os
import re
import signal
import subprocess
import time

import psycopg
import pytest

from conftest import (PGSHARDCTL, PORT_BASE, Lab, LabShard, _run_lab)
from support import wait_for

RESHARD_LAB_ROOT = f"/tmp/pgshard-it-{PORT_BASE}-reshard"
S0, S1, S2, S2_REPLICA = PORT_BASE - 60, PORT_BASE - 59, PORT_BASE - 58, PORT_BASE - 57

TENANTS_OLD = """\
[table.app.counters]
column = tenant_id
type = bigint
strategy = tenant

[table.app.orders]
column = tenant_id
type = bigint
strategy = tenant

[table.app.events]
column = id
type = bigint
strategy = range
range = s0: - 1000
range = s1: 1000 -

[table.app.users]
column = id
type = bigint
strategy = hash

[tenants.app]
1 = s0
2 = s0
3 = s1
4 = s1
"""


@pytest.fixture(scope="module")
def reshard_lab():
    from pathlib import Path
    yield from _run_lab(Lab(Path(RESHARD_LAB_ROOT),
                            [LabShard("s0", S0), LabShard("s1", S1),
                             LabShard("s2", S2, S2_REPLICA)],
                            title="the resharding lab (3 shards, s2 replicated)"))


@pytest.fixture
def old_view(reshard_lab):
    """The same lab as the old map sees it: s0 and s1 only."""
    view = Lab(reshard_lab.root, [reshard_lab.shard("s0"), reshard_lab.shard("s1")],
               title="the resharding lab's old map")
    return view


@pytest.fixture
def tables(reshard_lab):
    """counters (tenant) and events (range) on every shard, empty; and no
    resharding state or replication objects left by another test."""
    for shard in reshard_lab.shards:
        with reshard_lab.connect_primary(shard.name) as conn:
            conn.autocommit = True
            for (slot,) in conn.execute("select slot_name from pg_replication_slots"
                                        " where slot_name like 'pgshard_%'").fetchall():
                conn.execute("select pg_terminate_backend(active_pid) from pg_replication_slots"
                             " where slot_name = %s and active_pid is not null", (slot,))
                wait_for(lambda s=slot: conn.execute(
                    "select not active from pg_replication_slots where slot_name = %s",
                    (s,)).fetchone()[0], 10, message="slot released")
                conn.execute("select pg_drop_replication_slot(%s)", (slot,))
            for (pub,) in conn.execute("select pubname from pg_publication").fetchall():
                conn.execute(f'drop publication "{pub}"')
            conn.execute("drop schema if exists pgshard cascade")
            conn.execute("drop table if exists counters, events, users, orders")
            conn.execute("create table counters (tenant_id bigint not null, k int not null,"
                         " n bigint not null default 0, note text, primary key (tenant_id, k))")
            conn.execute("create table events (id bigint primary key, v text,"
                         " n bigint not null default 0)")
            conn.execute("create table users (id bigint primary key, name text,"
                         " n bigint not null default 0)")
            conn.execute("create table orders (tenant_id bigint not null, id bigserial,"
                         " item text, primary key (tenant_id, id))")
    yield


def ctl(*args, check=True, timeout=120):
    proc = subprocess.run([str(PGSHARDCTL), "reshard", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"reshard {' '.join(map(str, args))}: {proc.stdout}"
    return proc


def new_config(px, reshard_lab, old_map, new_map, path, slots=False, add_s2=True):
    """PX's config with shard s2 added and OLD_MAP replaced by NEW_MAP (and
    with SLOTS, the slot table `reshard slots` computes appended)."""
    text = px.config_path.read_text()
    assert old_map.strip() in text
    s2 = reshard_lab.shard("s2")
    text = text.replace(old_map.strip(), new_map.strip())
    text += "" if not add_s2 else (f"\n[shard.app.s2]\nprimary = host=127.0.0.1 port={s2.primary_port} dbname=app"
             f" user=postgres\nreplica = host=127.0.0.1 port={s2.replica_port} dbname=app"
             " user=postgres\n")
    path.write_text(text)
    if slots:
        section = ctl("slots", px.config_path, path).stdout
        assert "[slots.app]" in section, section
        path.write_text(text + "\n" + section)
    return path


def rows_on(lab, shard, table="counters"):
    with lab.connect_primary(shard) as conn:
        return conn.execute(f"select count(*), coalesce(sum(n), 0) from {table}").fetchone() \
            if table == "counters" else conn.execute(f"select count(*) from {table}").fetchone()


def tenant_rows(lab, shard, tenant):
    with lab.connect_primary(shard) as conn:
        return conn.execute("select count(*) from counters where tenant_id = %s",
                            (tenant,)).fetchone()[0]


def state_rows(lab, shard):
    with lab.connect_primary(shard) as conn:
        if conn.execute("select to_regclass('pgshard.reshard_move')").fetchone()[0] is None:
            return []
        return conn.execute("select source, target, phase, error from pgshard.reshard_move"
                            " order by source").fetchall()


def replication_objects(lab):
    found = []
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            found += conn.execute("select slot_name from pg_replication_slots where slot_name"
                                  " like 'pgshard_%'").fetchall()
            found += conn.execute("select pubname from pg_publication").fetchall()
    return found


def start_streamer(old, new, log):
    return subprocess.Popen([str(PGSHARDCTL), "reshard", "start", str(old), str(new)],
                            stdout=log, stderr=subprocess.STDOUT)


def wait_streaming(lab, targets, proc=None, timeout=60):
    def streaming():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"reshard start exited {proc.returncode}")
        for target in targets:
            rows = state_rows(lab, target)
            if not rows or any(r[2] != "streaming" for r in rows):
                return False
        return True
    wait_for(streaming, timeout, interval=0.1, message="every move streaming")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def populate(px, tenants=(1, 2, 3, 4), keys=50):
    with px.connect(autocommit=True) as conn:
        for t in tenants:
            with conn.cursor() as cur:
                cur.executemany("insert into counters (tenant_id, k, n) values (%s, %s, 0)",
                                [(t, k) for k in range(1, keys + 1)])


TENANTS_NEW = TENANTS_OLD.replace("1 = s0", "1 = s2")


def tenant_move_streaming(sharded_proxy, reshard_lab, old_view, tmp_path):
    """A pgshard on the old map with tenants 1-4 populated, and tenant 1's
    move to s2 (slot table appended) started and streaming. Returns the
    proxy, NEW's path and the `reshard start` process (the caller stops it)."""
    px = sharded_proxy(lab=old_view, extra_ini=TENANTS_OLD)
    populate(px)
    new = new_config(px, reshard_lab, TENANTS_OLD, TENANTS_NEW, tmp_path / "new.ini", slots=True)
    with open(tmp_path / "start.log", "w") as log:
        streamer = start_streamer(px.config_path, new, log)
    try:
        wait_streaming(reshard_lab, ["s2"], streamer)
    except BaseException:
        stop(streamer)
        raise
    return px, new, streamer


def test_plan_lists_moves_rows_and_prerequisites(reshard_lab, old_view, sharded_proxy, tables,
                                                  tmp_path):
    px = sharded_proxy(lab=old_view, extra_ini=TENANTS_OLD)
    populate(px)
    new = new_config(px, reshard_lab, TENANTS_OLD, TENANTS_NEW, tmp_path / "new.ini")
    out = ctl("plan", px.config_path, new).stdout
    assert re.search(r"move s0 -> s2: counters \(50 rows\)", out), out
    assert "ready" in out and "not ready" not in out, out
    # Without the table on the target, plan says what to create first.
    with reshard_lab.connect_primary("s2") as conn:
        conn.execute("drop table counters")
    proc = ctl("plan", px.config_path, new, check=False)
    assert proc.returncode == 1
    assert "table counters does not exist on target s2" in proc.stdout, proc.stdout


def test_start_copies_and_streams_then_abort_leaves_nothing(reshard_lab, old_view, sharded_proxy,
                                                          tables, tmp_path):
    px = sharded_proxy(lab=old_view, extra_ini=TENANTS_OLD)
    populate(px)
    new = new_config(px, reshard_lab, TENANTS_OLD, TENANTS_NEW, tmp_path / "new.ini")
    before = {s: rows_on(reshard_lab, s) for s in ("s0", "s1")}
    with open(tmp_path / "start.log", "w") as log:
        streamer = start_streamer(px.config_path, new, log)
    try:
        wait_streaming(reshard_lab, ["s2"], streamer)
        assert tenant_rows(reshard_lab, "s2", 1) == 50  # copied
        assert tenant_rows(reshard_lab, "s2", 2) == 0   # not moving
        # Changes through pgshard (old map: tenant 1 on s0) reach s2.
        with px.connect(autocommit=True) as conn:
            conn.execute("update counters set n = n + 5, note = 'upd' where tenant_id = 1"
                         " and k <= 10")
            conn.execute("delete from counters where tenant_id = 1 and k = 50")
            conn.execute("insert into counters (tenant_id, k, n) values (1, 51, 7)")
            conn.execute("update counters set n = n + 1 where tenant_id = 2")

        def applied():
            with reshard_lab.connect_primary("s2") as conn:
                return conn.execute(
                    "select count(*), sum(n), count(*) filter (where note = 'upd')"
                    " from counters where tenant_id = 1").fetchone() == (50, 57, 10)
        wait_for(applied, 20, message="the changes applied on s2")
        out = ctl("status", px.config_path, new).stdout
        assert re.search(r"s0\s+s2\s+streaming\s+50\s+\d+", out), out
        assert "connected" in out, out
        # pgshard, which serves s0 and s1 only, sees the move into s2 too (the
        # source's mirror of the state).
        def show_reshard():
            with px.connect(user="admin", password="adminpw", dbname="pgshard",
                            autocommit=True) as admin:
                cur = admin.execute("SHOW RESHARD")
                cols = [d.name for d in cur.description]
                return [dict(zip(cols, r)) for r in cur.fetchall() if r[0] == "move"]
        rows = wait_for(lambda: [r for r in show_reshard() if r["source"] == "s0" and
                                 r["target"] == "s2" and r["phase"] == "streaming"], 10,
                        message="SHOW RESHARD to list the move s0 -> s2")
        assert rows[0]["rows_copied"] == 50 and rows[0]["tables"] == "counters, orders", rows
        # Killed while streaming, a rerun goes on from where it was.
        streamer.kill()
        streamer.wait()
        with px.connect(autocommit=True) as conn:
            conn.execute("update counters set n = n + 100 where tenant_id = 1 and k = 1")
        with open(tmp_path / "start2.log", "w") as log:
            streamer = start_streamer(px.config_path, new, log)
        wait_for(lambda: reshard_lab.connect_primary("s2").execute(
            "select n from counters where tenant_id = 1 and k = 1").fetchone() == (105,), 20,
            message="the change made while no streamer ran")
        with reshard_lab.connect_primary("s2") as conn:
            assert conn.execute("select count(*), sum(n) from counters where tenant_id = 1"
                                ).fetchone() == (50, 157)
        # Abort: the copies go, the source is as the writes left it, nothing
        # of the move stays.
        out = ctl("abort", px.config_path, new, "--admin",
                  px.conninfo(user="admin", password="adminpw", dbname="pgshard")).stdout
        assert "aborted" in out, out
        streamer.wait(20)
    finally:
        stop(streamer)
    assert tenant_rows(reshard_lab, "s2", 1) == 0
    assert replication_objects(reshard_lab) == []
    assert state_rows(reshard_lab, "s2") == []
    after = {s: rows_on(reshard_lab, s) for s in ("s0", "s1")}
    assert after["s0"][0] == before["s0"][0]  # 100 rows: tenant 1's 50 and tenant 2's 50
    assert after["s0"][1] == before["s0"][1] + 57 + 100 + 50
    assert after["s1"] == before["s1"]


def test_a_source_transaction_reaches_a_target_whole(reshard_lab, old_view, sharded_proxy,
                                                     tables, tmp_path):
    """A catching-up streamer reads the stream in bursts that may stop in the
    middle of a source transaction: what a target commits is always whole
    transactions (else a rerun would apply the rest of one, or all of it,
    again: its applied_lsn describes only whole ones)."""
    px = sharded_proxy(lab=old_view, extra_ini=TENANTS_OLD)
    populate(px)
    new = new_config(px, reshard_lab, TENANTS_OLD, TENANTS_NEW, tmp_path / "new.ini")
    with open(tmp_path / "start.log", "w") as log:
        streamer = start_streamer(px.config_path, new, log)
    try:
        wait_streaming(reshard_lab, ["s2"], streamer)
        streamer.kill()
        streamer.wait()
        # While no streamer runs, tenant 1 (moving to s2) gets GROUPS
        # transactions of ROWS rows each, group g's rows with n = g.
        groups, rows = 150, 100
        with reshard_lab.connect_primary("s0") as conn:
            conn.autocommit = True
            for g in range(1, groups + 1):
                conn.execute("insert into counters (tenant_id, k, n) select 1, %s + i, %s"
                             " from generate_series(1, %s) i", (1000 * g, g, rows))
        with open(tmp_path / "start2.log", "w") as log:
            streamer = start_streamer(px.config_path, new, log)
        seen, partial = set(), set()
        with reshard_lab.connect_primary("s2") as conn:
            conn.autocommit = True

            def caught_up():
                got = dict(conn.execute("select n, count(*) from counters where tenant_id = 1"
                                        " and k > 1000 group by n").fetchall())
                partial.update((g, c) for g, c in got.items() if c != rows)
                seen.add(len(got))
                if streamer.poll() is not None:
                    raise AssertionError(f"reshard start exited {streamer.returncode}")
                return len(got) == groups
            wait_for(caught_up, 60, interval=0.001, message="every transaction on s2")
        # (group, rows) seen on s2 with part of a source transaction's rows.
        assert partial == set(), sorted(partial)
        assert len(seen) > 2, seen  # it was seen catching up, not only before and after
    finally:
        stop(streamer)


def test_killed_during_copy_then_rerun(reshard_lab, old_view, sharded_proxy, tables, tmp_path):
    px = sharded_proxy(lab=old_view, extra_ini=TENANTS_OLD)
    populate(px)
    new = new_config(px, reshard_lab, TENANTS_OLD, TENANTS_NEW, tmp_path / "new.ini")
    env = dict(os.environ, PGSHARD_RESHARD_TEST_COPY_PAUSE_MS="60000")
    log_path = tmp_path / "start.log"
    with open(log_path, "w") as log:
        streamer = subprocess.Popen([str(PGSHARDCTL), "reshard", "start", str(px.config_path),
                                     str(new)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "s0: pausing before commit" in log_path.read_text(), 30,
                 message="the copy from s0 to pause before its commit")
        streamer.kill()  # the streamers (children) follow their parent
        streamer.wait()
        # Nothing of an uncommitted copy is visible; the state says copying.
        wait_for(lambda: tenant_rows(reshard_lab, "s2", 1) == 0 and
                 ("s0", "s2", "copying", None) in state_rows(reshard_lab, "s2"), 10,
                 message="the killed copy rolled back")
        # Abort from the copying phase: nothing left, the source as it was.
        ctl("abort", px.config_path, new)
        assert replication_objects(reshard_lab) == []
        assert state_rows(reshard_lab, "s2") == []
        assert tenant_rows(reshard_lab, "s0", 1) == 50
        # Killed again, then rerun to the end of the copy.
        with open(log_path, "w") as log:
            streamer = subprocess.Popen([str(PGSHARDCTL), "reshard", "start",
                                         str(px.config_path), str(new)], stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: "s0: pausing before commit" in log_path.read_text(), 30,
                 message="the copy from s0 to pause before its commit")
        streamer.kill()
        streamer.wait()
        with px.connect(autocommit=True) as conn:
            conn.execute("update counters set n = n + 3 where tenant_id = 1")
        with open(tmp_path / "start2.log", "w") as log:
            streamer = start_streamer(px.config_path, new, log)
        wait_streaming(reshard_lab, ["s1", "s2"], streamer)
        with reshard_lab.connect_primary("s2") as conn:
            assert conn.execute("select count(*), sum(n) from counters where tenant_id = 1"
                                ).fetchone() == (50, 150)
        ctl("abort", px.config_path, new)
        streamer.wait(20)
    finally:
        stop(streamer)
    assert replication_objects(reshard_lab) == []
    assert tenant_rows(reshard_lab, "s2", 1) == 0
    assert tenant_rows(reshard_lab, "s0", 1) == 50


PGBENCH = os.environ.get("PGSHARD_PGBENCH", "/usr/lib/postgresql/15/bin/pgbench")

# Moves: (name, old map, new map, table, key column, keys and where they go)
RANGES_NEW = TENANTS_OLD.replace("range = s0: - 1000\n",
                                 "range = s0: - 500\nrange = s2: 500 - 1000\n")


def run_load(px, tmp_path, script, seconds):
    """pgbench through PX running SCRIPT for SECONDS, 4 clients, a log line
    per transaction. Returns the Popen."""
    (tmp_path / "load.sql").write_text(script)
    env = dict(os.environ, PGPASSWORD="secret")
    return subprocess.Popen(
        [PGBENCH, "-n", "-c", "4", "-j", "2", "-T", str(seconds), "-M", "simple",
         "-f", str(tmp_path / "load.sql"), "-l", "--log-prefix", str(tmp_path / "pgbench"),
         "-h", "127.0.0.1", "-p", str(px.port), "-U", "app", "app"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)


def load_result(proc, tmp_path):
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed is None or int(failed.group(1)) == 0, out
    assert "aborted" not in out, out
    latencies = []
    for log in tmp_path.glob("pgbench.*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            latencies.append(int(fields[2]) / 1000.0)  # ms
    latencies.sort()
    assert len(latencies) == done
    return done, latencies


COUNTERS_LOAD = """\
\\set t random(1, 4)
\\set k random(1, 50)
update counters set n = n + 1 where tenant_id = :t and k = :k;
select n from counters where tenant_id = :t and k = :k;
"""

EVENTS_LOAD = """\
\\set id random(1, 1999)
update events set n = n + 1 where id = :id;
select n from events where id = :id;
"""


def shard_sums(lab, table):
    """(rows, sum of n) on each shard of the lab."""
    out = {}
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            out[shard.name] = conn.execute(f"select count(*), coalesce(sum(n), 0) from {table}"
                                           ).fetchone()
    return out


def misplaced(lab, new_path, table, column):
    """Rows of TABLE not on the shard the map in NEW_PATH names (keys routed
    by `pgshardctl route --stdin`), and keys present on several shards."""
    keys, where = [], {}
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            for (key,) in conn.execute(f"select {column} from {table}").fetchall():
                keys.append(str(key))
                where.setdefault(str(key), []).append(shard.name)
    proc = subprocess.run([str(PGSHARDCTL), "route", "--stdin", str(new_path), "app", table],
                          input="\n".join(sorted(set(keys))) + "\n", stdout=subprocess.PIPE,
                          text=True, check=True)
    routed = dict(line.split("\t") for line in proc.stdout.splitlines())
    return [(k, shards, routed[k]) for k, shards in where.items()
            if table != "counters" and shards != [routed[k]]] + \
        [(k, shards, routed[k]) for k, shards in where.items()
         if table == "counters" and set(shards) != {routed[k]}]


USERS_LOAD = """\
\\set id random(1, 2000)
update users set n = n + 1 where id = :id;
select n from users where id = :id;
"""

MOVES = {  # old map, new map, table, its key column, the load, rows that go to s2
    "tenant": (TENANTS_OLD, TENANTS_NEW, "counters", "tenant_id", COUNTERS_LOAD, 50),
    "range": (TENANTS_OLD, RANGES_NEW, "events", "id", EVENTS_LOAD, 500),
    "hash": (TENANTS_OLD, TENANTS_OLD, "users", "id", USERS_LOAD, None),
    # hash = postgres (PARTITION BY HASH): from modulus 2 to 3, keys move
    # between the old shards too, so pgshard refuses fan-outs meanwhile.
    "postgres": (TENANTS_OLD, TENANTS_OLD, "users", "id", USERS_LOAD, None),
}


@pytest.mark.parametrize("move", ["tenant", "range", "hash", "postgres"])
def test_move_under_load(reshard_lab, old_view, sharded_proxy, tables, tmp_path, move):
    old_map, new_map, table, column, script, to_s2 = MOVES[move]
    px = sharded_proxy(lab=old_view, extra_ini=old_map,
                       **({"hash": "postgres"} if move == "postgres" else {}))
    if move == "tenant":
        populate(px)
    else:
        with px.connect(autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.executemany(f"insert into {table} (id) values (%s)",
                                [(i,) for i in range(1, 2000 if move == "range" else 2001)])
    new = new_config(px, reshard_lab, old_map, new_map, tmp_path / "new.ini",
                     slots=move != "postgres")
    before = shard_sums(reshard_lab, table)
    rows_before = sum(c for c, _ in before.values())
    sum_before = sum(s for _, s in before.values())
    with open(tmp_path / "start.log", "w") as log:
        streamer = start_streamer(px.config_path, new, log)
    try:
        wait_streaming(reshard_lab, ["s0", "s1", "s2"] if move == "postgres" else ["s2"],
                       streamer)
        load = run_load(px, tmp_path, script, 8)
        lag_bytes, lag_s = [], []
        for _ in range(6):  # the streamers' lag while the load runs (status)
            time.sleep(0.5)
            for line in ctl("status", px.config_path, new).stdout.splitlines():
                fields = line.split()
                if len(fields) >= 7 and fields[2] == "streaming":
                    lag_bytes.append(int(fields[5]))
                    lag_s.append(float(fields[6]))
        assert lag_bytes, "status showed no streaming move"
        out = ctl("cutover", px.config_path, new).stdout
        held = float(re.search(r"held (\d+) ms", out).group(1))
        cut_report = out.strip().splitlines()[-1]
        done, latencies = load_result(load, tmp_path)
        streamer.wait(30)  # the streamers end once their moves are switched
        assert streamer.returncode == 0, (tmp_path / "start.log").read_text()
        # The new map serves: pgshard's own file is NEW now.
        assert px.config_path.read_text() == new.read_text()
        out = ctl("cleanup", px.config_path, new).stdout
        assert "cleaned" in out, out
    finally:
        stop(streamer)
    after = shard_sums(reshard_lab, table)
    assert sum(c for c, _ in after.values()) == rows_before, after
    assert sum(s for _, s in after.values()) == sum_before + done, (before, after, done)
    assert misplaced(reshard_lab, new, table, column) == []
    assert replication_objects(reshard_lab) == []
    moved_rows = after["s2"][0]
    if to_s2 is not None:
        assert moved_rows == to_s2
    else:  # xxh3 from 2 to 3 shards with a slot table: a third, all to s2
        assert 2000 * 0.25 < moved_rows < 2000 * 0.42, after
    p99 = latencies[int(len(latencies) * 0.99)]
    print(f"\n{move}: {done} transactions, {moved_rows} rows moved, statements held {held:.0f} ms,"
          f" load latency max {latencies[-1]:.1f} ms p99 {p99:.1f} ms; lag during the move"
          f" max {max(lag_bytes)} bytes, {max(lag_s):.2f} s\n  {cut_report}")
    # New statements follow the new map through pgshard.
    with px.connect(autocommit=True) as conn:
        if move == "tenant":
            conn.execute("insert into counters (tenant_id, k, n) values (1, 1000, 0)")
        elif move == "range":
            conn.execute("update events set v = 'y' where id = 600")
    with reshard_lab.connect_primary("s2") as conn:
        if move == "tenant":
            assert conn.execute("select count(*) from counters where k = 1000").fetchone() == (1,)
        elif move == "range":
            assert conn.execute("select v from events where id = 600").fetchone() == ("y",)


def test_refused_before_starting_without_a_replica_identity(reshard_lab, old_view, sharded_proxy,
                                                            tables, tmp_path):
    """A table whose rows could not be found again on the target by an
    update or delete (no replica identity carrying the shard key) is refused
    by plan and start, before anything is created."""
    nopk = "\n[table.app.logs]\ncolumn = id\ntype = bigint\nstrategy = hash\n"
    for shard in reshard_lab.shards:
        with reshard_lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists logs")
            conn.execute("create table logs (id bigint not null, line text)")
    try:
        px = sharded_proxy(lab=old_view, extra_ini=TENANTS_OLD + nopk)
        new = new_config(px, reshard_lab, TENANTS_OLD + nopk, TENANTS_NEW + nopk,
                         tmp_path / "new.ini", slots=True)
        for verb in ("plan", "start"):
            proc = ctl(verb, px.config_path, new, check=False)
            assert proc.returncode == 1, proc.stdout
            assert "table logs on s0 has no replica identity with its shard key id" \
                in proc.stdout, proc.stdout
        assert replication_objects(reshard_lab) == []
        assert state_rows(reshard_lab, "s2") == []
        # A primary key without the shard key is no better.
        for shard in reshard_lab.shards:
            with reshard_lab.connect_primary(shard.name) as conn:
                conn.execute("alter table logs add column seq serial primary key")
        proc = ctl("plan", px.config_path, new, check=False)
        assert "table logs on s0 has no replica identity with its shard key id" in proc.stdout
        # REPLICA IDENTITY FULL is enough.
        for shard in reshard_lab.shards:
            with reshard_lab.connect_primary(shard.name) as conn:
                conn.execute("alter table logs replica identity full")
        proc = ctl("plan", px.config_path, new, check=False)
        assert proc.returncode == 0, proc.stdout
    finally:
        for shard in reshard_lab.shards:
            with reshard_lab.connect_primary(shard.name) as conn:
                conn.execute("drop table if exists logs")


def test_truncate_on_the_source_stops_the_move(reshard_lab, old_view, sharded_proxy, tables,
                                               tmp_path):
    """What the streamer cannot apply faithfully stops it, with the reason in
    status: here a TRUNCATE of a moving table made directly on the source."""
    px, new, streamer = tenant_move_streaming(sharded_proxy, reshard_lab, old_view, tmp_path)
    try:
        with reshard_lab.connect_primary("s0") as conn:
            conn.execute("truncate counters")
        # s0's streamer stops (s1's goes on: its moves are fine).
        wait_for(lambda: "TRUNCATE of a moving table on s0" in
                 ctl("status", px.config_path, new).stdout, 30, message="the error in status")
        proc = ctl("cutover", px.config_path, new, check=False)
        assert proc.returncode == 1 and "stopped: TRUNCATE" in proc.stdout, proc.stdout
        ctl("abort", px.config_path, new)
        assert streamer.wait(30) == 1
    finally:
        stop(streamer)
    assert replication_objects(reshard_lab) == []


def test_move_into_a_serving_shard(reshard_lab, old_view, sharded_proxy, tables, tmp_path):
    """Tenant 2 from s0 to s1, which serves already: while its rows are on
    both, pgshard refuses what would see or change them twice (a fan-out),
    keyed statements run throughout, and the cut leaves them on s1 only."""
    px = sharded_proxy(lab=old_view, extra_ini=TENANTS_OLD)
    populate(px)
    new_map = TENANTS_OLD.replace("2 = s0", "2 = s1")
    new = new_config(px, reshard_lab, TENANTS_OLD, new_map, tmp_path / "new.ini", add_s2=False)
    before = shard_sums(reshard_lab, "counters")
    with open(tmp_path / "start.log", "w") as log:
        streamer = start_streamer(px.config_path, new, log)
    try:
        wait_streaming(reshard_lab, ["s1"], streamer)
        assert tenant_rows(reshard_lab, "s1", 2) == 50  # copies: on both shards now
        with px.connect(autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as exc:
                conn.execute("select count(*) from counters")
            assert exc.value.sqlstate == "55000", exc.value
            assert 'pgshard: table "counters" has rows moving from shard s0 to s1' \
                in str(exc.value)
            # The session goes on; keyed statements run.
            conn.execute("update counters set n = n + 1 where tenant_id = 2 and k = 1")
            assert conn.execute("select n from counters where tenant_id = 2 and k = 1"
                                ).fetchone() == (1,)
        load = run_load(px, tmp_path, COUNTERS_LOAD, 4)
        time.sleep(1.5)
        out = ctl("cutover", px.config_path, new).stdout
        assert "cut over" in out, out
        done, _ = load_result(load, tmp_path)
        streamer.wait(30)
        ctl("cleanup", px.config_path, new)
    finally:
        stop(streamer)
    after = shard_sums(reshard_lab, "counters")
    assert sum(c for c, _ in after.values()) == sum(c for c, _ in before.values())
    assert sum(s for _, s in after.values()) == 1 + done
    assert tenant_rows(reshard_lab, "s0", 2) == 0
    assert tenant_rows(reshard_lab, "s1", 2) == 50
    # Once cleaned up, the fan-out runs again, and counts each row once.
    def fan_out():
        with px.connect(autocommit=True) as conn:
            return conn.execute("select count(*) from counters").fetchone() == (200,)
    wait_for(fan_out, 10, message="the fan-out allowed after cleanup")


def test_ddl_during_the_move_must_reach_the_target_before_cutover(reshard_lab, old_view,
                                                                  sharded_proxy, tables, tmp_path):
    """DDL through pgshard reaches the old map's shards only; the new shard
    would serve a table without the column. Cutover refuses until the target
    has the same columns, then the rows written with the column move too."""
    px, new, streamer = tenant_move_streaming(sharded_proxy, reshard_lab, old_view, tmp_path)
    try:
        with px.connect(autocommit=True) as conn:
            conn.execute("alter table counters add column extra int")
        proc = ctl("cutover", px.config_path, new, check=False)
        assert proc.returncode == 1, proc.stdout
        assert "table counters has other columns on s2 than on s0" in proc.stdout, proc.stdout
        with reshard_lab.connect_primary("s2") as conn:
            conn.execute("alter table counters add column extra int")
        with px.connect(autocommit=True) as conn:
            conn.execute("update counters set extra = 7 where tenant_id = 1 and k = 3")
        out = ctl("cutover", px.config_path, new).stdout
        assert "cut over" in out, out
        streamer.wait(30)
        ctl("cleanup", px.config_path, new)
    finally:
        stop(streamer)
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select extra from counters where tenant_id = 1 and k = 3"
                            ).fetchone() == (7,)
    assert tenant_rows(reshard_lab, "s2", 1) == 50
    assert tenant_rows(reshard_lab, "s0", 1) == 0


def test_a_target_changed_behind_the_move_stops_it(reshard_lab, old_view, sharded_proxy, tables,
                                                   tmp_path):
    """An update the stream carries that finds no row on the target (someone
    changed the target directly) stops the streamer with the reason, and
    nothing of that batch is applied (fail closed); after abort the source
    still has every row."""
    px, new, streamer = tenant_move_streaming(sharded_proxy, reshard_lab, old_view, tmp_path)
    try:
        with reshard_lab.connect_primary("s2") as conn:
            conn.execute("delete from counters where tenant_id = 1 and k = 7")
        with px.connect(autocommit=True) as conn:
            with conn.transaction():
                conn.execute("update counters set n = 11 where tenant_id = 1 and k = 6")
                conn.execute("update counters set n = 12 where tenant_id = 1 and k = 7")
        wait_for(lambda: "UPDATE on s2 found no row" in ctl("status", px.config_path, new).stdout,
                 30, message="the error in status")
        with reshard_lab.connect_primary("s2") as conn:
            assert conn.execute("select n from counters where tenant_id = 1 and k = 6"
                                ).fetchone() == (0,)  # the batch rolled back
        ctl("abort", px.config_path, new)
        assert streamer.wait(30) == 1
    finally:
        stop(streamer)
    assert replication_objects(reshard_lab) == []
    with reshard_lab.connect_primary("s0") as conn:
        assert conn.execute("select count(*), sum(n) from counters where tenant_id = 1"
                            ).fetchone() == (50, 23)


def test_sequences_follow_the_moved_rows(reshard_lab, old_view, sharded_proxy, tables, tmp_path):
    """Ids from a shard's own sequence (bigserial) move with their rows; the
    target's sequence is set past them at cutover, so the moved tenant's next
    inserts on its new shard do not collide."""
    px = sharded_proxy(lab=old_view, extra_ini=TENANTS_OLD)
    with px.connect(autocommit=True) as conn:
        for i in range(30):
            conn.execute("insert into orders (tenant_id, item) values (1, %s)", (f"i{i}",))
            conn.execute("insert into orders (tenant_id, item) values (2, %s)", (f"j{i}",))
    with reshard_lab.connect_primary("s0") as conn:
        last = conn.execute("select last_value from orders_id_seq").fetchone()[0]
    assert last == 60
    new = new_config(px, reshard_lab, TENANTS_OLD, TENANTS_NEW, tmp_path / "new.ini", slots=True)
    with open(tmp_path / "start.log", "w") as log:
        streamer = start_streamer(px.config_path, new, log)
    try:
        wait_streaming(reshard_lab, ["s2"], streamer)
        with px.connect(autocommit=True) as conn:  # still on s0: its sequence goes on
            conn.execute("insert into orders (tenant_id, item) values (1, 'during')")
        ctl("cutover", px.config_path, new)
        streamer.wait(30)
        ctl("cleanup", px.config_path, new)
    finally:
        stop(streamer)
    with reshard_lab.connect_primary("s2") as conn:
        assert conn.execute("select count(*), max(id) from orders where tenant_id = 1"
                            ).fetchone() == (31, 61)
        assert conn.execute("select last_value from orders_id_seq").fetchone()[0] >= 61
    with px.connect(autocommit=True) as conn:
        for i in range(5):  # on s2 now, with ids after the moved ones
            conn.execute("insert into orders (tenant_id, item) values (1, %s)", (f"after{i}",))
        assert conn.execute("select count(*), count(distinct id) from orders where tenant_id = 1"
                            ).fetchone() == (36, 36)
