import django.contrib.postgres.fields
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Plan",
            fields=[
                ("id", models.IntegerField(primary_key=True, serialize=False)),
                ("name", models.TextField()),
            ],
            options={"db_table": "dj_plans"},
        ),
        migrations.CreateModel(
            name="Account",
            fields=[
                ("id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("name", models.TextField(null=True)),
                ("tags", django.contrib.postgres.fields.ArrayField(
                    base_field=models.TextField(null=True), null=True, size=None)),
                ("at", models.DateTimeField(null=True)),
                ("amount", models.DecimalField(decimal_places=20, max_digits=40, null=True)),
                ("data", models.BinaryField(null=True)),
                ("plan", models.ForeignKey(null=True, on_delete=models.DO_NOTHING,
                                           to="drivertest.plan")),
            ],
            options={"db_table": "dj_accounts"},
        ),
        migrations.CreateModel(
            name="Ticket",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                           verbose_name="ID")),
                ("title", models.TextField()),
            ],
            options={"db_table": "dj_tickets"},
        ),
    ]
