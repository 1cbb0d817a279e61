"""A real driver through pgshard: asyncpg (Debian's python3-asyncpg), which
speaks the protocol itself: every statement is prepared under a name
(__asyncpg_stmt_N__), cached per connection and reused, and results come in
binary format.

On the replicated two-shard lab (pydrivers.py), in both pool modes: a URL,
CRUD by key checked on the shards, keyless reads merged, transactions on
one shard and over two under 2pc, the statement cache across transactions
with several connections interleaving (where poolers lose prepared
statements), types in binary, errors with their SQLSTATE, COPY, cursors
(Execute with a row limit), LISTEN/NOTIFY, and asyncpg's own pool.
Each test runs its coroutine with asyncio.run.
"""
import asyncio
import datetime as dt
from decimal import Decimal

import asyncpg
import pytest

from pydrivers import (POOL_MODES, assert_placed, keys_on, lab_tables, px,  # noqa: F401
                       rows_by_shard, shards_holding, start_proxy, url)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def connect(px, **kwargs):
    return await asyncpg.connect(url(px), timeout=10, **kwargs)


def test_crud_by_key(px, lab_tables):
    lab = lab_tables
    k0, k1 = keys_on(px, "s0", 1)[0], keys_on(px, "s1", 1)[0]

    async def main():
        conn = await connect(px)
        try:
            for key in (k0, k1):
                assert await conn.execute("insert into users (id, name) values ($1, $2)",
                                          key, f"u{key}") == "INSERT 0 1"
            assert_placed(px, lab, [k0, k1])
            assert await conn.fetchval("select name from users where id = $1", k1) == f"u{k1}"
            assert await conn.execute("update users set name = $1 where id = $2",
                                      "renamed", k0) == "UPDATE 1"
            assert await conn.fetchval("select name from users where id = $1", k0) == "renamed"
            assert await conn.execute("delete from users where id = $1", k1) == "DELETE 1"
            assert shards_holding(lab, k1) == [] and shards_holding(lab, k0) == ["s0"]
            await conn.execute("insert into plans (id, name) values ($1, $2)", 1, "free")
            assert shards_holding(lab, 1, table="plans") == ["s0", "s1"]
            assert await conn.fetchval("select name from plans where id = $1", 1) == "free"
        finally:
            await conn.close()
    run(main())


def test_keyless_reads_merged(px, lab_tables):
    keys = keys_on(px, "s0", 5) + keys_on(px, "s1", 5, start=1000)

    async def main():
        conn = await connect(px)
        try:
            # executemany: one prepared statement, one Bind per row.
            await conn.executemany("insert into users (id, name, amount) values ($1, $2, $3)",
                                   [(k, f"n{k}", Decimal(k) / 4) for k in keys])
            rows = rows_by_shard(lab_tables)
            assert len(rows["s0"]) == 5 and len(rows["s1"]) == 5
            rows = await conn.fetch("select count(*), sum(amount) from users")
            assert [tuple(r) for r in rows] == [(10, sum(Decimal(k) / 4 for k in keys))]
            # fetchrow and fetchval read one row with Execute's row limit 1:
            # the merged result is gathered and its first row handed out.
            assert await conn.fetchval("select count(*) from users") == 10
            first = await conn.fetchrow("select id, name from users order by id")
            assert tuple(first) == (min(keys), f"n{min(keys)}")
            assert await conn.fetchval("select count(*) from users where id = $1", keys[0]) == 1
            top = await conn.fetch("select id, name from users order by id desc limit $1", 3)
            assert [tuple(r) for r in top] == [(k, f"n{k}") for k in sorted(keys, reverse=True)[:3]]
            some = await conn.fetch("select id from users where id = any($1::bigint[]) order by id",
                                    keys[3:7])
            assert [r[0] for r in some] == sorted(keys[3:7])
        finally:
            await conn.close()
    run(main())


