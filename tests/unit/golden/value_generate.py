#!/usr/bin/python3
"""Regenerate tests/unit/golden/value_*.tsv from a real PostgreSQL 15.

test_value checks router/value.c against these files; every expected string
and byte in them is what the server printed or sent, never what pgshard
computes, so the files are the reference and value.c the thing under test.

value_order.tsv  "LABEL<TAB>OID<TAB>RANK<TAB>TEXT_HEX<TAB>BINARY_HEX"
    Values of every comparable type, RANK = dense_rank() over (order by x)
    (the database is initialised --no-locale, so text orders bytewise).
    TEXT_HEX is the value's text output (x::text, as DataRow carries it),
    BINARY_HEX its typsend output, both hex so any byte survives the TSV.
    timestamptz values are printed under several TimeZone settings (offsets
    with seconds for local mean time included); one bytea group is printed
    with bytea_output = escape. test_value compares every pair in both
    formats and expects the sign of the rank difference.

value_float.tsv  "TYPE<TAB>BINARY_HEX<TAB>TEXT"
    float4 and float8 values (limits, every power of two, random bit
    patterns, random short decimals, and values whose rounding interval
    ends exactly on a short decimal, which PostgreSQL's Ryu never prints):
    float4send/float8send and the text output with the default
    extra_float_digits = 1. test_value prints the binary value and expects
    TEXT, and reads TEXT back expecting the same bits.

value_sums.tsv  "TYPE<TAB>PARTS_TEXT<TAB>PARTS_HEX<TAB>COUNTS<TAB>SUM_TEXT<TAB>SUM_HEX<TAB>AVG_TEXT<TAB>AVG_HEX"
    Random groups of values of TYPE spread over three "shards". PARTS are
    each shard's sum(x) (';'-separated, NULL for a shard with no rows) in
    text and binary, COUNTS each shard's count(x); SUM and AVG are sum(x)
    and avg(x) over all rows, as one server computes them. test_value adds
    the partial sums as the merge does and expects SUM and AVG exactly.
    Float groups use values whose sums are exact (multiples of 1/8), where
    the order of additions cannot matter.

usage: value_generate.py --port PORT
  PORT: a PostgreSQL 15 server on 127.0.0.1, user postgres, trust auth,
  initialised --no-locale (e.g. a throwaway initdb, see test_value.c).
  The script only creates temporary tables. The seed is fixed, so the same
  server version regenerates the same files byte for byte.
"""
import argparse
import math
import random
import struct
import uuid
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
SEED = 20240531

OIDS = {
    "bool": 16, "bytea": 17, "name": 19, "int8": 20, "int2": 21, "int4": 23, "text": 25,
    "oid": 26, "float4": 700, "float8": 701, "bpchar": 1042, "varchar": 1043, "date": 1082,
    "time": 1083, "timestamp": 1114, "timestamptz": 1184, "numeric": 1700, "uuid": 2950,
}

ZONES = ["UTC", "Europe/Amsterdam", "Asia/Kolkata", "America/Los_Angeles", "Asia/Kathmandu",
         "America/St_Johns", "Pacific/Chatham", "Australia/Lord_Howe", "Africa/Monrovia",
         "Europe/Dublin", "Pacific/Kiritimati", "America/Caracas"]


def rand_numeric(rng, max_int=12, max_scale=10):
    sign = "-" if rng.random() < 0.4 else ""
    intpart = str(rng.randint(0, 10 ** rng.randint(0, max_int)))
    scale = rng.randint(0, max_scale)
    frac = "".join(rng.choice("0123456789") for _ in range(scale))
    return sign + intpart + ("." + frac if scale else "")


def rand_text(rng, alphabet="abcABC xyz_-0129éü€日\\'\"", maxlen=12):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, maxlen)))


