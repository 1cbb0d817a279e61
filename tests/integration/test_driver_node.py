"""node-postgres (Debian node-pg, pg-cursor bundled) through pgshard, in both
pool modes.

drivers/node/check.js runs the checks of drivers/harness.py with a
pg.Client: named statements reused across transactions, pg-cursor for the
cursors. Not covered: COPY (node-pg needs pg-copy-streams, which Debian
does not package) and binary results (node-pg 8.8's are malformed, below).
"""
import os

import pytest

from drivers.harness import POOL_MODES, DriverRun

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drivers", "node", "check.js")
# Where Debian's node-* packages put modules (Debian's node looks there
# anyway; a node from elsewhere needs telling).
ENV = dict(os.environ, NODE_PATH="/usr/share/nodejs")


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_node(replica_lab, replica_proxy, pool_mode):
    run = DriverRun(replica_lab, replica_proxy, pool_mode, extra_roles={"queued": ("both", 3)})
    out = run.run(["/usr/bin/node", SCRIPT], env=ENV)
    run.assert_common(out, skip=("copy", "types_binary"))
    # node-pg 8.8's `binary: true` sends a Bind whose result formats end
    # after their count (1): PostgreSQL itself answers 08P01 ("insufficient
    # data left in message"), pgshard the same, and the session goes on.
    binary = out["types_binary"]
    assert (binary["sqlstate"], binary["after"]) == ("08P01", 1), binary
    assert binary["message"].startswith("pgshard:"), binary
    assert out["cursor_key"]["reads"] == 6  # five of 10 rows, then an empty one
    assert out["queued"]["rows"] == 6
    run.assert_placed(run.keys["queued"])
