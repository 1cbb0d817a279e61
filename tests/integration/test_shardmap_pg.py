"""`hash = postgres` against real PostgreSQL partitioning, and key typing
against PostgreSQL's own input functions, on the lab primary.

For every key type, the keys go into a table PARTITION BY HASH (k) with
MODULUS 2 and with MODULUS 3; each row's tableoid names its partition, and
`pgshardctl route` under a config with `hash = postgres` and as many shards
must name shard s<r> for a row in partition REMAINDER r. Then the same
inputs that PostgreSQL reads (or refuses) are given to `pgshardctl route`:
what pgshard accepts must be the value the server stores, what the server
refuses pgshard must refuse with the same SQLSTATE, and what only pgshard
refuses must be one of the documented cases (clock words, named zones,
non-ISO date styles). Finally binary Bind parameters of the wrong size get
the SQLSTATEs pgs_key_from_binary gives.
"""
import random
import struct
import subprocess
import uuid
from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest

from conftest import PGSHARDCTL
import pgwire

KEYS_PER_TYPE = 240
SQL_TYPE = {"smallint": "smallint", "int": "integer", "bigint": "bigint", "text": "text",
            "uuid": "uuid", "date": "date", "timestamptz": "timestamptz"}


def make_keys(kind, rng):
    """KEYS_PER_TYPE distinct-ish text forms of valid keys, edges first."""
    if kind in ("smallint", "int", "bigint"):
        bits = {"smallint": 16, "int": 32, "bigint": 64}[kind]
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        keys = [str(v) for v in (0, 1, -1, 42, lo, hi, lo + 1, hi - 1)] + [" +7 ", "-0", "007"]
        while len(keys) < KEYS_PER_TYPE:
            keys.append(str(rng.randint(lo, hi) if rng.random() < 0.7 else rng.randint(-999, 999)))
        return keys
    if kind == "text":
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,;:=éüß€日本"
        keys = ["", "a", "DE", "hello world", "x" * 200, " padded "]
        while len(keys) < KEYS_PER_TYPE:
            keys.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))))
        return keys
    if kind == "uuid":
        keys = ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
                "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}", "a0eebc999c0b4ef8bb6d6bb9bd380a12"]
        while len(keys) < KEYS_PER_TYPE:
            keys.append(str(uuid.UUID(int=rng.getrandbits(128))))
        return keys
    if kind == "date":
        keys = ["2000-01-01", "1999-12-31", "infinity", "-infinity", "epoch", "0001-01-01 BC",
                "2024-02-29", "9999-12-31"]
        while len(keys) < KEYS_PER_TYPE:
            d = date(1, 1, 1) + timedelta(days=rng.randint(0, 3652058))
            keys.append(d.isoformat())
        return keys
    if kind == "timestamptz":
        keys = ["2000-01-01 00:00:00+00", "infinity", "-infinity", "epoch",
                "2024-06-15T12:30:00.5+02:00", "1999-12-31 23:59:59.999999Z",
                "2024-01-05 10:11:12.1234565+00"]
        zones = ["Z", "+00", "+02", "-05", "+05:30", "-09:30", " UTC", "+1245"]
        while len(keys) < KEYS_PER_TYPE:
            t = datetime(1, 1, 1, tzinfo=timezone.utc) + timedelta(
                microseconds=rng.randint(0, 315537897599999999))
            text = "%04d-%02d-%02d %02d:%02d:%02d" % (t.year, t.month, t.day, t.hour, t.minute,
                                                     t.second)
            if rng.random() < 0.5:
                text += ".%06d" % t.microsecond
            keys.append(text + rng.choice(zones))
        return keys
    raise ValueError(kind)


def write_config(path, nshards, port):
    lines = ["[pgshard]", "auth = trust", "[user.app]", "password = x",
             "[database.app]", "hash = postgres"]
    for s in range(nshards):
        lines += [f"[shard.app.s{s}]", f"primary = host=127.0.0.1 port={port} dbname=app"]
    for kind in SQL_TYPE:
        lines += [f"[table.app.sm_{kind}]", "column = k", f"type = {kind}", "strategy = hash"]
    path.write_text("\n".join(lines) + "\n")


def route_many(config, table, keys):
    proc = subprocess.run([str(PGSHARDCTL), "route", "--stdin", str(config), "app", table],
                          input="".join(k + "\n" for k in keys), capture_output=True, text=True,
                          timeout=60)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(keys), proc.stderr
    out = []
    for key, line in zip(keys, lines):
        assert line.startswith(key + "\t"), (key, line)
        out.append(line[len(key) + 1:])
    return out


