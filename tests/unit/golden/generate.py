#!/usr/bin/python3
"""Regenerate tests/unit/golden/keys.tsv from golden.ini (see README.md).

Every row is "DATABASE<TAB>TABLE<TAB>KEY<TAB>EXPECTED", EXPECTED a shard name
or "ERROR <SQLSTATE>". Where the mapping is PostgreSQL's (database gp: its
hash tables and its unpinned tenants), EXPECTED comes from a real server: the
keys are inserted into a table PARTITION BY HASH (k) with MODULUS 3 and each
row's tableoid names its partition, REMAINDER r -> shard s<r>. Everything else
is what `pgshardctl route` says today, which is the point of a golden file:
a later change to the mapping fails test_shardmap until someone regenerates
the file on purpose. The script also refuses to write anything if pgshardctl
disagrees with the server on any PostgreSQL-hashed row.

usage: generate.py --port PORT [--pgshardctl PATH]
  PORT: a PostgreSQL 15 server on 127.0.0.1 (user postgres, database app),
  e.g. a lab primary. The script creates and drops its tables there.
"""
import argparse
import random
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
TYPES = ["smallint", "int", "bigint", "text", "uuid", "date", "timestamptz"]
SQL_TYPE = {"int": "integer"}


def keys_for(kind, rng):
    """Valid keys of a type: edges first, then deterministic random ones."""
    if kind in ("smallint", "int", "bigint"):
        bits = {"smallint": 16, "int": 32, "bigint": 64}[kind]
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        keys = [str(v) for v in (0, 1, -1, 2, 42, 7, 100, -100, 999, 1000, lo, hi, lo + 1, hi - 1)]
        keys += ["+5", "  42  ", "-0", "0042"]
        keys += [str(rng.randint(lo, hi)) for _ in range(26)]
        if bits > 16:
            keys += [str(rng.randint(-100000, 100000)) for _ in range(10)]
        return keys
    if kind == "text":
        keys = ["", "a", "b", "g", "n", "n o", "n o ", "z", "DE", "US", "hello", "Hello",
                "héllo", "日本語", "a" * 11, "a" * 12, "a" * 13, "x" * 100, "tab-free; with = signs",
                "trailing blank ", " leading blank"]
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.éü€"
        keys += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(29)]
        return keys
    if kind == "uuid":
        keys = ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
                "55555555-5555-5555-5555-555555555555", "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
                "00000000-0000-0000-0000-000000000042", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
                "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11"]
        keys += [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(32)]
        return keys
    if kind == "date":
        keys = ["2000-01-01", "1999-12-31", "1970-01-01", "2024-06-14", "2024-06-15", "2024-02-29",
                "0001-01-01", "9999-12-31", "infinity", "-infinity", "epoch", " 2024-1-5 ",
                "0044-03-15 BC", "2024-06-15T23:59:59Z"]
        keys += ["%04d-%02d-%02d" % (rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28))
                 for _ in range(26)]
        return keys
    if kind == "timestamptz":
        keys = ["2000-01-01 00:00:00+00", "1999-12-31 23:59:59.999999+00", "1970-01-01T00:00:00Z",
                "2024-06-15 12:30:00.5+02", "2024-06-15 10:30:00.5Z", "2024-06-15 10:30:00.499999Z",
                "2024-06-15 12:30:00.5 +02:00", "2024-06-15 14:30:00.5+0400", "infinity", "-infinity",
                "epoch", "2024-01-05 10:11:12.1234565+00", "2024-01-05 24:00:00Z",
                "0001-01-01 00:00:00+00 BC"]
        for _ in range(26):
            zone = rng.choice(["Z", "+00", "+02", "-05", "+05:30", "-09:30", " UTC"])
            frac = rng.choice(["", ".5", ".123456", ".000001"])
            keys.append("%04d-%02d-%02d %02d:%02d:%02d%s%s" % (
                rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                rng.randint(0, 59), rng.randint(0, 59), frac, zone))
        return keys
    raise ValueError(kind)


BAD_KEYS = {
    "smallint": ["32768", "-32769", "abc", "", "4.0", "1e3"],
    "int": ["2147483648", "-2147483649", "0x10", "12 3"],
    "bigint": ["9223372036854775808", "-9223372036854775809", "abc", "- 1"],
    "text": [],
    "uuid": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "xyz"],
    "date": ["2024-02-30", "2023-02-29", "2024-13-01", "Jan 8 1999", "today", "5874898-01-01"],
    "timestamptz": ["2024-01-05 10:11:12+16", "2024-01-05 25:00:00Z", "now",
                    "2024-01-05 10:11:12 CET", "294277-01-01 00:00:00+00"],
}
GEO_KEYS = ["DE", "FR", "IT", "ES", "NL", "PL", "US", "CA", "MX", "BR", "JP", "de", "", "DEU"]
TENANT_KEYS = {
    "bigint": ["42", "7", "-1", "+42", "0", "1", "2", "3", "43", "-42", "9223372036854775807", "x"],
}