def test_transactions_on_one_shard(px, lab_tables):
    k1, k2 = keys_on(px, "s1", 2)

    async def main():
        conn = await connect(px)
        try:
            async with conn.transaction():
                await conn.execute("insert into users (id, name) values ($1, 'a')", k1)
                await conn.execute("update users set name = 'b' where id = $1", k1)
            assert shards_holding(lab_tables, k1) == ["s1"]
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute("insert into users (id, name) values ($1, 'gone')", k2)
                    assert await conn.fetchval("select name from users where id = $1", k2) == "gone"
                    1 / 0
            assert shards_holding(lab_tables, k2) == []
            assert await conn.fetchval("select name from users where id = $1", k1) == "b"
        finally:
            await conn.close()
    run(main())


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_transaction_over_two_shards_2pc(replica_proxy, lab_tables, pool_mode):
    px = start_proxy(replica_proxy, pool_mode, cross_shard_writes="2pc")
    k0, k1 = keys_on(px, "s0", 2), keys_on(px, "s1", 2)

    async def main():
        conn = await connect(px)
        try:
            async with conn.transaction():
                await conn.execute("insert into users (id, name) values ($1, 'x')", k0[0])
                await conn.execute("insert into users (id, name) values ($1, 'x')", k1[0])
            assert rows_by_shard(lab_tables) == {"s0": [k0[0]], "s1": [k1[0]]}
            tx = conn.transaction()
            await tx.start()
            await conn.execute("insert into users (id, name) values ($1, 'y')", k0[1])
            await conn.execute("insert into users (id, name) values ($1, 'y')", k1[1])
            assert await conn.execute("update users set name = 'z'") == "UPDATE 4"
            assert (await conn.fetch("select count(*) from users where name = 'z'"))[0][0] == 4
            await tx.rollback()
            assert rows_by_shard(lab_tables) == {"s0": [k0[0]], "s1": [k1[0]]}
            assert (await conn.fetch("select count(*) from users where name = 'x'"))[0][0] == 2
        finally:
            await conn.close()
    run(main())


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_statement_cache_across_transactions(replica_proxy, lab_tables, pool_mode):
    """Several asyncpg connections, each with its statement cache, run the
    same statements in many short transactions, interleaved, on small pools:
    in transaction pooling each transaction may get another server, where
    pgshard must prepare asyncpg's __asyncpg_stmt_N__ again (PgBouncer's
    "prepared statement does not exist")."""
    px = start_proxy(replica_proxy, pool_mode)
    keys = keys_on(px, "s0", 8) + keys_on(px, "s1", 8, start=2000)

    async def worker(conn, mine, rounds):
        lookup = await conn.prepare("select name, amount from users where id = $1")
        for r in range(rounds):
            for key in mine:
                async with conn.transaction():
                    await conn.execute("update users set amount = coalesce(amount, 0) + $2"
                                       " where id = $1", key, 1)
                    row = await lookup.fetchrow(key)
                    assert row["name"] == f"k{key}" and row["amount"] == r + 1
                # Outside a transaction too: the cached statement again.
                assert await conn.fetchval("select amount from users where id = $1",
                                           key) == r + 1
                await asyncio.sleep(0)
        return len(mine) * rounds

    async def main():
        setup = await connect(px)
        await setup.executemany("insert into users (id, name) values ($1, $2)",
                                [(k, f"k{k}") for k in keys])
        await setup.close()
        conns = [await connect(px) for _ in range(4)]
        try:
            done = await asyncio.gather(*(worker(c, keys[i::4], 5) for i, c in enumerate(conns)))
            assert sum(done) == len(keys) * 5
            for conn in conns:
                # asyncpg kept its two implicit statements and reused them
                # (a statement it had to prepare again would be a new entry).
                assert len(conn._stmt_cache) == 2
        finally:
            for conn in conns:
                await conn.close()
    run(main())
    for shard, held in rows_by_shard(lab_tables).items():
        assert len(held) == 8, shard
    with lab_tables.connect_primary("s1") as s1:
        assert s1.execute("select sum(amount) from users").fetchone()[0] == 8 * 5


