"""The slow-request log (log_min_duration_ms), in JSON and text: each line
names the request, its client (the id the client was given as its backend
pid), database, user, duration, the shards it ran on and its statement."""
import json

import psycopg

from support import wait_for


def json_lines(px):
    out = []
    for line in px.log_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_slow_requests_in_json(shard_lab, sharded_proxy):
    px = sharded_proxy(log_format="json", log_min_duration_ms=150,
                       extra_ini="[table.app.users]\ncolumn = id\ntype = bigint\nstrategy = hash\n")
    with px.connect(autocommit=True) as conn:
        conn.execute("select 1")  # fast: not logged
        conn.execute("select pg_sleep(0.3)")
        conn.execute("/* pgshard: shard=s1 */ select pg_sleep(0.2)", prepare=True)
        pid = conn.info.backend_pid
    every = json_lines(px)
    assert every and all({"ts", "level", "pid", "msg"} <= set(e) for e in every)

    def slow():
        return [e for e in json_lines(px) if e.get("event") == "slow_request"]
    wait_for(lambda: len(slow()) >= 2, 5, message="two slow-request lines")
    lines = slow()
    assert len(lines) == 2, lines
    first, second = lines
    assert first["sql"] == "select pg_sleep(0.3)" and float(first["duration_ms"]) >= 300
    assert first["client"] == str(pid) and first["db"] == "app" and first["user"] == "app"
    assert first["request"].startswith(f"c{pid}.") and first["tx"] == "I"
    assert "error" not in first
    assert second["sql"].endswith("select pg_sleep(0.2)") and second["shards"] == "s1"
    assert first["request"] != second["request"]


def test_slow_requests_in_text_with_an_error(proxy):
    px = proxy(log_min_duration_ms=0)
    with px.connect(autocommit=True) as conn:
        try:
            conn.execute("select 1/0")
        except psycopg.Error:
            pass
    wait_for(lambda: "slow request" in px.log_text(), 5, message="a slow-request line")
    line = [ln for ln in px.log_text().splitlines() if "slow request" in ln and "1/0" in ln][0]
    assert " error=true" in line and " db=app" in line and " sql=select 1/0" in line, line