@pytest.fixture(scope="module")
def partitioned(lab):
    """{(kind, modulus): (keys, [remainder per key])} from real partitioned tables."""
    rng = random.Random(15)
    result = {}
    with lab.connect_primary() as conn:
        conn.execute("set timezone = 'UTC'")
        for kind, sql_type in SQL_TYPE.items():
            keys = make_keys(kind, rng)
            for modulus in (2, 3):
                name = f"sm_{kind}_{modulus}"
                conn.execute(f"drop table if exists {name}")
                conn.execute(f"create table {name} (id int, k {sql_type}) partition by hash (k)")
                for r in range(modulus):
                    conn.execute(f"create table {name}_p{r} partition of {name} "
                                 f"for values with (modulus {modulus}, remainder {r})")
                with conn.cursor() as cur:
                    cur.executemany(f"insert into {name} values (%s, %s)", list(enumerate(keys)))
                rows = conn.execute(f"select id, tableoid::regclass::text from {name}").fetchall()
                remainder = {i: int(part.rsplit("_p", 1)[1]) for i, part in rows}
                assert len(remainder) == len(keys)
                result[(kind, modulus)] = (keys, [remainder[i] for i in range(len(keys))])
                conn.execute(f"drop table {name}")
    return result


@pytest.mark.parametrize("modulus", [2, 3])
@pytest.mark.parametrize("kind", list(SQL_TYPE))
def test_route_matches_partition(partitioned, lab, tmp_path, kind, modulus):
    keys, remainders = partitioned[(kind, modulus)]
    assert len(keys) >= 200
    config = tmp_path / "postgres-hash.ini"
    write_config(config, modulus, lab.primary_port)
    got = route_many(config, f"sm_{kind}", keys)
    wrong = [(k, g, f"s{r}") for k, g, r in zip(keys, got, remainders) if g != f"s{r}"]
    assert not wrong, f"{len(wrong)} of {len(keys)} keys routed elsewhere: {wrong[:10]}"
    # Every partition got keys, so the comparison says something.
    assert set(remainders) == set(range(modulus))
    # The one-key form says the same.
    for key, r in list(zip(keys, remainders))[:5]:
        proc = subprocess.run([str(PGSHARDCTL), "route", str(config), "app", f"sm_{kind}", "--",
                               key], capture_output=True, text=True, timeout=10)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"s{r}"


# ---- key typing against PostgreSQL's input functions ----

INPUTS = {
    "smallint": ["32767", "-32768", "32768", "-32769", " +5 ", "0x10", "1e3", "12 3", "", "-", "+",
                 "00000000000000000000042", "4.0", "99999999999999999999999abc", "\t-7\n"],
    "int": ["2147483647", "-2147483648", "2147483648", "1_000", "42", " 42 ", "abc"],
    "bigint": ["9223372036854775807", "-9223372036854775808", "9223372036854775808",
               "-9223372036854775809", "abc", "\t-7\t", "- 1", "--1"],
    "uuid": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
             "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11",
             "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
             "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
             "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-", "a0eebc999-c0b-4ef8-bb6d-6bb9bd380a11",
             "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
             "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11", "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", ""],
    "date": ["2024-01-05", "2024-1-5", " 2024-01-05 ", "10000-01-01", "2024-01-01 12:00",
             "2024-01-01 25:00", "2024-01-01T10:00Z", "0000-01-01", "2024-02-30", "2023-02-29",
             "2024-02-29", "5874897-12-31", "5874898-01-01", "0001-01-01 BC", "4714-11-24 BC",
             "4714-11-23 BC", "infinity", "-infinity", "+infinity", "epoch", "today",
             "Jan 8 1999", "1999/01/08", "20240105", "2024-01-05 BC", "2024-13-01",
             "2024-00-10", "", "2024-01-05 10:00:00+16", "2024-01-05 10:00:60",
             "2024-01-05 24:00:00", "2024-01-05 24:00:01", "2024-01-05x", "2024-01-05 z",
             "2024-01-05 10:00 +02:30"],
    "timestamptz": [
        "2024-01-05 10:11:12+02", "2024-01-05T10:11:12Z", "2024-01-05 10:11:12.123456+00",
        "2024-01-05 10:11:12.1234565+00", "2024-01-05 10:11:12.9999995Z",
        "2024-01-05 10:11:12 +0230", "2024-01-05 10:11:12-023015", "2024-01-05 10:11:12+2",
        "2024-01-05 10:11:12+15:59:59", "2024-01-05 10:11:12+16", "2024-01-05 10:11:12+15:60",
        "2024-01-05 24:00:00Z", "2024-01-05 23:59:60Z", "2024-01-05 1:02:03Z",
        "2024-01-05 10:11:12 UTC", "2024-01-05 10:11:12 gmt", "2024-01-05 10:11:12 z",
        "2024-01-05t10:11:12Z", "294276-12-31 23:59:59.999999+00", "294277-01-01 00:00:00+00",
        "294276-12-31 23:00:00-05", "4714-11-24 00:00:00+00 BC", "4714-11-23 23:59:59+00 BC",
        "infinity", "-infinity", "epoch", "now", "2024-01-05 10:11:12+02 BC",
        "2024-01-05 10:11:12.+00", "2024-01-05 10:1:12+00", "2024-01-05 10:11:1+00",
        "2024-01-05T 10:11Z", "2024-01-05  10:11Z", "2024-01-05 10:11:12+0",
        "2024-01-05 10:11:12+001", "2024-01-05 10:11:12 CET", "2024-01-05 10:11:12Z ",
        "2024-01-05 z", "2024-01-05 10:11:12+02:5", "2024-01-05 10:11:12 Europe/Berlin",
        "2024-01-05 10:11:12zz", "2024-01-05 10:11:12 bc x", "2024-01-05 10:11:12+02:30:15",
        "2024-01-05T",
        # No zone: pgshard reads UTC, as the server does here (TimeZone = UTC).
        "2024-01-05 10:11", "2024-01-05", "2024-01-05 10:11:12.5"],
}
# Inputs the server reads that pgshard refuses on purpose, with its SQLSTATE.
ONLY_PGSHARD_REFUSES = {
    ("date", "today"): "0A000", ("timestamptz", "now"): "0A000",
    ("date", "Jan 8 1999"): "22007", ("date", "1999/01/08"): "22007",
    ("date", "20240105"): "22007", ("timestamptz", "2024-01-05 10:11:12 CET"): "0A000",
    ("timestamptz", "2024-01-05 10:11:12 Europe/Berlin"): "0A000",
}
# Inputs both refuse, with a different SQLSTATE: an odd date PostgreSQL
# reads by DateStyle before finding the field out of range.
DIFFERENT_REFUSAL = {("date", "24-01-05")}