def order_values(rng):
    """LABEL -> (sql type, [values as SQL literals, or None for NULL-free lists])."""
    ints = lambda lo, hi, n: [str(v) for v in (lo, hi, 0, 1, -1, lo + 1, hi - 1)] + [
        str(rng.randint(lo, hi)) for _ in range(n)] + [str(rng.randint(-100, 100)) for _ in range(n // 2)]
    groups = {}
    groups["bool"] = ("bool", ["true", "false", "true", "false"])
    groups["int2"] = ("int2", ints(-32768, 32767, 30))
    groups["int4"] = ("int4", ints(-2 ** 31, 2 ** 31 - 1, 30))
    groups["int8"] = ("int8", ints(-2 ** 63, 2 ** 63 - 1, 30))
    groups["oid"] = ("oid", [str(v) for v in (0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32 - 2)]
                     + [str(rng.randint(0, 2 ** 32 - 1)) for _ in range(30)])
    floats = ["'NaN'", "'Infinity'", "'-Infinity'", "0", "'-0'", "1", "-1", "0.1", "-0.1",
              "1e-300", "-1e-300", "'5e-324'", "'-5e-324'", "'1.7976931348623157e308'",
              "'-1.7976931348623157e308'", "'NaN'", "1.5", "1.50", "100", "1e20"]
    floats += [repr(rng.uniform(-1e6, 1e6)) for _ in range(20)]
    floats += [repr(struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]) for _ in range(30)]
    floats = [f if f.startswith("'") else "'%s'" % f for f in floats if "nan" not in f and "inf" not in f]
    groups["float8"] = ("float8", floats)
    f4 = ["'NaN'", "'Infinity'", "'-Infinity'", "0", "'-0'", "1", "-1", "0.1", "-0.1", "'1e-45'",
          "'-1e-45'", "'3.4028235e38'", "'-3.4028235e38'", "'NaN'", "1.5", "100", "1e20"]
    f4 += ["'%r'" % struct.unpack("<f", struct.pack("<f", rng.uniform(-1e6, 1e6)))[0] for _ in range(20)]
    for _ in range(30):
        v = struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0]
        if math.isfinite(v):
            f4.append("'%r'" % v)
    groups["float4"] = ("float4", f4)
    nums = ["'NaN'", "'Infinity'", "'-Infinity'", "0", "0.00", "-0.0", "1", "1.0", "1.00", "-1",
            "-1.000", "0.0001", "0.00010", "-0.0001", "9999", "10000", "10000.0001", "9999.9999",
            "1e100", "-1e100", "1e-100", "-1e-100", "123456789012345678901234567890.123456789",
            "'NaN'", "0.5", "0.50000000000000000001", "0.49999999999999999999"]
    nums += [rand_numeric(rng) for _ in range(40)]
    nums += [rand_numeric(rng, 40, 30) for _ in range(10)]
    groups["numeric"] = ("numeric", nums)
    texts = ["''", "'a'", "'a '", "'A'", "'ab'", "'b'", "'é'", "'e'", "'z'", "'日本'", "' a'",
             "'aa'", "'a\\'", "E'\\t'", "'~'"]
    texts += ["'%s'" % rand_text(rng).replace("'", "''") for _ in range(40)]
    groups["text"] = ("text", texts)
    groups["varchar"] = ("varchar", texts)
    groups["name"] = ("name", texts)
    groups["bpchar"] = ("bpchar", ["''", "' '", "'a'", "'a '", "'a   '", "'ab'", "'ab '", "'a b'",
                                   "' a'", "'b'", "'A'", "'aa'", "'a'||chr(9)", "'abc  '"]
                        + ["'%s'" % rand_text(rng, "ab ", 6) for _ in range(30)])
    dates = ["'infinity'", "'-infinity'", "'2000-01-01'", "'1999-12-31'", "'2024-02-29'",
             "'4714-11-24 BC'", "'4713-11-24 BC'", "'0001-01-01'", "'0001-12-31 BC'", "'0044-03-15 BC'",
             "'5874897-12-31'", "'9999-12-31'", "'10000-01-01'", "'1970-01-01'", "'2024-01-31'"]
    for _ in range(40):
        bc = rng.random() < 0.2
        dates.append("'%04d-%02d-%02d%s'" % (rng.randint(1, 4713 if bc else 9999), rng.randint(1, 12),
                                             rng.randint(1, 28), " BC" if bc else ""))
    groups["date"] = ("date", dates)
    times = ["'00:00:00'", "'24:00:00'", "'23:59:59.999999'", "'12:00'", "'12:00:00.000001'",
             "'00:00:00.5'"]
    times += ["'%02d:%02d:%02d.%06d'" % (rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
                                         rng.choice([0, rng.randint(0, 999999)])) for _ in range(40)]
    groups["time"] = ("time", times)

    def stamp(bc_share=0.15):
        bc = rng.random() < bc_share
        return "'%04d-%02d-%02d %02d:%02d:%02d.%06d%s'" % (
            rng.randint(1, 4713 if bc else 9999), rng.randint(1, 12), rng.randint(1, 28),
            rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
            rng.choice([0, 500000, rng.randint(0, 999999)]), " BC" if bc else "")

    stamps = ["'infinity'", "'-infinity'", "'2000-01-01 00:00:00'", "'1999-12-31 23:59:59.999999'",
              "'4714-11-24 00:00:00 BC'", "'294276-12-31 23:59:59.999999'", "'2024-01-31 12:34:56.123456'",
              "'2024-01-31 12:34:56.5'", "'0044-03-15 12:00:01.5 BC'", "'1800-01-01 00:00:00'"]
    stamps += [stamp() for _ in range(40)]
    groups["timestamp"] = ("timestamp", stamps)
    tz = ["'infinity'", "'-infinity'", "'2000-01-01 00:00:00+00'", "'1999-12-31 23:59:59.999999+00'",
          "'4714-11-24 00:00:00+00 BC'", "'294276-12-30 23:59:59.999999+00'",
          "'2024-01-31 12:34:56.5+00'", "'2024-01-31 12:34:56.5+01'", "'2024-01-31 18:04:56.5+05:30'",
          "'1800-01-01 00:00:00+00'", "'1800-01-01 00:17:30+00'", "'0044-03-15 12:00:00+00 BC'"]
    tz += [stamp(0.05).replace(" BC'", "+00 BC'") if "BC" in s else s[:-1] + "+00'"
           for s in (stamp(0.05) for _ in range(30))]
    tz += ["'%04d-%02d-%02d %02d:%02d:%02d+00'" % (rng.randint(1850, 2100), rng.randint(1, 12),
                                                   rng.randint(1, 28), rng.randint(0, 23),
                                                   rng.randint(0, 59), rng.randint(0, 59))
           for _ in range(30)]
    groups["timestamptz"] = ("timestamptz", tz)
    uuids = ["'00000000-0000-0000-0000-000000000000'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
             "'00000000-0000-0000-0000-000000000001'", "'80000000-0000-0000-0000-000000000000'",
             "'7fffffff-ffff-ffff-ffff-ffffffffffff'"]
    uuids += ["'%s'" % uuid.UUID(int=rng.getrandbits(128)) for _ in range(30)]
    uuids += ["'%s'" % uuid.UUID(int=(rng.getrandbits(8) << 120) | 5) for _ in range(10)]
    groups["uuid"] = ("uuid", uuids)
    byteas = ["'\\x'", "'\\x00'", "'\\x0000'", "'\\x01'", "'\\xff'", "'\\xfe'", "'\\xff00'",
              "'\\x7f'", "'\\x80'", "'\\x5c'", "'\\x5c5c'", "'\\x27'", "'\\x61'", "'\\x6162'"]
    byteas += ["'\\x%s'" % bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 6))).hex()
               for _ in range(40)]
    byteas += ["'\\x%s'" % bytes(rng.choice(b"\x00\x5c\x61\x7f\x80\xff") for _ in range(rng.randint(0, 4))).hex()
               for _ in range(20)]
    groups["bytea"] = ("bytea", byteas)
    groups["bytea_escape"] = ("bytea", byteas)
    return groups


