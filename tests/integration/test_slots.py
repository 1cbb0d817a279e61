"""The xxh3 slot table ([slots.DB]) end to end through pgshardctl alone (no
server): `pgshardctl reshard slots OLD NEW`
prints the section that grows a database from 2 to 3 shards moving only a
third of the keys, all to the new shard; appended to NEW, `check` accepts
it, `diff` reports exactly those moves, and `route` of 2000 keys under OLD
and NEW agrees: a key either keeps its shard or moves to the new one. Then
3 -> 4 shards from that table, a shard removed, and the errors.
"""
import re
import subprocess

from conftest import PGSHARDCTL

NKEYS = 2000

BASE = """[user.app]
password = x
[database.app]
[table.app.users]
column = id
type = bigint
strategy = hash
[table.app.names]
column = name
type = text
strategy = hash
[table.app.invoices]
column = tenant_id
type = bigint
strategy = tenant
[tenants.app]
42 = s1
"""


def shards(*names):
    return "".join(f"[shard.app.{n}]\nprimary = host=127.0.0.1 port={i + 1} dbname=app\n"
                   for i, n in enumerate(names))


def ctl(*args, stdin=None):
    return subprocess.run([str(PGSHARDCTL), *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=60)


def route_many(config, table, keys):
    """{key: shard} from `pgshardctl route --stdin`."""
    proc = ctl("route", "--stdin", config, "app", table, stdin="".join(k + "\n" for k in keys))
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("\t") for line in proc.stdout.splitlines())
    assert len(out) == len(keys)
    return out


def slot_section(old, new, *db):
    """The [slots.app] text `pgshardctl reshard slots OLD NEW` prints, and its
    {shard: set of slots}."""
    proc = ctl("reshard", "slots", old, new, *db)
    assert proc.returncode == 0, proc.stderr
    owners = {}
    for line in proc.stdout.splitlines():
        m = re.fullmatch(r"(s\d+) = (.*)", line)
        if not m:
            continue
        for part in m.group(2).split(", "):
            lo, _, hi = part.partition("-")
            owners.setdefault(m.group(1), set()).update(range(int(lo), int(hi or lo) + 1))
    assert "[slots.app]" in proc.stdout.splitlines()
    return proc.stdout, owners


def assert_table(owners, names):
    """OWNERS gives every slot to exactly one of NAMES, evenly."""
    every = [s for n in names for s in owners.get(n, ())]
    assert sorted(every) == list(range(4096))
    for n in names:
        assert len(owners.get(n, ())) in (4096 // len(names), 4096 // len(names) + 1), n


def moved_slots(diff_out, table):
    m = re.search(rf"^  {table}: (\d+) of 4096 slots move", diff_out, re.M)
    return int(m.group(1)) if m else 0


def compare_routes(old, new, table, keys, target):
    """Keys keep their shard under NEW or move to TARGET; returns how many move."""
    before, after = route_many(old, table, keys), route_many(new, table, keys)
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == target for k in moved), [(k, before[k], after[k]) for k in moved[:5]]
    return len(moved)


def test_grow_two_to_three(tmp_path):
    old, new, plain = tmp_path / "old.ini", tmp_path / "new.ini", tmp_path / "plain.ini"
    old.write_text(BASE + shards("s0", "s1"))
    new.write_text(BASE + shards("s0", "s1", "s2"))
    plain.write_text(new.read_text())
    text, owners = slot_section(old, new)
    assert_table(owners, ["s0", "s1", "s2"])
    with new.open("a") as f:
        f.write(text)
    check = ctl("check", new)
    assert check.returncode == 0 and check.stdout.strip() == f"{new}: OK", check.stdout

    diff = ctl("diff", old, new)
    assert diff.returncode == 0, diff.stderr
    for table in ("users", "names", r"tenants\.app \(unpinned\)"):
        assert 1360 <= moved_slots(diff.stdout, table) <= 1370, diff.stdout
    moves = re.findall(r"slots \d+-\d+ move (s\d) -> (s\d)", diff.stdout)
    assert moves and all(b == "s2" for _, b in moves), moves
    assert "users: moving slots go to s2 (1365)" in diff.stdout
    # Without the section, the default layout moves about half.
    assert moved_slots(ctl("diff", old, plain).stdout, "users") > 2000

    ids = [str(i) for i in range(NKEYS)]
    n = compare_routes(old, new, "users", ids, "s2")
    assert 0.28 * NKEYS < n < 0.39 * NKEYS, n
    names = [f"user-{i}@example.com" for i in range(NKEYS)]
    n = compare_routes(old, new, "names", names, "s2")
    assert 0.28 * NKEYS < n < 0.39 * NKEYS, n
    compare_routes(old, new, "invoices", ids, "s2")
    assert route_many(new, "invoices", ["42"])["42"] == "s1"  # pins stay pinned

    verbose = ctl("route", "-v", new, "app", "users", "7")
    assert re.search(r"^slot:     \d+ of 4096 \(owned by s\d in \[slots\.app\], line \d+\)$",
                     verbose.stdout, re.M), verbose.stdout


