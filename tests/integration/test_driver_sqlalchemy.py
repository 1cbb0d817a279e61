"""A real ORM through pgshard: SQLAlchemy 1.4 (Debian's python3-sqlalchemy)
over psycopg2.

On the replicated two-shard lab (pydrivers.py), in both pool modes: the ORM
on the sharded table (a declarative model with an explicit bigint primary
key, add/commit/get/update/delete, a relationship to a reference table),
reflection of the tables through pgshard, Core selects (by key and merged),
transactions committed and rolled back (over two shards under 2pc), types,
errors with their SQLSTATE, and server-side cursors (stream_results).
SQLAlchemy's own connection pool sits in front of pgshard's, as in
applications.
"""
import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, declarative_base, relationship

from pydrivers import POOL_MODES, PLANS, USERS, keys_on, make_tables, rows_by_shard, \
    shards_holding, start_proxy

Base = declarative_base()


class Plan(Base):
    __tablename__ = "plans"
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    name = sa.Column(sa.Text, nullable=False)


class User(Base):
    __tablename__ = "users"
    id = sa.Column(sa.BigInteger, primary_key=True, autoincrement=False)
    name = sa.Column(sa.Text)
    tags = sa.Column(ARRAY(sa.Text))
    at = sa.Column(sa.DateTime(timezone=True))
    amount = sa.Column(sa.Numeric)
    data = sa.Column(sa.LargeBinary)
    plan_id = sa.Column(sa.Integer, sa.ForeignKey("plans.id"))
    plan = relationship(Plan, lazy="joined")


@pytest.fixture
def lab_tables(replica_lab):
    """users (with a plan_id) and plans, empty, on every shard."""
    return make_tables(replica_lab, {"plans": PLANS,
                                     "users": USERS + ", plan_id int references plans (id)"})


def engine_for(px, **kwargs):
    return sa.create_engine(f"postgresql+psycopg2://app:secret@127.0.0.1:{px.port}/app",
                            future=True, pool_size=3, max_overflow=0,
                            connect_args={"connect_timeout": 10}, **kwargs)


@pytest.fixture(params=POOL_MODES)
def px(request, replica_proxy, lab_tables):
    return start_proxy(replica_proxy, request.param)


@pytest.fixture
def engine(px):
    eng = engine_for(px)
    yield eng
    eng.dispose()


def test_orm_crud_by_key(px, engine, lab_tables):
    lab = lab_tables
    k0, k1 = keys_on(px, "s0", 1)[0], keys_on(px, "s1", 1)[0]
    with Session(engine) as session:
        session.add(Plan(id=1, name="free"))
        session.commit()  # a reference table: every shard
        assert shards_holding(lab, 1, table="plans") == ["s0", "s1"]
        for key in (k0, k1):  # one shard per transaction under deny
            session.add(User(id=key, name=f"u{key}", plan_id=1))
            session.commit()
    assert shards_holding(lab, k0) == ["s0"] and shards_holding(lab, k1) == ["s1"]
    with Session(engine) as session:
        user = session.get(User, k1)
        assert user.name == f"u{k1}" and user.plan.name == "free"  # joined to plans
        user.name = "renamed"
        session.commit()
        assert session.get(User, k1).name == "renamed"
        session.delete(session.get(User, k0))
        session.commit()
        assert session.get(User, k0) is None
    assert shards_holding(lab, k0) == []
    with lab.connect_primary("s1") as s1:
        assert s1.execute("select name from users where id = %s", (k1,)).fetchone() == (
            "renamed",)