def gen_order(cur, rng):
    rows = []
    for label, (typ, values) in order_values(rng).items():
        cur.execute("drop table if exists v")
        cur.execute("create temp table v (i serial, x %s)" % typ)
        for v in values:
            cur.execute("insert into v (x) values ((%s)::%s)" % (v, typ))
        cur.execute("select typsend::text from pg_type where oid = %s", (OIDS[typ],))
        send = cur.fetchone()[0]
        cur.execute("reset timezone")
        cur.execute("set bytea_output = %s" % ("escape" if label == "bytea_escape" else "hex"))
        cur.execute("select i, dense_rank() over (order by x), convert_to(x::text, 'UTF8'), %s(x) "
                    "from v order by i" % send)
        got = cur.fetchall()
        if typ == "timestamptz":
            # the same instants printed in many zones: DataRow text is
            # in the session's TimeZone, whatever the shard's setting
            zoned = []
            for i, rank, text, binary in got:
                zone = ZONES[i % len(ZONES)]
                cur.execute("set timezone = '%s'" % zone)
                cur.execute("select convert_to(x::text, 'UTF8') from v where i = %s", (i,))
                zoned.append((i, rank, cur.fetchone()[0], binary))
            got = zoned
            cur.execute("reset timezone")
        for i, rank, text, binary in got:
            rows.append("%s\t%d\t%d\t%s\t%s" % (label, OIDS[typ], rank, bytes(text).hex(), bytes(binary).hex()))
    cur.execute("set bytea_output = hex")
    return rows


