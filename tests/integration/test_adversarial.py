"""Fail closed: nothing reaches a shard unless the router placed it.

Each test plays an attacker or a legacy application against the two-shard
lab (`shard_lab`: s0/eu, s1/us) and checks the outcome on the shards
themselves, over direct connections: a row is on exactly the shard
`pgshardctl route` names, or the statement was refused (SQLSTATE and a
message starting "pgshard:") and no shard has it. After every refusal the
session must still answer.
"""
import struct
import subprocess
import time

import psycopg
import pytest

import pgwire
from conftest import PGSHARDCTL
from test_sharding import MAP, TABLES, assert_refused, assert_usable, route_one

USERS = "id bigint primary key, v text not null"


@pytest.fixture
def lab2(shard_lab):
    """Sharded tables users (hash) and invoices (tenant), empty, and a
    function and a procedure that insert into users, on both shards."""
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            for table, (_, _, body) in TABLES.items():
                conn.execute(f"drop table if exists {table}")
                conn.execute(f"create table {table} ({body})")
            conn.execute("create or replace function add_user(k bigint) returns bigint "
                         "language sql as $$ insert into users values (k, 'by f') returning id $$")
            conn.execute("create or replace procedure add_user_p(k bigint) language sql "
                         "as $$ insert into users values (k, 'by p') $$")
            conn.execute("drop table if exists notes")
            conn.execute("create table notes (id int primary key, v text)")
    return shard_lab


@pytest.fixture
def px(sharded_proxy):
    return sharded_proxy(extra_ini=MAP)


def where(lab, table, column, value):
    """The shards holding a row of TABLE with COLUMN = VALUE."""
    found = []
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            n = conn.execute(f"select count(*) from {table} where {column} = %s",
                             (value,)).fetchone()[0]
            found += [shard.name] * n
    return found


def assert_nowhere(lab, table, column, value):
    assert where(lab, table, column, value) == [], f"{table}.{column} = {value} was written"


def assert_placed(lab, config, table, key, column="id"):
    expected = route_one(config, table, key)
    assert where(lab, table, column, key) == [expected]


def refused(conn, sql, sqlstate, params=None):
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(sql, params)
    message = assert_refused(exc, sqlstate)
    if not conn.autocommit:
        conn.rollback()
    assert_usable(conn)
    return message


def key_on(config, shard, table="users", start=1):
    for k in range(start, start + 1000):
        if route_one(config, table, k) == shard:
            return k
    raise AssertionError(f"no key of {table} on {shard}")


# ---------------------------------------------------------- quoting and lexing

def test_standard_conforming_strings_off_is_refused(lab2, px):
    """With the setting off, 'it\\'s' is one string to the server and
    something else to a lexer that assumes on: pgshard refuses the setting
    rather than read the statement another way than the server."""
    k = key_on(px.config_path, "s1")
    with px.connect(autocommit=True) as conn:
        refused(conn, "set standard_conforming_strings = off", "0A000")
        refused(conn, "select set_config('standard_conforming_strings', 'off', false)", "0A000")
        refused(conn, "do $$ begin perform set_config('standard_conforming_strings', 'off', "
                      "false); end $$", "0A000")
        refused(conn, "select set_config('standard_conforming_strings', 'off', true)", "0A000")
        refused(conn, "set local standard_conforming_strings = off", "0A000")
        # Pipelined after it in one string: refused before anything runs.
        refused(conn, "begin; set local standard_conforming_strings = off; "
                      f"insert into users (id, v) values ({k}, 'x'); commit", "0A000")
        assert conn.execute("show standard_conforming_strings").fetchone()[0] == "on"
        conn.execute("set standard_conforming_strings = on")  # allowed
    # At startup: every routed statement is refused until it is set on.
    with px.connect(autocommit=True, options="-c standard_conforming_strings=off") as conn:
        for sql in (f"insert into users (id, v) values ({k}, 'it\\'s')", "select 1"):
            with pytest.raises(psycopg.Error) as exc:
                conn.execute(sql)
            assert_refused(exc, "0A000")
        assert_nowhere(lab2, "users", "id", k)
        conn.execute("set standard_conforming_strings = on")
        conn.execute(f"insert into users (id, v) values ({k}, 'it''s')")
    assert_placed(lab2, px.config_path, "users", k)