def test_statement_cache_one_server(replica_proxy, lab_tables):
    """Transaction pooling with one server per node for three clients:
    every transaction of every client shares it, each client's statements
    must be there when needed and its own results must come back."""
    px = start_proxy(replica_proxy, "transaction", pool_size=1, workers=1, replica=False)
    key = keys_on(px, "s1", 1)[0]

    async def main():
        setup = await connect(px)
        await setup.execute("insert into users (id, name, amount) values ($1, 'one', 0)", key)
        await setup.close()
        conns = [await connect(px) for _ in range(3)]
        try:
            for r in range(10):
                for i, conn in enumerate(conns):
                    async with conn.transaction():
                        assert await conn.fetchval("select name || $2::text from users"
                                                   " where id = $1", key, str(i)) == f"one{i}"
                        await conn.execute("update users set amount = amount + 1 where id = $1",
                                           key)
            assert await conns[0].fetchval("select amount from users where id = $1",
                                           key) == 10 * len(conns)
        finally:
            for conn in conns:
                await conn.close()
    run(main())


def test_types_round_trip(px, lab_tables):
    when = dt.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=dt.timezone.utc)
    amount = Decimal("12345.678901234567890")
    blob = bytes(range(256)) * 4
    tags = ["a", "b c", 'q"uote', None, "é☃"]
    key = keys_on(px, "s1", 1)[0]
    null_key = keys_on(px, "s0", 1)[0]

    async def main():
        conn = await connect(px)
        try:
            insert = ("insert into users (id, name, tags, at, amount, data)"
                      " values ($1, $2, $3, $4, $5, $6)")
            await conn.execute(insert, key, "héllo", tags, when, amount, blob)
            await conn.execute(insert, null_key, None, None, None, None, None)
            row = await conn.fetchrow("select name, tags, at, amount, data from users"
                                      " where id = $1", key)
            assert tuple(row) == ("héllo", tags, when, amount, blob)
            row = await conn.fetchrow("select name, tags, at, amount, data from users"
                                      " where id = $1", null_key)
            assert tuple(row) == (None,) * 5
            # Merged from both shards, in binary.
            rows = await conn.fetch("select id, amount, at, data from users order by id")
            assert [tuple(r) for r in rows] == sorted([(key, amount, when, blob),
                                                       (null_key, None, None, None)])
            assert (await conn.fetch("select sum(amount) from users"))[0][0] == amount
            # Text results of the same values (a cast on the server).
            assert await conn.fetchval("select amount::text from users where id = $1",
                                       key) == "12345.678901234567890"
            assert await conn.fetchval("select tags::text from users where id = $1",
                                       key) == '{a,"b c","q\\"uote",NULL,é☃}'
        finally:
            await conn.close()
    run(main())
    with lab_tables.connect_primary("s1") as s1:
        assert s1.execute("select amount::text, at from users where id = %s",
                          (key,)).fetchone() == ("12345.678901234567890", when)