def pgshard_reads(config, kind, text):
    """(True, canonical text) or (False, SQLSTATE) from `pgshardctl route -v`."""
    proc = subprocess.run([str(PGSHARDCTL), "route", "-v", str(config), "app", f"sm_{kind}",
                           "--", text], capture_output=True, text=True, timeout=10)
    if proc.returncode == 0:
        line = next(l for l in proc.stdout.splitlines() if l.startswith("key:"))
        return True, line[len("key:"):].strip()
    return False, proc.stderr.split("pgshardctl: ", 1)[1].split(":", 1)[0]


@pytest.mark.parametrize("kind", list(INPUTS))
def test_key_typing_matches_postgres(lab, primary, tmp_path, kind):
    config = tmp_path / "typing.ini"
    write_config(config, 2, lab.primary_port)
    primary.execute("set timezone = 'UTC'")
    problems = []
    for text in INPUTS[kind]:
        try:
            pg = (True, primary.execute(f"select %s::{SQL_TYPE[kind]}::text", (text,)).fetchone()[0])
        except psycopg.Error as exc:
            pg = (False, exc.sqlstate)
        ours = pgshard_reads(config, kind, text)
        if ours == pg:
            continue
        if not ours[0] and pg[0] and ONLY_PGSHARD_REFUSES.get((kind, text)) == ours[1]:
            continue
        if not ours[0] and not pg[0] and (kind, text) in DIFFERENT_REFUSAL:
            continue
        problems.append(f"{kind} {text!r}: PostgreSQL {pg}, pgshard {ours}")
    assert not problems, "\n".join(problems)


# ---- binary parameters of the wrong size ----

def bind_error(conn, type_oid, value):
    """Parse `select $1` with TYPE_OID, Bind VALUE in binary: the ErrorResponse."""
    conn.send(pgwire.message("P", b"\0select $1\0" + struct.pack("!hI", 1, type_oid))
              + pgwire.message("B", b"\0\0" + struct.pack("!hh", 1, 1) + struct.pack("!h", 1)
                               + struct.pack("!i", len(value)) + value + struct.pack("!h", 0))
              + pgwire.message("E", b"\0" + struct.pack("!i", 0)) + pgwire.message("S"))
    code = None
    while True:
        kind, payload = conn.read_message()
        if kind == "E":
            code = pgwire.parse_error_fields(payload)["C"]
        elif kind == "Z":
            return code


@pytest.mark.parametrize("oid,short,long", [(20, 4, 9), (23, 2, 5), (21, 1, 3), (2950, 15, 17),
                                            (1082, 3, 8), (1184, 4, 9)])