def test_orm_queries_merged(px, engine, lab_tables):
    keys = keys_on(px, "s0", 4) + keys_on(px, "s1", 4, start=500)
    with Session(engine) as session:
        session.add(Plan(id=7, name="pro"))
        session.commit()
        for key in keys:
            session.add(User(id=key, name=f"n{key}", amount=Decimal(key) / 8, plan_id=7))
            session.commit()
    with Session(engine) as session:
        # Query.count() counts a subquery (SELECT count(*) FROM (SELECT ...
        # FROM users) AS anon_1): it runs on every shard, the counts added;
        # select(func.count()) counts the table itself.
        assert session.query(User).count() == len(keys)
        assert session.query(User).filter(User.id.in_(keys[:3])).count() == 3
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == len(keys)
        top = session.query(User).order_by(User.id.desc()).limit(3).all()
        assert [u.id for u in top] == sorted(keys, reverse=True)[:3]
        assert all(u.plan.name == "pro" for u in top)  # joined to the reference table
        total = session.scalar(sa.select(sa.func.sum(User.amount)))
        assert total == sum(Decimal(k) / 8 for k in keys)
        some = session.scalars(sa.select(User).where(User.id.in_(keys[2:6]))
                               .order_by(User.name)).all()
        assert sorted(u.id for u in some) == sorted(keys[2:6])
        by_name = session.scalars(sa.select(User.id).where(User.name == f"n{keys[5]}")).all()
        assert by_name == [keys[5]]


def test_reflection(engine, lab_tables):
    """SQLAlchemy's reflection: its catalog queries (pg_table_is_visible()
    and friends, known reads) run on one shard, catalogs being alike on
    every shard."""
    meta = sa.MetaData()
    with engine.connect() as conn:
        meta.reflect(bind=conn, only=["users", "plans"])
        # Other suites' tables may be there too (the lab is shared).
        assert {"plans", "users"} <= set(sa.inspect(conn).get_table_names())
        conn.commit()
    users = meta.tables["users"]
    assert [c.name for c in users.columns] == ["id", "name", "tags", "at", "amount", "data",
                                               "plan_id"]
    assert isinstance(users.c.id.type, sa.BigInteger)
    assert isinstance(users.c.tags.type, ARRAY)
    assert isinstance(users.c.at.type, sa.DateTime) and users.c.at.type.timezone
    assert [c.name for c in users.primary_key] == ["id"]
    assert [fk.target_fullname for fk in users.foreign_keys] == ["plans.id"]
    # Core through the reflected tables.
    with engine.begin() as conn:
        conn.execute(meta.tables["plans"].insert(), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    with engine.connect() as conn:
        assert conn.execute(sa.select(meta.tables["plans"].c.name)
                            .order_by(meta.tables["plans"].c.id)).scalars().all() == ["a", "b"]


def test_core_and_rollback(px, engine, lab_tables):
    users = User.__table__
    k1, k2 = keys_on(px, "s1", 2)
    with engine.begin() as conn:
        conn.execute(users.insert().values(id=k1, name="core"))
        assert conn.execute(sa.select(users.c.name).where(users.c.id == k1)).scalar() == "core"
    with pytest.raises(RuntimeError):
        with engine.begin() as conn:
            conn.execute(users.insert().values(id=k2, name="gone"))
            conn.execute(users.update().where(users.c.id == k1).values(name="changed"))
            raise RuntimeError("roll it back")
    assert shards_holding(lab_tables, k2) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(users.c.name).where(users.c.id == k1)).scalar() == "core"
        assert conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 1
        # An explicit rollback on a Connection, then a savepoint rolled back.
        conn.execute(users.update().where(users.c.id == k1).values(name="x"))
        conn.rollback()
        with conn.begin():
            nested = conn.begin_nested()
            conn.execute(users.insert().values(id=k2, name="nested"))
            nested.rollback()
            conn.execute(users.update().where(users.c.id == k1).values(name="kept"))
    assert rows_by_shard(lab_tables) == {"s0": [], "s1": [k1]}
    with lab_tables.connect_primary("s1") as s1:
        assert s1.execute("select name from users").fetchall() == [("kept",)]


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_session_over_two_shards_2pc(replica_proxy, lab_tables, pool_mode):
    px = start_proxy(replica_proxy, pool_mode, cross_shard_writes="2pc")
    engine = engine_for(px)
    k0, k1 = keys_on(px, "s0", 2), keys_on(px, "s1", 2)
    try:
        with Session(engine) as session:
            # One flush: psycopg2's execute_values sends one multi-row INSERT
            # whose rows pgshard splits between the shards.
            session.add_all([User(id=k0[0], name="x"), User(id=k1[0], name="x")])
            session.commit()
        assert rows_by_shard(lab_tables) == {"s0": [k0[0]], "s1": [k1[0]]}
        with Session(engine) as session:
            session.add_all([User(id=k0[1], name="y"), User(id=k1[1], name="y")])
            session.flush()
            session.execute(sa.update(User).values(name="z"))
            assert session.scalar(sa.select(sa.func.count()).where(User.name == "z")) == 4
            session.rollback()
        assert rows_by_shard(lab_tables) == {"s0": [k0[0]], "s1": [k1[0]]}
    finally:
        engine.dispose()


