"""DBD::Pg (Debian libdbd-pg-perl, DBI) through pgshard, in both pool modes:
the checks of drivers/harness.py, run by drivers/perl/check.pl (statements
prepared on the server and reused across transactions, arrays and bytea,
SQL cursors, COPY with pg_putcopydata, LISTEN with pg_notifies). DBD::Pg
reads results in text only: no binary check."""
import os

import pytest

from drivers.harness import POOL_MODES, DriverRun

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drivers", "perl", "check.pl")


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_perl(replica_lab, replica_proxy, pool_mode):
    run = DriverRun(replica_lab, replica_proxy, pool_mode)
    out = run.run(["/usr/bin/perl", SCRIPT])
    run.assert_common(out, skip=("types_binary",))
    assert out["cursor_key"]["fetches"] == 6  # five of 10 rows, then an empty one
