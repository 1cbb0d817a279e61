"""Django scenarios run by run.py. Each does what an application does and
returns what it observed (JSON-able); test_driver_django.py asserts on it
and on the rows each shard holds. Errors are caught and returned as their
SQLSTATE and message, so that the test sees them; the connection is then
used again to show the session survived."""
import datetime as dt
from decimal import Decimal

import psycopg2

from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Sum

from drivertest.models import Account, Plan, Ticket

WHEN = dt.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=dt.timezone.utc)
AMOUNT = Decimal("12345.678901234567890")
BLOB = bytes(range(256)) * 4
TAGS = ["a", "b c", 'q"uote', None, "é☃"]


def failure(exc):
    cause = exc.__cause__ or exc
    diag = getattr(cause, "diag", None)
    out = {"sqlstate": getattr(cause, "pgcode", None),
           "message": diag.message_primary if diag else str(cause),
           "type": type(exc).__name__}
    if exc.__context__ is not None and exc.__context__ is not exc.__cause__:
        out["during"] = failure(exc.__context__)  # an error it was raised while handling
    return out


def attempt(fn):
    """fn()'s result, or the failure it raised (a database error, Django's
    or, when Django cleans up after one, psycopg2's)."""
    try:
        return {"ok": fn()}
    except (DatabaseError, psycopg2.Error) as exc:
        return failure(exc)


def migrate():
    call_command("migrate", "drivertest", verbosity=0)
    with connection.cursor() as cur:
        cur.execute("select app, name from django_migrations where app = 'drivertest'")
        return {"applied": sorted(tuple(r) for r in cur.fetchall())}


def migrate_attempt():
    return attempt(lambda: call_command("migrate", "drivertest", verbosity=0))


def crud(k0, k1):
    out = {}
    Plan.objects.create(id=1, name="free")
    for key in (k0, k1):
        Account.objects.create(id=key, name=f"u{key}", plan_id=1)
    acc = Account.objects.select_related("plan").get(pk=k1)
    out["got"] = [acc.name, acc.plan.name]
    acc.name = "renamed"
    acc.save()  # UPDATE ... WHERE id = k1
    out["saved"] = Account.objects.get(pk=k1).name
    out["updated"] = Account.objects.filter(pk=k0).update(name="bulk")
    out["k0"] = Account.objects.values_list("name", flat=True).get(id=k0)
    out["deleted"] = Account.objects.get(pk=k0).delete()[0]
    out["gone"] = not Account.objects.filter(pk=k0).exists()
    return out


def keyless(keys):
    for key in keys:
        Account.objects.create(id=key, name=f"n{key}", amount=Decimal(key) / 8)
    return {
        "count": Account.objects.count(),
        "top": list(Account.objects.order_by("-id").values_list("id", flat=True)[:3]),
        "sum": str(Account.objects.aggregate(s=Sum("amount"))["s"]),
        "filtered": sorted(Account.objects.filter(name__in=[f"n{k}" for k in keys[:3]])
                           .values_list("id", flat=True)),
        "exists": Account.objects.filter(name="nobody").exists(),
        "grouped": list(Account.objects.values("plan_id").annotate(n=Count("id"))
                        .values_list("plan_id", "n")),
    }


def iterate(key, other, keyless=True):
    """QuerySet.iterator() reads through a server-side cursor: Django sends
    DECLARE ... NO SCROLL CURSOR WITH HOLD FOR ... in autocommit."""
    Account.objects.create(id=key, name="it", tags=[str(i) for i in range(50)])
    Account.objects.create(id=other, name="other")
    out = {"one_shard": attempt(lambda: [a.name for a in
                                         Account.objects.filter(pk=key).iterator(chunk_size=10)])}
    if keyless:
        out["keyless"] = attempt(lambda: sorted(a.id for a in
                                                Account.objects.all().iterator(chunk_size=10)))
    out["after"] = Account.objects.filter(pk__in=[key, other]).count()
    return out


def atomic(k0, k1):
    """transaction.atomic on one shard (commit, rollback) and over two."""
    out = {}
    with transaction.atomic():
        Account.objects.create(id=k1[0], name="a")
        Account.objects.filter(pk=k1[0]).update(name="b")
    try:
        with transaction.atomic():
            Account.objects.create(id=k1[1], name="gone")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    out["one_shard"] = sorted(Account.objects.filter(pk__in=k1).values_list("id", "name"))

    def two_shards():
        with transaction.atomic():
            Account.objects.create(id=k0[0], name="x")
            Account.objects.create(id=k0[1], name="x")
            Account.objects.create(id=k1[2], name="x")
        return True
    out["two_shards"] = attempt(two_shards)
    try:
        with transaction.atomic():
            Account.objects.create(id=k0[2], name="y")
            Account.objects.create(id=k1[3], name="y")
            out["inside"] = Account.objects.filter(name="y").count()
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    out["after"] = sorted(Account.objects.values_list("id", flat=True))
    return out


def lock_by_key(key):
    Account.objects.create(id=key, name="lock", amount=1)
    with transaction.atomic():
        acc = Account.objects.select_for_update().get(pk=key)
        acc.amount += 1
        acc.save(update_fields=["amount"])
    with transaction.atomic():
        n = Account.objects.select_for_update().filter(pk=key).count()
    return {"amount": str(Account.objects.get(pk=key).amount), "locked": n}


def types(key, null_key):
    Account.objects.create(id=key, name="héllo", tags=TAGS, at=WHEN, amount=AMOUNT, data=BLOB)
    Account.objects.create(id=null_key)
    a = Account.objects.get(pk=key)
    b = Account.objects.get(pk=null_key)
    merged = list(Account.objects.order_by("id").values_list("id", "amount", "at"))
    return {
        "same": [a.name == "héllo", a.tags == TAGS, a.at == WHEN, a.amount == AMOUNT,
                 bytes(a.data) == BLOB],
        "nulls": [b.name, b.tags, b.at, b.amount, b.data],
        "merged": [[i, amt == AMOUNT if amt is not None else None, at == WHEN if at else None]
                   for i, amt, at in merged],
    }


def errors(key):
    out = {}
    Account.objects.create(id=key, name="first")
    out["duplicate"] = attempt(lambda: Account.objects.create(id=key, name="again"))
    out["after_duplicate"] = Account.objects.get(pk=key).name
    # Django's default auto id: the INSERT names no key.
    out["auto_id"] = attempt(lambda: Ticket.objects.create(title="no key"))
    out["keyless_update"] = attempt(lambda: Account.objects.update(name="everyone"))
    out["after"] = Account.objects.get(pk=key).name

    def in_atomic():
        with transaction.atomic():
            Account.objects.get(pk=key)
            Ticket.objects.create(title="no key")
    out["in_atomic"] = attempt(in_atomic)
    out["after_atomic"] = Account.objects.filter(pk=key).count()
    return out