def test_types_round_trip(px, engine, lab_tables):
    when = dt.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=dt.timezone.utc)
    amount = Decimal("12345.678901234567890")
    blob = bytes(range(256)) * 4
    tags = ["a", "b c", 'q"uote', None, "é☃"]
    key, null_key = keys_on(px, "s1", 1)[0], keys_on(px, "s0", 1)[0]
    with Session(engine) as session:
        session.add(User(id=key, name="héllo", tags=tags, at=when, amount=amount, data=blob))
        session.commit()
        session.add(User(id=null_key))
        session.commit()
    with Session(engine) as session:
        user = session.get(User, key)
        assert (user.name, user.tags, user.at, user.amount, user.data) == (
            "héllo", tags, when, amount, blob)
        empty = session.get(User, null_key)
        assert (empty.name, empty.tags, empty.at, empty.amount, empty.data) == (None,) * 5
        merged = session.execute(sa.select(User.id, User.amount, User.at).order_by(User.id)).all()
        assert [tuple(r) for r in merged] == sorted([(key, amount, when), (null_key, None, None)])


def test_errors_and_refusals(px, engine, lab_tables):
    key = keys_on(px, "s0", 1)[0]
    with Session(engine) as session:
        session.add(User(id=key, name="first"))
        session.commit()
        session.add(User(id=key, name="again"))
        with pytest.raises(sa_exc.IntegrityError) as exc:
            session.commit()
        assert exc.value.orig.pgcode == "23505"
        session.rollback()
        assert session.get(User, key).name == "first"
        # A keyless UPDATE under cross_shard_writes = deny.
        with pytest.raises(sa_exc.NotSupportedError) as exc:
            session.execute(sa.update(User).values(name="everyone"))
        assert exc.value.orig.pgcode == "0A000"
        assert exc.value.orig.diag.message_primary.startswith("pgshard:")
        session.rollback()
        assert session.scalar(sa.select(sa.func.count()).where(User.name == "first")) == 1
        # A row without its key (an auto id the model does not have): the
        # statement names no shard, refused, never guessed.
        with pytest.raises(sa_exc.DBAPIError) as exc:
            session.execute(sa.text("insert into users (name) values ('no key')"))
        assert exc.value.orig.pgcode == "0A000"
        assert exc.value.orig.diag.message_primary.startswith("pgshard:")
        session.rollback()
    assert shards_holding(lab_tables, key) == ["s0"]


def test_stream_results(px, engine, lab_tables):
    """stream_results makes psycopg2 use a named cursor (DECLARE/FETCH):
    over a keyless query pgshard gathers the merged rows and FETCH hands
    them out."""
    keys = keys_on(px, "s0", 1) + keys_on(px, "s1", 1)
    with Session(engine) as session:
        session.add_all([User(id=k, name="s") for k in keys[:1]])
        session.commit()
    with Session(engine) as session:
        session.add_all([User(id=k, name="s") for k in keys[1:]])
        session.commit()
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, max_row_buffer=1).execute(
            sa.select(User.__table__.c.id).order_by(User.id))
        assert [r[0] for r in result] == sorted(keys)
        # The options stay on the connection: this one streams too.
        assert conn.execute(sa.select(sa.func.count()).select_from(User.__table__)).scalar() == 2
        conn.rollback()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(User.__table__)).scalar() == 2