def gen_float(cur, rng):
    rows = []
    d = ["0", "-0", "1", "-1", "0.1", "0.2", "0.3", "1e15", "1e16", "123456789012345", "1e-4",
         "1e-5", "1.5e-5", "0.00012345", "9.999999999999999e14", "999999999999999",
         "123456789012345680", "1e20", "1e21", "1e22", "1e23", "5e-324", "1e-323",
         "2.2250738585072014e-308", "2.225073858507201e-308", "1.7976931348623157e308",
         "4.9406564584124654e-324", "100", "1e100", "1e-100", "3.141592653589793", "2.718281828459045",
         "0.1234567890123456789", "Infinity", "-Infinity", "NaN", "9007199254740993", "9007199254740992",
         "0.30000000000000004", "1.0000000000000002", "0.9999999999999999", "123.456", "-0.000099999"]
    d += [repr(2.0 ** e) for e in range(-1074, 1024)]
    d += [repr(-(2.0 ** e) * 3) for e in range(-1000, 1000, 7)]
    for _ in range(1500):
        v = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(v):
            d.append(repr(v))
    d += [repr(round(rng.uniform(-1e4, 1e4), rng.randint(0, 8))) for _ in range(300)]
    d += ["%de%d" % (rng.randint(1, 99999), rng.randint(-30, 30)) for _ in range(300)]
    f = ["0", "-0", "1", "-1", "0.1", "0.2", "1e6", "123456", "1234567", "1e-4", "1e-5",
         "3.4028235e38", "1e-45", "1.17549435e-38", "16777216", "16777217", "Infinity",
         "-Infinity", "NaN", "0.3", "100", "1e10", "999999", "999999.9", "0.00012345"]
    f += [repr(struct.unpack("<f", struct.pack("<f", 2.0 ** e))[0]) for e in range(-149, 128)]
    for _ in range(1500):
        v = struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0]
        if math.isfinite(v):
            f.append(repr(v))
    f += [repr(round(rng.uniform(-1e4, 1e4), rng.randint(0, 6))) for _ in range(300)]
    f += ["%de%d" % (rng.randint(1, 999), rng.randint(-30, 30)) for _ in range(300)]
    d += edge_values(False, rng)
    f += edge_values(True, rng)
    for typ, values in (("float8", d), ("float4", f)):
        for chunk in range(0, len(values), 500):
            part = values[chunk:chunk + 500]
            cur.execute("select x::%s::text, %ssend(x::%s) from unnest(%%s::text[]) x" % (typ, typ, typ),
                        (part,))
            for text, binary in cur.fetchall():
                rows.append("%s\t%s\t%s" % (typ, bytes(binary).hex(), text))
    return rows


