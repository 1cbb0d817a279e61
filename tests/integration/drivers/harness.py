"""What every test_driver_<lang>.py shares: the tables, the keys, the
proxies, running a driver's program and reading its JSON lines, and the
checks every program answers (the list in each program's opening comment).

A program is run as `PROGRAM URL DENY_URL NAME=KEY[,KEY...] ...`:
  URL       postgresql://app:secret@127.0.0.1:PORT/app, a pgshard with
            cross_shard_writes = 2pc in front of the replicated lab;
  DENY_URL  the same for a pgshard with cross_shard_writes = deny;
  NAME=...  the keys of table users it must use for each check, chosen here
            so that every check knows which shard holds which row.
It prints one JSON object a line, {"check": NAME, ...}, and goes on after a
check fails ({"check": NAME, "error": TEXT, "sqlstate": STATE}), so one run
reports every failure. The rows it leaves are checked on each shard's
primary directly.
"""
import datetime as dt
import json
import subprocess
from decimal import Decimal

from test_sharding import route_many

from pydrivers import MAP, POOL_MODES, USERS  # noqa: F401 (POOL_MODES: for the tests)

REF = "k int primary key, v text"  # ref: not in the map, a copy on every shard

# Keys by role: (shard, how many). One key unless a count is given.
ROLES = {
    "crud_a": "s0", "crud_b": "s1", "deleted": "s1",
    "tx1_commit": "s0", "tx1_rollback": "s0",
    "tx2_commit_a": "s0", "tx2_commit_b": "s1",
    "tx2_rollback_a": "s0", "tx2_rollback_b": "s1",
    "types_text": "s1", "types_binary": "s0",
    "prep": ("both", 4), "copy": ("both", 3), "cursor": "s0",
}

# What the types checks write and must read back.
TAGS = ["a", "b c", 'quote"d', None]
TAGS_TEXT = '{a,"b c","quote\\"d",NULL}'
AT = dt.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=dt.timezone.utc)
AMOUNT = "12345.678901234567890"
DATA = bytes(range(256))


def route(config, keys):
    """The shard of each of KEYS of table users, as `pgshardctl route` says."""
    return route_many(config, "users", [str(k) for k in keys])