def test_binary_size_errors_match_postgres(lab, oid, short, long):
    """pgs_key_from_binary says 08P01 for short values and 22P03 for long
    ones (test_shardmap.c); the server says the same."""
    with pgwire.RawConn(lab.primary_port) as conn:
        conn.login(user="postgres", password="", database="app")
        assert bind_error(conn, oid, b"\1" * short) == "08P01"
        assert bind_error(conn, oid, b"\1" * long) == "22P03"


# ---- the DBA commands (no server needed) ----

CLI_BASE = """[user.app]
password = x
[database.app]
[shard.app.s0]
primary = port=1
region = eu
[shard.app.s1]
primary = port=2
region = us
[table.app.users]
column = id
type = bigint
strategy = hash
[table.app.events]
column = id
type = bigint
strategy = range
range = s0: - 1000000
range = s1: 1000000 -
[table.app.profiles]
column = country
type = text
strategy = geo
[geo.app]
eu = DE FR
us = US MX
[table.app.invoices]
column = tenant_id
type = bigint
strategy = tenant
[tenants.app]
42 = s1
"""


def ctl(*args, stdin=None):
    return subprocess.run([str(PGSHARDCTL), *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=30)


def test_check_reports_every_error_in_line_order(tmp_path):
    path = tmp_path / "bad.ini"
    path.write_text(CLI_BASE.replace("range = s1: 1000000 -", "range = s9: 2000000 -")
                    + "[geo.app]\nasia = JP\n[tenants.app]\n7 = s5\n")
    proc = ctl("check", path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == sorted(numbers)
    text = proc.stdout
    assert f"{path}:19: [table.app.events]: range on unknown shard s9" in text
    assert f"{path}:34: [geo.app]: region asia has no shard" in text
    assert "region asia has no shard" in text
    assert "tenant 7 pinned on unknown shard s5" in text


def test_route_command(tmp_path):
    path = tmp_path / "map.ini"
    path.write_text(CLI_BASE)
    assert ctl("route", path, "app", "events", "999999").stdout == "s0\n"
    assert ctl("route", path, "app", "events", "1000000").stdout == "s1\n"
    assert ctl("route", path, "app", "invoices", "+42").stdout == "s1\n"
    assert ctl("route", path, "app", "events", "--", "-5").stdout == "s0\n"
    verbose = ctl("route", "-v", path, "app", "users", "42")
    assert verbose.returncode == 0
    assert "encoded:  000000000000002a" in verbose.stdout
    assert "slot:" in verbose.stdout and "hash:     xxh3 0x" in verbose.stdout
    bad = ctl("route", path, "app", "users", "abc")
    assert bad.returncode == 1
    assert '22P02: invalid input syntax for type bigint: "abc"' in bad.stderr
    refused = ctl("route", path, "app", "profiles", "BR")
    assert refused.returncode == 1 and "22023" in refused.stderr
    assert ctl("route", path, "nope", "users", "1").returncode == 1
    assert ctl("route", path, "app", "nope", "1").returncode == 1
    assert ctl("route", path, "app").returncode == 2
    many = ctl("route", "--stdin", path, "app", "events", stdin="1\nx\n2000000\n")
    assert many.returncode == 1
    assert many.stdout.splitlines()[0] == "1\ts0"
    assert many.stdout.splitlines()[1].startswith("x\tERROR 22P02 ")
    assert many.stdout.splitlines()[2] == "2000000\ts1"


def test_diff_command(tmp_path):
    old = tmp_path / "old.ini"
    new = tmp_path / "new.ini"
    old.write_text(CLI_BASE)
    same = ctl("diff", "--exit-code", old, old)
    assert same.returncode == 0 and "summary: nothing moves" in same.stdout
    new.write_text(CLI_BASE.replace("range = s1: 1000000 -", "range = s1: 2000000 -")
                   .replace("range = s0: - 1000000", "range = s0: - 2000000")
                   .replace("us = US MX", "us = US\neu = MX")
                   .replace("42 = s1", "42 = s0")
                   + "[shard.app.s2]\nprimary = port=3\nregion = eu\n")
    proc = ctl("diff", old, new)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "shard s2 added" in out
    assert "users: slots 1366-2047 move s0 -> s1 (682 of 4096 slots)" in out
    assert "users: slots 2731-4095 move s1 -> s2 (1365 of 4096 slots)" in out
    assert "events: keys [1000000, 2000000) move s1 -> s0" in out
    assert "geo.app: MX moves s1 ->" in out
    assert "tenants.app: tenant 42 moves s1 -> s0 (pinned -> pinned)" in out
    assert out.splitlines()[-1].startswith("summary: ")
    assert ctl("diff", "--exit-code", old, new).returncode == 1
    broken = tmp_path / "broken.ini"
    broken.write_text(CLI_BASE + "[tenants.app]\n1 = s9\n")
    assert ctl("diff", old, broken).returncode == 2
    assert ctl("diff", old).returncode == 2
