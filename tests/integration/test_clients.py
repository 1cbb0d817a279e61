"""Real client programs through pgshard: psql and pgbench."""
import os
import re
import subprocess

import pytest


def run(cmd, env_extra=None, timeout=120, input_text=None):
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    env.pop("PGSERVICE", None)
    env.update(env_extra or {})
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, env=env, input=input_text)


def test_psql_select_1(proxy):
    px = proxy()
    url = f"host=127.0.0.1 port={px.port} dbname=app user=app password=secret"
    res = run(["psql", "-X", url, "-c", "select 1"])
    assert res.returncode == 0, res.stderr
    lines = [line.strip() for line in res.stdout.splitlines()]
    assert lines[0] == "?column?"
    assert "1" in lines
    assert "(1 row)" in lines
    # Unaligned, tuples only: exactly the value.
    res = run(["psql", "-X", "-At", url, "-c", "select 40 + 2, 'x' || 'y'"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == "42|xy\n"
    # One Query message holding several statements: every result comes back.
    res = run(["psql", "-X", "-At", url, "-c", "select 1 as a; select 2 as b; select 3 as c"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == "1\n2\n3\n"


def test_psql_script_file(proxy, tmp_path, primary):
    px = proxy()
    script = tmp_path / "script.sql"
    script.write_text("""\
\\set ON_ERROR_STOP 1
drop table if exists it_psql;
create table it_psql (id int primary key, name text);
insert into it_psql values (1, 'one'), (2, 'two'), (3, 'three');
begin;
update it_psql set name = upper(name) where id >= 2;
commit;
select id, name from it_psql order by id;
select 'a' as x; select 'b' as y;
select count(*), sum(id) from it_psql;
""")
    url = f"host=127.0.0.1 port={px.port} dbname=app user=app password=secret"
    res = run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-f", str(script)])
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out == ["1|one", "2|TWO", "3|THREE", "a", "b", "3|6"], res.stdout
    # The writes reached the primary.
    assert primary.execute("select string_agg(name, ',' order by id) from it_psql"
                           ).fetchone()[0] == "one,TWO,THREE"
    primary.execute("drop table it_psql")


def test_psql_error_reported(proxy):
    px = proxy()
    url = f"host=127.0.0.1 port={px.port} dbname=app user=app password=secret"
    res = run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=0", url,
               "-c", "select 1/0", "-c", "select 'still here'"])
    assert "division by zero" in res.stderr
    assert "still here" in res.stdout


@pytest.fixture(scope="module")
def pgbench_tables(lab):
    """pgbench -i -s 1 directly on the primary, once for the module."""
    res = run(["pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", str(lab.primary_port),
               "-U", "postgres", "app"], timeout=300)
    assert res.returncode == 0, res.stderr
    return True


def parse_pgbench(output):
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    return (int(processed.group(1)) if processed else None,
            int(processed.group(2)) if processed else None,
            int(failed.group(1)) if failed else None)


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench(proxy, pgbench_tables, mode):
    # pool_size 4 for 10 clients: servers are shared, so named statements
    # (-M prepared) must be prepared again on whichever server a client gets.
    # One thread per client (-j 10): pgbench 15 prepares with a synchronous
    # PQprepare, which, with several clients per thread, blocks the clients
    # holding servers behind one that waits for a server: a deadlock on any
    # transaction pool smaller than the client count (PgBouncer too).
    px = proxy(pool_size=4)
    res = run(["pgbench", "-n", "-M", mode, "-c", "10", "-j", "10", "-t", "100",
               "-h", "127.0.0.1", "-p", str(px.port), "-U", "app", "app"],
              env_extra={"PGPASSWORD": "secret"}, timeout=120)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    processed, expected, failed = parse_pgbench(output)
    assert (processed, expected) == (1000, 1000), output
    assert failed in (0, None), output
    assert "error" not in res.stderr.lower(), res.stderr
    px.assert_alive()
