"""Run Django scenarios in this process against a pgshard and print what
each observed as JSON (tests/integration/test_driver_django.py starts one
process per test: Django's settings are configured once per process).

    python3 run.py PORT OPTIONS_JSON SCENARIO:ARGS_JSON ...

OPTIONS_JSON is merged into DATABASES["default"] (e.g.
{"DISABLE_SERVER_SIDE_CURSORS": true}). Each scenario is a function of
scenarios.py called with ARGS_JSON as keyword arguments; the output is one
line "RESULT {scenario: observations, ...}".
"""
import json
import os
import sys

import django
from django.conf import settings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def configure(port, options):
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "app", "USER": "app", "PASSWORD": "secret",
        "HOST": "127.0.0.1", "PORT": str(port),
        "OPTIONS": {"connect_timeout": 10},
    }
    database.update(options)
    settings.configure(
        DATABASES={"default": database},
        INSTALLED_APPS=["drivertest"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()


def main():
    configure(sys.argv[1], json.loads(sys.argv[2]))
    import scenarios
    results = {}
    for spec in sys.argv[3:]:
        name, _, args = spec.partition(":")
        results[name] = getattr(scenarios, name)(**json.loads(args or "{}"))
    print("RESULT " + json.dumps(results, default=str))


if __name__ == "__main__":
    main()