def test_errors_and_refusals(px, lab_tables):
    key = keys_on(px, "s0", 1)[0]

    async def main():
        conn = await connect(px)
        try:
            await conn.execute("insert into users (id, name) values ($1, 'first')", key)
            with pytest.raises(asyncpg.UniqueViolationError) as exc:
                await conn.execute("insert into users (id, name) values ($1, 'again')", key)
            assert exc.value.sqlstate == "23505"
            assert await conn.fetchval("select name from users where id = $1", key) == "first"
            with pytest.raises(asyncpg.FeatureNotSupportedError) as exc:
                await conn.execute("update users set name = 'everyone'")
            assert exc.value.sqlstate == "0A000"
            assert exc.value.args[0].startswith("pgshard:")
            # The same refusal through a prepared statement with a parameter.
            with pytest.raises(asyncpg.FeatureNotSupportedError):
                await conn.execute("update users set name = $1", "everyone")
            assert (await conn.fetch("select count(*) from users where name = $1",
                                     "first"))[0][0] == 1
            # Inside a transaction: the refusal aborts it, the rollback ends it.
            with pytest.raises(asyncpg.FeatureNotSupportedError):
                async with conn.transaction():
                    await conn.fetchval("select name from users where id = $1", key)
                    await conn.execute("delete from users")
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute("insert into users (id, name) values ($1, 'x')", key)
            assert await conn.fetchval("select name from users where id = $1", key) == "first"
        finally:
            await conn.close()
    run(main())
    assert shards_holding(lab_tables, key) == ["s0"]


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_copy(replica_proxy, lab_tables, pool_mode):
    """copy_to_table with format csv is split by key, and so is
    copy_records_to_table's COPY ... FORMAT binary (each tuple to its key's
    shard, the header and trailer to both). Rows for two shards need 2pc
    (inside a transaction)."""
    px = start_proxy(replica_proxy, pool_mode, cross_shard_writes="2pc")
    keys = list(range(1, 201))
    csv = "".join(f"{k},name {k},\"{{a,b}}\",2024-01-01 00:00:00+00,{k}.5,\\x0102\n"
                  for k in keys).encode()

    async def main():
        conn = await connect(px)
        try:
            async with conn.transaction():
                tag = await conn.copy_to_table(
                    "users", source=_chunks(csv), format="csv",
                    columns=["id", "name", "tags", "at", "amount", "data"])
            assert tag == f"COPY {len(keys)}"
            assert_placed(px, lab_tables, keys[:20])
            rows = rows_by_shard(lab_tables)
            assert sorted(rows["s0"] + rows["s1"]) == keys and rows["s0"] and rows["s1"]
            row = await conn.fetchrow("select tags, amount, data from users where id = 7")
            assert tuple(row) == (["a", "b"], Decimal("7.5"), b"\x01\x02")
            binary = [(k, f"bin {k}", ["c"], Decimal("1.25")) for k in range(501, 531)]
            async with conn.transaction():
                tag = await conn.copy_records_to_table(
                    "users", records=binary, columns=["id", "name", "tags", "amount"])
            assert tag == f"COPY {len(binary)}"
            assert_placed(px, lab_tables, [r[0] for r in binary])
            row = await conn.fetchrow("select name, tags, amount from users where id = 517")
            assert tuple(row) == ("bin 517", ["c"], Decimal("1.25"))
            keys.extend(r[0] for r in binary)
            # Reference table rows go to every shard.
            async with conn.transaction():
                await conn.copy_to_table("plans", source=_chunks(b"1\tfree\n2\tpro\n"),
                                         columns=["id", "name"])
            assert shards_holding(lab_tables, 2, table="plans") == ["s0", "s1"]
            # COPY out without a key: every shard's rows.
            out = bytearray()

            async def sink(chunk):
                out.extend(chunk)
            await conn.copy_from_query("select id from users", output=sink)
            assert sorted(map(int, out.split())) == keys
            # A failing COPY leaves nothing anywhere; the session goes on.
            with pytest.raises(asyncpg.InvalidTextRepresentationError):
                async with conn.transaction():
                    await conn.copy_to_table("users", source=_chunks(b"2001\tok\nbad\tx\n"),
                                             columns=["id", "name"])
            assert shards_holding(lab_tables, 2001) == []
            assert (await conn.fetch("select count(*) from users"))[0][0] == len(keys)
        finally:
            await conn.close()
    run(main())


