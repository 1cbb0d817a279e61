"""pgJDBC (Debian libpostgresql-jdbc-java) through pgshard, in both pool modes.

drivers/jdbc/DriverCheck.java runs the checks of drivers/harness.py and
JDBC's own: prepareThreshold 5 and 1, batches with and without
reWriteBatchedInserts, setFetchSize cursors, binaryTransfer. What pgJDBC
sent (Parse of a named statement, Execute with a row limit) is read from its
own log by the program. Every connection but one says
assumeMinServerVersion=9.0 (the program says why; check "pinning").
"""
import shutil
import subprocess
from pathlib import Path

import pytest

from drivers.harness import POOL_MODES, DriverRun

JAR = "/usr/share/java/postgresql.jar"
SOURCE = Path(__file__).resolve().parent / "drivers" / "jdbc" / "DriverCheck.java"


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    out = tmp_path_factory.mktemp("jdbc")
    subprocess.run([shutil.which("javac") or "javac", "-cp", JAR, "-d", str(out), str(SOURCE)],
                   check=True, timeout=120)
    return out


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_jdbc(replica_lab, replica_proxy, classes, pool_mode):
    run = DriverRun(replica_lab, replica_proxy, pool_mode, extra_roles={
        "prep1": ("both", 2), "batch_rewrite": ("s1", 6),
        "batch_rewrite_mixed": ("both", 3), "batch_plain": ("both", 3),
        "batch_auto": ("both", 2)})
    out = run.run(["java", "-cp", f"{JAR}:{classes}", "DriverCheck"])
    run.assert_common(out)
    # pgJDBC's default setup SETs (extra_float_digits, application_name
    # through the extended protocol) are taken when they run, as a simple
    # Query's: the untuned client is not pinned and, idle, holds no server
    # in transaction pooling (like the tuned one, assumeMinServerVersion=9.0,
    # which sends them as startup parameters).
    clients = sorted(map(tuple, out["pinning"]["clients"]))
    assert [pinned for pinned, _ in clients] == ["f", "f"], clients
    if pool_mode == "transaction":
        assert [servers for _, servers in clients] == [0, 0], clients
    else:  # its login server, and a replica's when its read went there
        assert all(servers in (1, 2) for _, servers in clients), clients
    k = run.keys
    # prepareThreshold 5 (the default): four unnamed Parses, then one named
    # statement parsed once and only bound in every later transaction.
    parses = out["prepared"]["parses"]
    assert parses[:4] == ["null"] * 4 and len(parses) == 5 and parses[4].startswith("S_"), parses
    # prepareThreshold=1: named from the first execution, parsed once.
    p1 = out["prepare_threshold_1"]
    assert p1["names"] == [f"name-{key}" for key in k["prep1"]]
    assert len(p1["parses"]) == 1 and p1["parses"][0].startswith("S_"), p1
    run.assert_placed(k["prep1"])
    # Batches in a transaction: rewritten into multi-row INSERTs (6 rows: 4
    # and 2) over one shard, or sent one INSERT at a time over both.
    rewrite, plain = out["batch_rewrite"], out["batch_plain"]
    assert (rewrite["rows"], rewrite["multi_row_parses"]) == (6, 2), rewrite
    assert (plain["rows"], plain["multi_row_parses"]) == (6, 0), plain
    run.assert_placed(k["batch_rewrite"] + k["batch_plain"])
    # A rewritten batch whose rows belong to both shards: each shard is
    # bound its own rows of the multi-row INSERT, committed by 2PC.
    mixed = out["batch_rewrite_mixed"]
    assert mixed["rows"] == len(k["batch_rewrite_mixed"]) and "sqlstate" not in mixed, mixed
    assert mixed["multi_row_parses"] >= 1, mixed
    assert mixed["after"] == 1
    run.assert_placed(k["batch_rewrite_mixed"])
    # In autocommit pgJDBC sends the whole batch before one Sync: single-row
    # INSERTs on both shards in one implicit transaction.
    assert out["batch_autocommit"] == {"check": "batch_autocommit", "ok": True, "after": 1}
    run.assert_placed(k["batch_auto"])
    # setFetchSize(10) over one shard: 50 rows in six row-limited Executes
    # (five full, one empty). Over both shards, setFetchSize(2): every id
    # (checked by the harness), two at a time, as PostgreSQL hands them out.
    assert out["cursor_key"]["limited_executes"] == 6, out["cursor_key"]
    keyless = out["cursor_keyless"]
    assert keyless["limited_executes"] == len(keyless["ids"]) // 2 + 1, keyless
