"""PDO pgsql (Debian php-pgsql, php-cli) through pgshard, in both pool modes:
the checks of drivers/harness.py, run by drivers/php/check.php (statements
prepared on the server and reused across transactions, bytea as a LOB, SQL
cursors, pgsqlCopyFromArray, pgsqlGetNotify). PDO reads results in text
only: no binary check. Server-side prepares only in check "prepared" (the
program says why)."""
import os

import pytest

from drivers.harness import POOL_MODES, DriverRun

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drivers", "php", "check.php")


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_php(replica_lab, replica_proxy, pool_mode):
    run = DriverRun(replica_lab, replica_proxy, pool_mode)
    out = run.run(["/usr/bin/php", SCRIPT])
    run.assert_common(out, skip=("types_binary",))
    assert out["copy"]["ok"] is True
    assert out["cursor_key"]["fetches"] == 6  # five of 10 rows, then an empty one
