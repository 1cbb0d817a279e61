"""Models on pgshard's tables: Account on the sharded table dj_accounts
(hashed on id, an explicit bigint key the application chooses), Plan on
the reference table dj_plans (in no shard map: a copy on every shard), and
Ticket on the sharded table dj_tickets with Django's default auto id, which
pgshard cannot route (the key is not in the INSERT)."""
from django.contrib.postgres.fields import ArrayField
from django.db import models


class Plan(models.Model):
    id = models.IntegerField(primary_key=True)
    name = models.TextField()

    class Meta:
        db_table = "dj_plans"


class Account(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.TextField(null=True)
    tags = ArrayField(models.TextField(null=True), null=True)
    at = models.DateTimeField(null=True)
    amount = models.DecimalField(max_digits=40, decimal_places=20, null=True)
    data = models.BinaryField(null=True)
    plan = models.ForeignKey(Plan, null=True, on_delete=models.DO_NOTHING)

    class Meta:
        db_table = "dj_accounts"


class Ticket(models.Model):
    title = models.TextField()

    class Meta:
        db_table = "dj_tickets"