def test_scs_off_tenant_injection_refused(lab2, px):
    """The tenant check and the server must read the same statement."""
    with lab2.connect_primary(route_one(px.config_path, "invoices", 8)) as conn:
        conn.execute("insert into invoices values (8, 1, 'tenant 8 secret')")
    sql = ("select v from invoices where tenant_id = 42 and v = '\\' and v = ' "
           "or tenant_id = 8 --'")
    with px.connect(autocommit=True, options="-c pgshard.tenant=42 "
                                             "-c standard_conforming_strings=off") as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(sql)
        assert_refused(exc, "0A000")
    with px.connect(autocommit=True, options="-c pgshard.tenant=42") as conn:
        # With the setting on the text is one harmless string comparison.
        assert conn.execute(sql).fetchall() == []
        refused(conn, "set standard_conforming_strings to off", "0A000")


LITERALS = [
    ("'plain'", "plain"),
    ("'it''s'", "it's"),
    ("E'back\\\\slash \\' q'", "back\\slash ' q"),
    ("U&'d\\0061t\\+000061'", "data"),
    ("$$dollar ' quoted$$", "dollar ' quoted"),
    ("$tag$ $$ nested $tag$", " $$ nested "),
    ("'/* pgshard: shard=s0 */'", "/* pgshard: shard=s0 */"),
    ("'-- not a comment'", "-- not a comment"),
    ("'a' /* c1 /* nested */ c2 */ || 'b'", "ab"),
    ("'x' -- trailing comment\n", "x"),
    ("'semi; colon'", "semi; colon"),
]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_quoting_styles_place_exactly(lab2, px, protocol):
    """Every quoting style, hints and comments inside literals: each row on
    exactly its key's shard, its value as written (simple protocol, and
    extended with the same text as a Parse)."""
    base = 100 if protocol == "simple" else 200
    keys = list(range(base, base + len(LITERALS)))
    with px.connect(autocommit=True) as conn:
        for k, (literal, _) in zip(keys, LITERALS):
            sql = f"insert into users (id, v) values ({k}, {literal})"
            if protocol == "simple":
                conn.execute(sql)
            else:
                conn.execute(sql.replace("%", "%%"), ())  # params: psycopg sends Parse/Bind
        for k, (_, value) in zip(keys, LITERALS):
            assert_placed(lab2, px.config_path, "users", k)
            assert conn.execute("select v from users where id = %s", (k,)).fetchone()[0] == value
        if protocol == "simple":
            # Several statements in one string, both keys on s1.
            a = key_on(px.config_path, "s1", start=400)
            b = key_on(px.config_path, "s1", start=a + 1)
            conn.execute(f"insert into users (id, v) values ({a}, 'one; two');"
                         f" /* ; */ insert into users (id, v) values ({b}, $x$;$x$)")
            assert where(lab2, "users", "id", a) == ["s1"]
            assert where(lab2, "users", "id", b) == ["s1"]


@pytest.mark.parametrize("sql,sqlstate", [
    ("selec 1", "42601"),
    ("insert into users (id, v) values (1, 'unterminated", "42601"),
    ("select 1 /* unterminated comment", "42601"),
])
def test_unreadable_is_refused_not_forwarded(lab2, px, sql, sqlstate):
    with px.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(sql)
        if sqlstate:
            assert exc.value.sqlstate == sqlstate
            assert exc.value.diag.message_primary.startswith("pgshard:")
        assert_usable(conn)
    assert_nowhere(lab2, "users", "id", 1)


# ---------------------------------------------------------- statement names

def bind(stmt, portal="", params=()):
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!h", 0)
    body += struct.pack("!h", len(params))
    for p in params:
        data = str(p).encode()
        body += struct.pack("!i", len(data)) + data
    body += struct.pack("!h", 0)
    return pgwire.message("B", body)