def edge_values(single, rng):
    """Floats whose interval edge (halfway to a neighbour) is a short decimal,
    which PostgreSQL's Ryu (built with STRICTLY_SHORTEST 0) refuses to print
    although it reads back. value = m2 * 2^(e2 + 2), edges (4*m2 +- 2) * 2^e2,
    as in d2s.c / f2s.c; an edge is a multiple of 10^q when 5^q divides it."""
    mbits, bias = (23, 127) if single else (52, 1023)
    out = []
    for e2 in range(0, 100 if single else 200):
        q = (e2 * 78913) >> 18
        if not single:
            q -= e2 > 3
        for qq in range(max(q - 2, 1), q + 1):
            mod = 5 ** qq
            for delta in (2, -2):  # upper edge 4*m2+2, lower edge 4*m2-2
                # 4*m2 + delta = 0 (mod 5^qq)
                m2 = (-delta * pow(4, -1, mod)) % mod
                m2 += -(-(2 ** mbits - m2) // mod) * mod  # the first >= 2^mbits
                m2 += mod * rng.randrange(max(1, 2 ** mbits // mod // 4))
                picked = 0
                while m2 < 2 ** (mbits + 1) and picked < 3:
                    exponent = e2 + 2 + bias + mbits
                    if exponent < (255 if single else 2047):
                        bits = (exponent << mbits) | (m2 - 2 ** mbits)
                        if single:
                            v = struct.unpack("<f", struct.pack("<I", bits))[0]
                        else:
                            v = struct.unpack("<d", struct.pack("<Q", bits))[0]
                        if math.isfinite(v):
                            out.append(repr(v))
                    m2 += mod * rng.randint(1, 3)
                    picked += 1
    return out


SUM_TYPE = {"int2": "int8", "int4": "int8", "int8": "numeric", "numeric": "numeric",
            "float4": "float4", "float8": "float8"}
AVG_TYPE = {"int2": "numeric", "int4": "numeric", "int8": "numeric", "numeric": "numeric",
            "float4": "float8", "float8": "float8"}


def sum_values(rng, typ):
    n = rng.choice([1, 1, 2, 3, 5, 8, 20, 50])
    if typ == "int2":
        return [str(rng.randint(-32768, 32767)) for _ in range(n)]
    if typ == "int4":
        big = rng.random() < 0.5
        return [str(rng.randint(-2 ** 31, 2 ** 31 - 1) if big else rng.randint(-1000, 1000)) for _ in range(n)]
    if typ == "int8":
        mag = rng.choice([10, 10 ** 6, 10 ** 12, 2 ** 62, 2 ** 63 - 1])
        return [str(rng.randint(-mag - 1, mag)) for _ in range(n)]
    if typ in ("float4", "float8"):
        out = [str(rng.randint(-8000, 8000) / 8) for _ in range(n)]
        if rng.random() < 0.05:
            out.append(rng.choice(["NaN", "Infinity", "-Infinity"]))
        return out
    style = rng.random()
    if style < 0.05:
        out = [rand_numeric(rng) for _ in range(n)] + [rng.choice(["NaN", "Infinity", "-Infinity"])]
    elif style < 0.15:
        out = [rand_numeric(rng, 60, 40) for _ in range(n)]
    elif style < 0.25:
        # tiny values: the dividend's scale decides avg's scale
        out = ["%s0.%s%d" % (rng.choice(["", "-"]), "0" * rng.randint(10, 40), rng.randint(1, 999))
               for _ in range(n)]
    elif style < 0.3:
        out = [rng.choice(["0", "0.0", "0.000", "-0.00"]) for _ in range(n)]
    else:
        out = [rand_numeric(rng) for _ in range(n)]
    return out


def gen_sums(cur, rng):
    rows = []
    cases = [("int4", ["1", "2"]), ("int4", ["1", "2", "2"]), ("int4", ["10", "20"]),
             ("numeric", ["1.25", "2.5"]), ("int4", ["-1", "-2"]), ("int4", ["0"]),
             ("int8", ["9223372036854775807", "9223372036854775807", "9223372036854775806"]),
             ("int8", ["-9223372036854775808", "-9223372036854775808"]),
             ("numeric", ["1.5", "-1.5"]), ("numeric", ["Infinity", "1"]),
             ("numeric", ["Infinity", "-Infinity"]), ("numeric", ["-Infinity", "-Infinity"]),
             ("numeric", ["NaN", "1.00"]), ("float8", ["0.1", "0.2"]), ("float8", ["1e20", "1"]),
             ("float8", ["Infinity", "-Infinity"]), ("float4", ["0.5", "0.25"]),
             ("float8", ["-0"]), ("float8", ["-0", "-0"]), ("float4", ["-0"]),
             ("numeric", ["0.00001", "0.00002", "0.00002"]), ("numeric", ["99999999.9999", "0.0001"])]
    for _ in range(1000):
        typ = rng.choice(["int2", "int4", "int4", "int8", "int8", "numeric", "numeric", "numeric",
                          "numeric", "float4", "float8"])
        cases.append((typ, sum_values(rng, typ)))
    for typ, values in cases:
        st, at = SUM_TYPE[typ], AVG_TYPE[typ]
        cur.execute("drop table if exists s")
        cur.execute("create temp table s (shard int, x %s)" % typ)
        shards = [rng.randrange(3) for _ in values]
        if len(values) <= 3:
            shards = list(range(len(values)))
        cur.execute("insert into s select * from unnest(%%s::int[], %%s::%s[])" % typ, (shards, values))
        parts_text, parts_hex, counts = [], [], []
        for k in range(3):
            cur.execute("select sum(x)::text, %ssend(sum(x)), count(x) from s where shard = %%s"
                        % ("numeric_" if st == "numeric" else st), (k,))
            text, binary, count = cur.fetchone()
            parts_text.append("NULL" if text is None else text)
            parts_hex.append("NULL" if binary is None else bytes(binary).hex())
            counts.append(str(count))
        cur.execute("select sum(x)::text, %ssend(sum(x)), avg(x)::text, %ssend(avg(x)) from s"
                    % ("numeric_" if st == "numeric" else st, "numeric_" if at == "numeric" else at))
        st_text, st_bin, avg_text, avg_bin = cur.fetchone()
        rows.append("\t".join([typ, ";".join(parts_text), ";".join(parts_hex), ";".join(counts),
                               st_text, bytes(st_bin).hex(), avg_text, bytes(avg_bin).hex()]))
    return rows


def write(name, header, rows):
    path = HERE / name
    with open(path, "w") as f:
        f.write(header)
        for r in rows:
            f.write(r + "\n")
    print("%s: %d rows" % (path, len(rows)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    with psycopg.connect(host="127.0.0.1", port=args.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("show server_version")
        version = cur.fetchone()[0]
        cur.execute("show lc_collate")
        assert cur.fetchone()[0] == "C", "the server must be initialised --no-locale"
        cur.execute("set extra_float_digits = 1")
        cur.execute("set datestyle = 'ISO, MDY'")
        cur.execute("set intervalstyle = postgres")
        note = "# generated by value_generate.py from PostgreSQL %s (see its docstring)\n" % version
        rng = random.Random(SEED)
        write("value_order.tsv", note + "# label\toid\trank\ttext_hex\tbinary_hex\n", gen_order(cur, rng))
        write("value_float.tsv", note + "# type\tbinary_hex\ttext\n", gen_float(cur, rng))
        write("value_sums.tsv", note + "# type\tparts_text\tparts_hex\tcounts\tsum_text\tsum_hex"
              "\tavg_text\tavg_hex\n", gen_sums(cur, rng))


if __name__ == "__main__":
    main()