def test_grow_again_then_remove(tmp_path):
    two, three, four, gone = (tmp_path / f"{n}.ini" for n in ("two", "three", "four", "gone"))
    two.write_text(BASE + shards("s0", "s1"))
    three.write_text(BASE + shards("s0", "s1", "s2"))
    three.write_text(three.read_text() + slot_section(two, three)[0])
    four.write_text(BASE + shards("s0", "s1", "s2", "s3"))
    text, owners = slot_section(three, four, "app")
    assert_table(owners, ["s0", "s1", "s2", "s3"])
    four.write_text(four.read_text() + text)
    assert ctl("check", four).returncode == 0
    diff = ctl("diff", three, four).stdout
    assert moved_slots(diff, "users") == 1024, diff
    assert all(b == "s3" for _, b in re.findall(r"slots \d+-\d+ move (s\d) -> (s\d)", diff))
    assert 0.20 * NKEYS < compare_routes(three, four, "users", [str(i) for i in range(NKEYS)],
                                         "s3") < 0.30 * NKEYS

    # s1 removed: only its slots move, spread over the others.
    gone.write_text(BASE.replace("42 = s1", "42 = s0") + shards("s0", "s2", "s3"))
    text, owners = slot_section(four, gone)
    assert_table(owners, ["s0", "s2", "s3"])
    gone.write_text(gone.read_text() + text)
    assert ctl("check", gone).returncode == 0
    diff = ctl("diff", four, gone).stdout
    froms = {a for a, _ in re.findall(r"slots \d+-\d+ move (s\d) -> (s\d)", diff)}
    assert froms == {"s1"}, diff
    assert moved_slots(diff, "users") == 1024


def test_errors(tmp_path):
    old, new = tmp_path / "old.ini", tmp_path / "new.ini"
    old.write_text(BASE + shards("s0", "s1"))
    new.write_text(BASE + shards("s0", "s1", "s2"))
    assert ctl("reshard", "slots", old).returncode == 2
    assert ctl("reshard", "slots", old, new, "app", "extra").returncode == 2
    unknown = ctl("reshard", "slots", old, new, "nope")
    assert unknown.returncode == 2 and "no database nope" in unknown.stderr
    broken = tmp_path / "broken.ini"
    broken.write_text(new.read_text() + "[slots.app]\ns0 = 0-2047\ns1 = 2048-4000\n")
    check = ctl("check", broken)
    assert check.returncode == 1
    line = len(new.read_text().splitlines()) + 2
    assert f"{broken}:{line}: [slots.app]: slots 4001-4095 are on no shard" in check.stdout
    assert ctl("reshard", "slots", old, broken).returncode == 2
    postgres = tmp_path / "postgres.ini"
    postgres.write_text(new.read_text() + "[database.app]\nhash = postgres\n")
    refused = ctl("reshard", "slots", old, postgres, "app")
    assert refused.returncode == 2 and "hash = xxh3" in refused.stderr
    bad = tmp_path / "bad.ini"
    bad.write_text(postgres.read_text() + "[slots.app]\ns0 = 0-4095\n")
    check = ctl("check", bad)
    assert check.returncode == 1 and "a slot table is for hash = xxh3" in check.stdout