def parse(stmt, sql):
    return pgwire.message("P", stmt.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def execute(portal=""):
    return pgwire.message("E", portal.encode() + b"\0" + struct.pack("!i", 0))


def sync():
    return pgwire.message("S")


def read_until_ready(conn):
    """Messages up to ReadyForQuery: (types, first error fields or None)."""
    types, error = [], None
    while True:
        kind, payload = conn.read_message()
        types.append(kind)
        if kind == "E" and error is None:
            error = pgwire.parse_error_fields(payload)
        if kind == "Z":
            return types, error


@pytest.mark.parametrize("shards", [1, 2])
def test_bind_of_a_statement_never_prepared(lab2, sharded_proxy, lab, shards):
    """Client B names client A's statement (its own name, and the server's
    pgs_ name from pg_prepared_statements): 26000 from pgshard, nothing
    runs, in routing mode (2 shards) and as a plain pooler (1 shard)."""
    if shards == 2:
        px = sharded_proxy(extra_ini=MAP, pool_size=1, workers=1)
        the_lab = lab2
    else:
        px = sharded_proxy(lab=lab, pool_size=1, workers=1)
        the_lab = lab
        with lab.connect_primary() as conn:
            conn.execute("drop table if exists users")
            conn.execute(f"create table users ({USERS})")
    k = 7001
    with pgwire.RawConn(px.port) as a:
        a.login()
        a.send(parse("ins", "insert into users (id, v) values ($1, 'by A')") + sync())
        assert read_until_ready(a)[1] is None
        with pgwire.RawConn(px.port) as b:
            b.login()
            names = [r[0] for r in b.simple_query("select name from pg_prepared_statements")]
            if shards == 1:
                assert names, "B's server should be the one A prepared on (pool_size = 1)"
            for name in ["ins", ""] + names:
                b.send(bind(name, params=(k,)) + execute() + sync())
                types, error = read_until_ready(b)
                assert error is not None and error["C"] == "26000", (name, types, error)
                assert error["M"].startswith("pgshard:")
            for name in names + ["pgs_0123456789abcdef"]:
                with pytest.raises(pgwire.ServerError) as exc:
                    b.simple_query(f"execute {name}({k})")
                assert exc.value.sqlstate == "26000"
                with pytest.raises(pgwire.ServerError) as exc:
                    b.simple_query(f"deallocate {name}")
                assert exc.value.sqlstate == "26000"
            with pytest.raises(pgwire.ServerError) as exc:
                b.simple_query("prepare pgs_mine as select 1")
            assert exc.value.sqlstate == "42939"
            assert b.simple_query("select 1") == [["1"]]
        # A's own statement still works.
        a.send(bind("ins", params=(k + 1,)) + execute() + sync())
        assert read_until_ready(a)[1] is None
    if shards == 2:
        assert_nowhere(the_lab, "users", "id", k)
        assert_placed(the_lab, px.config_path, "users", k + 1)
    else:
        with the_lab.connect_primary() as conn:
            assert conn.execute("select count(*) from users where id = %s", (k,)).fetchone()[0] == 0
            assert conn.execute("select v from users where id = %s", (k + 1,)).fetchone()[0] \
                == "by A"


@pytest.mark.parametrize("shards", [1, 2])
def test_unknown_portal_and_malformed_messages(lab2, sharded_proxy, lab, shards):
    px = sharded_proxy(extra_ini=MAP) if shards == 2 else sharded_proxy(lab=lab)
    with pgwire.RawConn(px.port) as c:
        c.login()
        c.send(execute("nope") + sync())
        types, error = read_until_ready(c)
        assert error["C"] == "34000"
        assert error["M"].startswith("pgshard:") or shards == 1  # one shard: the server's
        # A Close whose name has no terminator: a protocol error, no crash.
        c.send(pgwire.message("C", b"Sabc"))  # alone: its end is the end of what was read
        time.sleep(0.2)
        c.send(sync())
        types, error = read_until_ready(c)
        assert error["C"] == "08P01"
        c.send(pgwire.message("D", b"Sxyz\0") + sync())
        types, error = read_until_ready(c)
        assert error["C"] == "26000"
        assert c.simple_query("select 2") == [["2"]]


def bind_body(stmt, formats, values, results=(), tail=b""):
    """A Bind of the unnamed portal, written field by field: VALUES are
    bytes, None (NULL) or an int (a length with no value after it)."""
    body = b"\0" + stmt.encode() + b"\0" + struct.pack("!H", len(formats))
    body += b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!H", len(values))
    for v in values:
        if v is None:
            body += struct.pack("!i", -1)
        elif isinstance(v, int):
            body += struct.pack("!i", v)
        else:
            body += struct.pack("!i", len(v)) + v
    body += struct.pack("!H", len(results)) + b"".join(struct.pack("!h", f) for f in results)
    return pgwire.message("B", body + tail)


@pytest.mark.parametrize("shards", [1, 2])
def test_malformed_extended_messages(lab2, sharded_proxy, lab, shards):
    """Parse, Bind, Describe and Execute that break the protocol's framing:
    08P01 and the session goes on. Routing (2 shards), pgshard reads each
    message whole and says so itself; as a plain pooler (1 shard) it reads
    the names it maps and leaves the rest for the server to judge, whose
    words reach the client."""
    px = sharded_proxy(extra_ini=MAP) if shards == 2 else sharded_proxy(lab=lab)
    three = "select $1::int + $2::int + $3::int"
    one_oid = struct.pack("!hi", 2, 23)  # two types declared, one sent
    cases = [
        # (messages, pgshard's message when routing, the server's otherwise)
        (pgwire.message("P", b"\0" + three.encode() + b"\0" + one_oid),
         "invalid Parse message", "insufficient data left in message"),
        (pgwire.message("P", b"\0select 1\0" + struct.pack("!h", 0) + b"x"),
         "invalid Parse message", "invalid message format"),
        (bind_body("s", [0, 0], [b"1", b"2", b"3"]),
         "invalid Bind message", "bind message has 2 parameter formats but 3 parameters"),
        (bind_body("s", [], [b"1", -2, b"3"]),
         "invalid Bind message", "insufficient data left in message"),
        (bind_body("s", [], [b"1", b"2", b"3"], tail=b"\0"),
         "invalid Bind message", "invalid message format"),
        (bind_body("s", [], [b"1", b"2", 1000]),
         "invalid Bind message", "insufficient data left in message"),
        (pgwire.message("E", b"\0" + b"\0\0\0"),
         "invalid Execute message", "insufficient data left in message"),
        # Describe and Close are read in both modes: pgshard maps the name.
        (pgwire.message("D", b"Xs\0"), "invalid Describe message", None),
        (pgwire.message("D", b"Ss\0t\0"), "invalid Describe message", None),
        (pgwire.message("C", b"S"), "invalid Close message", None),
    ]
    with pgwire.RawConn(px.port) as c:
        c.login()
        c.send(parse("s", three) + sync())
        assert read_until_ready(c)[1] is None
        for messages, ours, servers in cases:
            c.send(messages + sync())
            types, error = read_until_ready(c)
            assert error is not None and error["C"] == "08P01", (messages, types, error)
            if shards == 2 or servers is None:
                assert error["M"] == "pgshard: " + ours, (messages, error)
            else:
                assert error["M"] == servers, (messages, error)
            # Well-formed, the same statement binds and runs.
            c.send(bind_body("s", [], [b"1", b"2", b"3"]) + execute() + sync())
            types, error = read_until_ready(c)
            assert error is None and "D" in types, (messages, types, error)
        # Counts are unsigned, as PostgreSQL reads them: 0x8000 NULL values
        # frame well, and the statement's own count is what refuses them.
        c.send(bind_body("s", [], [None] * 0x8000) + execute() + sync())
        types, error = read_until_ready(c)
        assert error is not None and error["C"] == "08P01", (types, error)
        assert "supplies 32768 parameters" in error["M"], error
        assert c.simple_query("select 2") == [["2"]]


def test_function_call_message_refused(lab2, px):
    with pgwire.RawConn(px.port) as c:
        c.login()
        oid = int(c.simple_query("select 'add_user'::regproc::oid")[0][0])
        arg = b"7002"
        body = struct.pack("!ih", oid, 0) + struct.pack("!h", 1) + struct.pack("!i", len(arg))
        body += arg + struct.pack("!h", 0)
        c.send(pgwire.message("F", body))
        types, error = read_until_ready(c)
        assert error["C"] == "0A000" and error["M"].startswith("pgshard:")
        assert c.simple_query("select 3") == [["3"]]
    assert_nowhere(lab2, "users", "id", 7002)


# ---------------------------------------------------------- writes by code

def test_code_that_writes_obeys_cross_shard_writes(lab2, px):
    k = key_on(px.config_path, "s1", start=7100)
    with px.connect(autocommit=True) as conn:
        refused(conn, f"select add_user({k})", "0A000")
        refused(conn, f"call add_user_p({k})", "0A000")
        refused(conn, f"do $$ begin insert into users values ({k}, 'do'); end $$", "0A000")
        assert_nowhere(lab2, "users", "id", k)
        # With a hint it runs on that shard only.
        conn.execute(f"/* pgshard: shard=s1 */ select add_user({k})")
        assert where(lab2, "users", "id", k) == ["s1"]
    with px.connect(autocommit=True, options="-c pgshard.tenant=42") as conn:
        conn.execute(f"call add_user_p({k + 100000})")
    assert where(lab2, "users", "id", k + 100000) == [route_one(px.config_path, "invoices", 42)]


def test_code_runs_everywhere_under_allow(lab2, sharded_proxy):
    px = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    with px.connect(autocommit=True) as conn:
        conn.execute("do $$ begin insert into notes values (1, 'everywhere'); end $$")
    assert where(lab2, "notes", "id", 1) == ["s0", "s1"]


# ---------------------------------------------------------- transactions

def test_client_two_phase_commit_refused(lab2, px):
    k = key_on(px.config_path, "s0", start=7200)
    with px.connect() as conn:
        conn.execute(f"insert into users (id, v) values ({k}, 'tx')")
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("prepare transaction 'mine'")
        assert_refused(exc, "0A000")
        conn.rollback()
        for sql in ("commit prepared 'mine'", "rollback prepared 'mine'"):
            with pytest.raises(psycopg.Error) as exc:
                conn.execute(sql)
            assert_refused(exc, "0A000")
            conn.rollback()
    assert_nowhere(lab2, "users", "id", k)
    for shard in lab2.shards:
        with lab2.connect_primary(shard.name) as conn:
            assert conn.execute("select count(*) from pg_prepared_xacts where gid = 'mine'"
                                ).fetchone()[0] == 0


def test_copy_of_a_write_is_a_write_on_one_shard(lab2, px):
    k = key_on(px.config_path, "s1", start=7300)
    with lab2.connect_primary("s1") as conn:
        conn.execute("insert into users values (%s, 'old')", (k,))
    with px.connect(autocommit=True) as conn:
        with conn.cursor().copy(f"copy (update users set v = 'new' where id = {k} "
                                f"returning id) to stdout") as copy:
            rows = [bytes(r) for r in copy]
        assert b"".join(rows).strip() == str(k).encode()
        refused(conn, "copy (update users set v = 'all' returning id) to stdout", "0A000")
    assert where(lab2, "users", "v", "new") == ["s1"]
    assert_nowhere(lab2, "users", "v", "all")


# ---------------------------------------------------------- COPY and tenants

def test_copy_under_hint_goes_through_the_splitter(lab2, px):
    a = key_on(px.config_path, "s0", start=7400)
    b = key_on(px.config_path, "s1", start=7400)
    with px.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as exc:
            with conn.cursor().copy("/* pgshard: shard=s0 */ copy users (id, v) from stdin") as cp:
                cp.write(f"{a}\tmine\n{b}\tnot mine\n")
        assert exc.value.diag.message_primary.startswith("pgshard:")
        assert_usable(conn)
        with conn.cursor().copy("/* pgshard: shard=s0 */ copy users (id, v) from stdin") as cp:
            cp.write(f"{a}\tmine\n")
    assert_nowhere(lab2, "users", "id", b)
    assert where(lab2, "users", "id", a) == ["s0"]


def test_tenant_cannot_copy_or_switch_to_another_tenant(lab2, px):
    with px.connect(autocommit=True, options="-c pgshard.tenant=42") as conn:
        with pytest.raises(psycopg.Error) as exc:
            with conn.cursor().copy("copy invoices (tenant_id, id, v) from stdin") as cp:
                cp.write("42\t1\tmine\n8\t1\tnot mine\n")
        assert exc.value.sqlstate == "42501"
        assert_usable(conn)
        refused(conn, "set pgshard.tenant = '8'", "42501")
        # A continued string libpg_query does not join: never taken as a
        # setting pgshard did not apply.
        refused(conn, "set pgshard.tenant = '4' -- c\n'3'", "42601")
        refused(conn, "reset pgshard.tenant", "42501")
        refused(conn, "select * from invoices where tenant_id = 8", "42501")
        with conn.cursor().copy("copy invoices (tenant_id, id, v) from stdin") as cp:
            cp.write("42\t2\tmine\n")
    assert_nowhere(lab2, "invoices", "tenant_id", 8)
    assert where(lab2, "invoices", "id", 2) == [route_one(px.config_path, "invoices", 42)]


# ---------------------------------------------------------- the map

def test_map_names_fold_like_identifiers(lab2, sharded_proxy, tmp_path):
    mixed = MAP.replace("[table.app.users]\ncolumn = id", "[table.app.Users]\ncolumn = ID")
    px = sharded_proxy(extra_ini=mixed)
    k = key_on(px.config_path, "s1", start=7500)
    with px.connect(autocommit=True) as conn:
        conn.execute(f"insert into USERS (Id, v) values ({k}, 'folded')")
        # Keyless, the table is known as sharded: merged, not read on one shard.
        assert conn.execute("select count(*) from Users").fetchone()[0] == 1
    assert_placed(lab2, px.config_path, "users", k)
    out = subprocess.run([str(PGSHARDCTL), "check", str(px.config_path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning: [table.app.Users]: table name folded to users" in out.stdout


def test_servers_with_strings_off_by_default_are_set_on(lab2, px):
    """A role default of standard_conforming_strings = off (any user may set
    it on its own role) reaches servers that log in later: pgshard sets it
    on there for a routing client that was told "on", so the tenant check
    and the server read the same statement."""
    with lab2.connect_primary(route_one(px.config_path, "invoices", 8)) as conn:
        conn.execute("insert into invoices values (8, 1, 'tenant 8 secret')")
    sql = ("select v from invoices where tenant_id = 42 and v = '\\' and v = ' "
           "or tenant_id = 8 --'")
    with px.connect(autocommit=True, options="-c pgshard.tenant=42") as conn:
        assert conn.execute(sql).fetchall() == []  # the pool's servers log in now
        try:
            for shard in lab2.shards:
                with lab2.connect_primary(shard.name) as direct:
                    direct.execute("alter role postgres set standard_conforming_strings = off")
                    # Servers logged in since then start with it off.
                    direct.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                                   "where datname = 'app' and pid <> pg_backend_pid() "
                                   "and backend_type = 'client backend'")
            # The pool sees its idle servers close and logs in new ones.
            time.sleep(1)
            assert conn.execute(sql).fetchall() == []
            assert conn.execute("show standard_conforming_strings").fetchone()[0] == "on"
            # RESET and DISCARD return to the value the server logged in with.
            for reset in ("reset standard_conforming_strings", "reset all", "discard all"):
                conn.execute(reset)
                assert conn.execute(sql).fetchall() == []
                assert conn.execute("show standard_conforming_strings").fetchone()[0] == "on"
        finally:
            for shard in lab2.shards:
                with lab2.connect_primary(shard.name) as direct:
                    direct.execute("alter role postgres reset standard_conforming_strings")


@pytest.mark.parametrize("shards", [1, 2])
def test_messages_sent_after_an_error_reached_the_server(lab2, sharded_proxy, lab, shards):
    """A pipelining client keeps sending after a statement failed; the
    server skips those messages up to the Sync and owes no reply for them:
    one ReadyForQuery, and the session goes on (psycopg's pipeline mode hit
    "unexpected ReadyForQuery" here when the error came back first)."""
    px = sharded_proxy(extra_ini=MAP) if shards == 2 else sharded_proxy(lab=lab)
    with pgwire.RawConn(px.port) as c:
        c.login()
        c.send(parse("", "select 1/0") + bind("") + execute())
        c.send(pgwire.message("H"))  # Flush: the error comes back now
        kinds = []
        while "E" not in kinds:
            kinds.append(c.read_message()[0])
        c.send(parse("", "select 2") + bind("") + execute() + parse("x", "select 3") + sync())
        types, error = read_until_ready(c)
        assert types == ["Z"], types  # nothing for the skipped messages, one ReadyForQuery
        assert c.simple_query("select 4") == [["4"]]
        c.send(parse("", "select 5") + bind("") + execute() + sync())
        types, error = read_until_ready(c)
        assert error is None and types[-1] == "Z" and "D" in types


def test_tenant_isolation_strict(lab2, sharded_proxy):
    """tenant_isolation = strict: a tenant session sees and changes only rows
    it names with its own tenant; by default (shard) a keyless statement
    runs on the tenant's shard and sees every tenant there."""
    px = sharded_proxy(extra_ini=MAP, tenant_isolation="strict")
    shard42 = route_one(px.config_path, "invoices", 42)
    # A tenant sharing tenant 42's shard.
    neighbour = next(t for t in range(1, 2000)
                     if t != 42 and route_one(px.config_path, "invoices", t) == shard42)
    with lab2.connect_primary(shard42) as conn:
        conn.execute("insert into invoices values (%s, 1, 'neighbour')", (neighbour,))
        conn.execute("insert into invoices values (42, 1, 'mine')")
    with px.connect(autocommit=True, options="-c pgshard.tenant=42") as conn:
        for sql in ("select v from invoices", "select v from invoices where v <> 'x'",
                    "update invoices set v = 'gone'", "delete from invoices",
                    "truncate invoices", "select v from invoices where tenant_id = 42 or true",
                    f"select add_user({neighbour})"):
            refused(conn, sql, "42501")
        assert conn.execute("select v from invoices where tenant_id = 42").fetchall() == [
            ("mine",)]
        conn.execute("update invoices set v = 'mine too' where tenant_id = 42")
    with lab2.connect_primary(shard42) as conn:
        assert conn.execute("select tenant_id, v from invoices order by tenant_id").fetchall() \
            == sorted([(42, "mine too"), (neighbour, "neighbour")])
    # Without strict, the documented default: the tenant's shard, every tenant on it.
    px_default = sharded_proxy(extra_ini=MAP)
    with px_default.connect(autocommit=True, options="-c pgshard.tenant=42") as conn:
        assert len(conn.execute("select v from invoices").fetchall()) == 2


def test_role_never_shows_through_on_any_shard(lab2, sharded_proxy):
    """SET ROLE in a routing session reaches every shard the session uses;
    the next client of those servers is back to the login role on each."""
    for shard in lab2.shards:
        with lab2.connect_primary(shard.name) as conn:
            conn.execute("do $$ begin if not exists (select from pg_roles where rolname = "
                         "'adv_alice') then create role adv_alice; end if; end $$")
    px = sharded_proxy(extra_ini=MAP, pool_size=1, workers=1)

    def who(conn, shard):
        return conn.execute(f"/* pgshard: shard={shard} */ select current_user").fetchone()[0]

    with px.connect(autocommit=True) as a:
        a.execute("set role adv_alice")
        assert who(a, "s0") == "adv_alice"
        assert who(a, "s1") == "adv_alice"  # replayed on the second shard's server
    with px.connect(autocommit=True) as b:
        assert who(b, "s0") == "postgres"
        assert who(b, "s1") == "postgres"
        b.execute("begin")
        b.execute("set local role adv_alice")
        assert who(b, "s0") == "adv_alice"
        b.execute("commit")
        assert who(b, "s0") == "postgres"
        assert who(b, "s1") == "postgres"


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_transaction_state_follows_to_later_shards(lab2, sharded_proxy, protocol):
    """SET LOCAL (a role, a timeout) and savepoints hold on every shard a
    transaction reaches, also those it reaches after them."""
    for shard in lab2.shards:
        with lab2.connect_primary(shard.name) as conn:
            conn.execute("do $$ begin if not exists (select from pg_roles where rolname = "
                         "'adv_alice') then create role adv_alice; end if; end $$")
            conn.execute("grant all on users to adv_alice")
    px = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    a, b = key_on(px.config_path, "s0", start=8000), key_on(px.config_path, "s1", start=8000)
    cursor_class = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with psycopg.connect(px.conninfo(), cursor_factory=cursor_class) as conn:
        conn.execute("set local role adv_alice")
        conn.execute("set local statement_timeout = 12345")
        for shard in ("s0", "s1"):
            row = conn.execute(f"/* pgshard: shard={shard} */ select current_user, "
                               "current_setting('statement_timeout')").fetchone()
            assert row == ("adv_alice", "12345ms"), (shard, row)
        conn.rollback()
        # A savepoint taken before the transaction reached s1.
        conn.execute(f"insert into users (id, v) values ({a}, 'kept')")
        conn.execute("savepoint sp")
        conn.execute(f"insert into users (id, v) values ({b}, 'undone')")
        conn.execute("rollback to savepoint sp")
        conn.commit()
    assert where(lab2, "users", "id", a) == ["s0"]
    assert_nowhere(lab2, "users", "id", b)


def test_failed_set_local_aborts_later_shards_too(lab2, sharded_proxy):
    """A SET LOCAL that failed aborted the transaction: a shard reached
    afterwards is aborted alike (25P02), not run outside it."""
    px = sharded_proxy(extra_ini=MAP)
    b = key_on(px.config_path, "s1", start=8100)
    with px.connect() as conn:
        conn.execute("/* pgshard: shard=s0 */ select 1")
        with pytest.raises(psycopg.Error):
            conn.execute("set local role no_such_role_anywhere")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute(f"insert into users (id, v) values ({b}, 'after a failure')")
        conn.rollback()
        assert_usable(conn)
    assert_nowhere(lab2, "users", "id", b)