async def _chunks(data, size=1000):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_cursors(px, lab_tables):
    """asyncpg's cursors are portals read with Execute row limits inside a
    transaction: on one shard they stream; over several pgshard gathers the
    merged result and hands it out in the same chunks; Cursor.forward() is
    SQL MOVE."""
    key = keys_on(px, "s1", 1)[0]
    other = keys_on(px, "s0", 1)[0]

    async def main():
        conn = await connect(px)
        try:
            await conn.execute("insert into users (id, name, tags) values ($1, 'c', $2)",
                               key, [str(i) for i in range(1000)])
            await conn.execute("insert into users (id, name) values ($1, 'o')", other)
            async with conn.transaction():
                got = [r["t"] async for r in conn.cursor(
                    "select unnest(tags)::int as t from users where id = $1 order by t", key,
                    prefetch=64)]
                assert got == list(range(1000))
                cur = await conn.cursor("select unnest(tags) from users where id = $1", key)
                assert [r[0] for r in await cur.fetch(10)] == [str(i) for i in range(10)]
                assert await cur.forward(5) == 5
                assert [r[0] for r in await cur.fetch(3)] == ["15", "16", "17"]
                assert await cur.fetchrow() is not None
            async with conn.transaction():
                got = [r["id"] async for r in conn.cursor("select id from users order by id",
                                                          prefetch=1)]
                assert got == sorted([key, other])
            assert (await conn.fetch("select count(*) from users"))[0][0] == 2
        finally:
            await conn.close()
    run(main())


def test_listen_notify(px):
    async def main():
        listener = await connect(px)
        notifier = await connect(px)
        got = asyncio.Queue()

        def on_notify(conn, pid, channel, payload):
            got.put_nowait(payload)
        try:
            await listener.add_listener("pgshard_it", on_notify)
            await notifier.execute("notify pgshard_it, 'hello'")
            await notifier.execute("notify pgshard_it, 'second'")
            assert await asyncio.wait_for(got.get(), 10) == "hello"
            assert await asyncio.wait_for(got.get(), 10) == "second"
            assert await listener.fetchval("select 1") == 1
            await listener.remove_listener("pgshard_it", on_notify)  # UNLISTEN
            assert await listener.fetchval("select 2") == 2
        finally:
            await listener.close()
            await notifier.close()
    run(main())


def advisory_locks(lab):
    """Advisory locks held on the shards' primaries."""
    held = 0
    for shard in ("s0", "s1"):
        with lab.connect_primary(shard) as conn:
            held += conn.execute("select count(*) from pg_locks where locktype = 'advisory'"
                                 ).fetchone()[0]
    return held


def test_pool(px, lab_tables):
    """asyncpg's own pool: connections acquired, used on both shards and
    released, concurrently. Each release runs asyncpg's reset, `SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`: it runs
    where the session's servers are (under cross_shard_writes = deny too)
    and releases a session advisory lock taken through the pool."""
    keys = keys_on(px, "s0", 3) + keys_on(px, "s1", 3)

    async def main():
        pool = await asyncpg.create_pool(url(px), min_size=2, max_size=3, timeout=10)
        try:
            async with pool.acquire() as conn:
                assert await conn.fetchval("select pg_try_advisory_lock(4242)") is True
                assert advisory_locks(lab_tables) == 1
            assert advisory_locks(lab_tables) == 0
            async def one(key):
                async with pool.acquire() as conn:
                    await conn.execute("insert into users (id, name) values ($1, 'p')", key)
                    return await conn.fetchval("select name from users where id = $1", key)
            assert await asyncio.gather(*(one(k) for k in keys)) == ["p"] * len(keys)
            # Another pooled connection reads from replicas, which may not
            # have replayed the other connections' writes yet.
            lab_tables.wait_caught_up()
            assert (await pool.fetch("select count(*) from users"))[0][0] == len(keys)
            async with pool.acquire() as conn:
                assert await conn.fetchval("show timezone") is not None
        finally:
            await pool.close()
    run(main())
    assert sorted(sum(rows_by_shard(lab_tables).values(), [])) == sorted(keys)