def route(pgshardctl, db, table, keys):
    proc = subprocess.run([pgshardctl, "route", "--stdin", str(HERE / "golden.ini"), db, table],
                          input="".join(k + "\n" for k in keys), capture_output=True, text=True)
    out = []
    for line in proc.stdout.splitlines():
        key, _, result = line.rpartition("\t")
        if result.startswith("ERROR "):
            # the message may hold tabs of its own? it does not; split off the code
            key, _, result = line.partition("\tERROR ")
            result = "ERROR " + result.split()[0]
        out.append(result)
    if len(out) != len(keys):
        sys.exit(f"pgshardctl route {db} {table}: {len(out)} answers for {len(keys)} keys\n"
                 + proc.stderr)
    return out


def postgres_partitions(conn, kind, keys):
    """REMAINDER of each key's partition in a real PARTITION BY HASH table."""
    sql_type = SQL_TYPE.get(kind, kind)
    conn.execute("drop table if exists golden_p")
    conn.execute(f"create table golden_p (id int, k {sql_type}) partition by hash (k)")
    for r in range(3):
        conn.execute(f"create table golden_p{r} partition of golden_p "
                     f"for values with (modulus 3, remainder {r})")
    with conn.cursor() as cur:
        cur.executemany("insert into golden_p values (%s, %s)",
                        [(i, k) for i, k in enumerate(keys)])
    rows = conn.execute("select id, tableoid::regclass::text from golden_p").fetchall()
    conn.execute("drop table golden_p")
    found = {i: "s" + part[len("golden_p"):] for i, part in rows}
    return [found[i] for i in range(len(keys))]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pgshardctl", default=str(HERE.parents[2] / "build" / "pgshardctl"))
    args = ap.parse_args()
    rng = random.Random(20240615)
    conn = psycopg.connect(host="127.0.0.1", port=args.port, dbname="app", user="postgres",
                           autocommit=True)
    conn.execute("set timezone = 'UTC'")  # the zone-less keys are read as UTC by pgshard too
    rows = []
    disagree = []
    for kind in TYPES:
        keys = keys_for(kind, rng)
        for db in ("gx", "gp"):
            for prefix in ("h", "r"):
                table = f"{prefix}_{kind}"
                got = route(args.pgshardctl, db, table, keys + BAD_KEYS[kind])
                if db == "gp" and prefix == "h":
                    real = postgres_partitions(conn, kind, keys)
                    disagree += [(table, k, g, r) for k, g, r in zip(keys, got, real) if g != r]
                    got = real + got[len(keys):]
                rows += [(db, table, k, g) for k, g in zip(keys + BAD_KEYS[kind], got)]
    for db in ("gx", "gp"):
        rows += [(db, "geo", k, g) for k, g in zip(GEO_KEYS, route(args.pgshardctl, db, "geo",
                                                                    GEO_KEYS))]
    tenant_keys = TENANT_KEYS["bigint"] + [str(rng.randint(-10 ** 6, 10 ** 6)) for _ in range(20)]
    for table in ("invoices", "payments"):
        rows += [("gx", table, k, g)
                 for k, g in zip(tenant_keys, route(args.pgshardctl, "gx", table, tenant_keys))]
    uuid_tenants = ["00000000-0000-0000-0000-000000000042", "ffffffff-ffff-ffff-ffff-ffffffffffff",
                    "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"]
    uuid_tenants += [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(20)]
    real = postgres_partitions(conn, "uuid", uuid_tenants)
    pins = {"00000000-0000-0000-0000-000000000042": "s2", "ffffffff-ffff-ffff-ffff-ffffffffffff": "s0"}
    for table in ("invoices", "payments"):
        got = route(args.pgshardctl, "gp", table, uuid_tenants)
        for k, g, r in zip(uuid_tenants, got, real):
            want = pins.get(k.lower(), r)
            if g != want:
                disagree.append((table, k, g, want))
            rows.append(("gp", table, k, want))
    if disagree:
        for d in disagree[:20]:
            print("pgshardctl and PostgreSQL disagree: %s %r: %s vs %s" % d, file=sys.stderr)
        sys.exit(f"{len(disagree)} disagreements; keys.tsv not written")
    with open(HERE / "keys.tsv", "w") as f:
        f.write("# tests/unit/golden/keys.tsv: key -> shard under golden.ini, checked by\n"
                "# test_shardmap. Generated by generate.py (see README.md); gp's hash rows\n"
                "# and unpinned tenants come from a real PARTITION BY HASH table.\n"
                "# database\ttable\tkey\texpected\n")
        for row in rows:
            assert all("\t" not in c and "\n" not in c for c in row)
            f.write("\t".join(row) + "\n")
    print(f"wrote {len(rows)} rows to {HERE / 'keys.tsv'}")


if __name__ == "__main__":
    main()