class DriverRun:
    """One driver's run in one pool mode: tables users and ref created empty
    on both primaries (and replayed by the replicas), a 2pc and a deny
    pgshard in front of the replicated lab, and keys for every role (ROLES
    plus EXTRA_ROLES)."""

    def __init__(self, lab, replica_proxy, pool_mode, extra_roles=None, **overrides):
        self.lab = lab
        lab.resume_all()
        for shard in lab.shards:
            with lab.connect_primary(shard.name) as conn:
                conn.execute("drop table if exists users, ref")
                conn.execute(f"create table users ({USERS})")
                conn.execute(f"create table ref ({REF})")
        lab.wait_caught_up()
        # pool_size 8: 4 servers per node and worker, room for a program's
        # main connection, a LISTEN (which pins its server) and a NOTIFY
        # landing on one worker in session pooling.
        overrides = dict(extra_ini=MAP, pool_mode=pool_mode, pool_size=8, **overrides)
        self.px = replica_proxy(cross_shard_writes="2pc", **overrides)
        self.deny = replica_proxy(cross_shard_writes="deny", **overrides)
        self.keys = self._pick_keys({**ROLES, **(extra_roles or {})})

    def _pick_keys(self, roles):
        candidates = list(range(1, 400))
        free = {"s0": [], "s1": []}
        for key, shard in zip(candidates, route(self.px.config_path, candidates)):
            free[shard].append(key)
        keys = {}
        for name, spec in roles.items():
            shard, count = (spec, None) if isinstance(spec, str) else spec
            if shard == "both":  # alternate: s0, s1, s0, s1 ...
                keys[name] = [free[("s0", "s1")[i % 2]].pop(0) for i in range(2 * count)]
            elif count is None:
                keys[name] = free[shard].pop(0)
            else:
                keys[name] = [free[shard].pop(0) for _ in range(count)]
        return keys

    def url(self, px=None):
        return f"postgresql://app:secret@127.0.0.1:{(px or self.px).port}/app"

    def args(self):
        """URL, DENY_URL, NAME=KEY[,KEY...] for the program."""
        return [self.url(), self.url(self.deny)] + [
            f"{name}={','.join(map(str, k)) if isinstance(k, list) else k}"
            for name, k in self.keys.items()]

    def run(self, cmd, timeout=90, env=None):
        """Run CMD + args(); return {check: record} from its JSON lines."""
        proc = subprocess.run(list(cmd) + self.args(), capture_output=True, text=True,
                              timeout=timeout, env=env)
        out = {}
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                out[record["check"]] = record
        assert proc.returncode == 0, (f"{cmd[0]} exited {proc.returncode}\n"
                                      f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
        return out

    # -- checks on the shards themselves --

    def where(self, key):
        """[(shard, name)] of every primary holding row KEY of users."""
        found = []
        for shard in self.lab.shards:
            with self.lab.connect_primary(shard.name) as conn:
                row = conn.execute("select name from users where id = %s", (key,)).fetchone()
                if row:
                    found.append((shard.name, row[0]))
        return found

    def all_ids(self):
        """Every id of users on the shards' primaries, sorted."""
        ids = []
        for shard in self.lab.shards:
            with self.lab.connect_primary(shard.name) as conn:
                ids += [r[0] for r in conn.execute("select id from users").fetchall()]
        return sorted(ids)

    def shard_of(self, key):
        return route(self.px.config_path, [key])[0]

    def assert_placed(self, keys, name=lambda key: f"name-{key}"):
        """Each of KEYS is on its own shard only, with name NAME(key)."""
        for key in keys:
            assert self.where(key) == [(self.shard_of(key), name(key))], key

    def assert_absent(self, keys):
        for key in keys:
            assert self.where(key) == [], key

    def assert_common(self, out, skip=()):
        """The checks every program runs (SKIP: those its driver lacks,
        each named in the test with the reason)."""
        k = self.keys
        expected = {"connect", "crud", "merged", "ref", "tx1", "tx2", "prepared", "types_text",
                    "types_binary", "unique", "refused", "copy", "cursor_key", "cursor_keyless",
                    "notify"} - set(skip)
        for name in sorted(expected):
            assert name in out, f"no record for check {name}: {sorted(out)}"
            assert "error" not in out[name], f"check {name} failed in the program: {out[name]}"
        assert out["connect"]["one"] == 1
        crud = out["crud"]
        assert (crud["inserted"], crud["read"], crud["updated"], crud["deleted"], crud["left"]) \
            == (3, f"name-{k['crud_a']}", 1, 1, 0), crud
        self.assert_placed([k["crud_a"]])
        assert self.where(k["crud_b"]) == [("s1", "updated")]
        self.assert_absent([k["deleted"]])
        # Run right after crud: rows crud_a (s0) and crud_b (s1).
        assert out["merged"]["count"] == 2
        assert out["merged"]["ids"] == sorted([k["crud_a"], k["crud_b"]], reverse=True)
        assert out["ref"]["read"] == "one"
        for shard in self.lab.shards:
            with self.lab.connect_primary(shard.name) as conn:
                assert conn.execute("select k, v from ref order by k").fetchall() == [(1, "one")]
        self.assert_placed([k["tx1_commit"], k["tx2_commit_a"], k["tx2_commit_b"]])
        self.assert_absent([k["tx1_rollback"], k["tx2_rollback_a"], k["tx2_rollback_b"]])
        assert out["prepared"]["names"] == [f"name-{key}" for key in k["prep"]]
        self.assert_placed(k["prep"])
        self.assert_types(out["types_text"], k["types_text"])
        if "types_binary" not in skip:
            self.assert_types(out["types_binary"], k["types_binary"])
        assert out["unique"]["sqlstate"] == "23505" and out["unique"]["after"] == 1
        refused = out["refused"]
        assert refused["sqlstate"] == "0A000" and refused["after"] == 1, refused
        assert refused["message"].startswith("pgshard:"), refused
        if "copy" not in skip:
            assert out["copy"]["rows"] == len(k["copy"])
            self.assert_placed(k["copy"])
        if "cursor_key" not in skip:
            cursor = out["cursor_key"]
            assert (cursor["rows"], cursor["sum"]) == (50, sum(range(1, 51))), cursor
            self.assert_placed([k["cursor"]])
        if "cursor_keyless" not in skip:
            # A cursor over both shards (ORDER BY id): pgshard gathers the
            # merged rows and hands them out in the driver's chunks; what
            # the program fetched is the start of every shard's ids merged.
            # (Later checks add rows: what it read is in order, and there.)
            keyless = out["cursor_keyless"]
            ids, every = keyless["ids"], self.all_ids()
            assert len(ids) >= 2 and keyless["after"] == 1, keyless
            assert ids == sorted(set(ids)) and set(ids) <= set(every), (keyless, every)
            assert ids[:2] == every[:2], (keyless, every)
        if "notify" not in skip:
            assert out["notify"]["channel"] == "drivers_chan"
            assert out["notify"]["payload"] == "hello through pgshard"

    def assert_types(self, record, key):
        """RECORD (what a program read back) and the row on the shard hold
        the TAGS, AT, AMOUNT, DATA and NULL name written. A value the driver
        does not decode in binary comes as {"binary": HEX}: it must be the
        server's own binary form of the value."""
        with self.lab.connect_primary(self.shard_of(key)) as conn:
            row = conn.execute("select name, tags, at, amount::text, data,"
                               " encode(array_send(tags), 'hex'),"
                               " encode(numeric_send(amount), 'hex')"
                               " from users where id = %s", (key,)).fetchone()
        assert row[:5] == (None, TAGS, AT, AMOUNT, DATA)
        tags_sent, amount_sent = row[5:]
        assert record["name"] is None, record
        assert record["tags"] in (TAGS, TAGS_TEXT, {"binary": tags_sent}), record
        assert dt.datetime.fromisoformat(record["at"]) == AT, record
        # Some drivers read numeric into a decimal type that drops trailing
        # zeros: the value must be exact.
        assert record["amount"] == {"binary": amount_sent} or \
            Decimal(record["amount"]) == Decimal(AMOUNT), record
        assert bytes.fromhex(record["data"]) == DATA, record
