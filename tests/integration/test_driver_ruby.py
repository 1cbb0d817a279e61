"""ruby-pg (Debian ruby-pg) through pgshard, in both pool modes: the checks of
drivers/harness.py, run by drivers/ruby/check.rb (named statements, SQL
cursors, COPY, results decoded in text and binary)."""
import os

import pytest

from drivers.harness import POOL_MODES, DriverRun

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drivers", "ruby", "check.rb")


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_ruby(replica_lab, replica_proxy, pool_mode):
    run = DriverRun(replica_lab, replica_proxy, pool_mode)
    out = run.run(["/usr/bin/ruby", SCRIPT])
    run.assert_common(out)
    assert out["cursor_key"]["fetches"] == 6  # five of 10 rows, then an empty one
