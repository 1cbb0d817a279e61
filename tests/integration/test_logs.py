"""The slow-request log (log_min_duration_ms), in JSON and text: each line
names the request, its client (the id the client was given as its backend
pid), database, user, duration, the shards it ran on and its statement."""
import contextlib
import json

import psycopg

from support import wait_for


USERS_MAP = "[table.app.users]\ncolumn = id\ntype = bigint\nstrategy = hash\n"


@contextlib.contextmanager
def users_on_every_shard(lab):
    """An empty sharded table users on every shard, dropped afterwards."""
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as direct:
            direct.execute("drop table if exists users")
            direct.execute("create table users (id bigint primary key)")
    try:
        yield
    finally:
        for shard in lab.shards:
            with lab.connect_primary(shard.name) as direct:
                direct.execute("drop table if exists users")


def statements_on_shards(lab, like):
    """Per shard name, the first statement pg_stat_activity shows LIKE."""
    seen = {}
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as direct:
            rows = direct.execute("select query from pg_stat_activity where query like %s",
                                  (like,)).fetchall()
            if rows:
                seen[shard.name] = rows[0][0]
    return seen


def json_lines(px):
    out = []
    for line in px.log_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_slow_requests_in_json(shard_lab, sharded_proxy):
    px = sharded_proxy(log_format="json", log_min_duration_ms=150,
                       extra_ini=USERS_MAP)
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
    # Each shard's time: from the first message sent there to its last
    # ReadyForQuery, within the request's duration.
    name, ms = second["shard_ms"].split("=")
    assert name == "s1" and 200 <= float(ms) <= float(second["duration_ms"]), second
    assert "sqlstate" not in first


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
    assert " sqlstate=22012" in line, line


def test_trace_comments_name_the_request_on_the_server(shard_lab, sharded_proxy):
    import threading
    px = sharded_proxy(trace_comments="on", log_min_duration_ms=100,
                       extra_ini=USERS_MAP)
    with users_on_every_shard(shard_lab):
        with px.connect(autocommit=True) as conn:
            pid = conn.info.backend_pid
            # A read over both shards (a fan-out) and one hinted read: each
            # shard's server sees the request id in front of its text.
            worker = threading.Thread(target=conn.execute,
                                      args=("select pg_sleep(1), count(*) from users",))
            worker.start()
            seen = {}

            def on_both():
                seen.update(statements_on_shards(shard_lab, "/* pgshard_request=%pg_sleep%"))
                return len(seen) == 2
            wait_for(on_both, 10, message="the traced query on both shards")
            worker.join(10)
        ids = {q.split("*/")[0] for q in seen.values()}
        assert len(ids) == 1 and ids.pop().startswith(f"/* pgshard_request=c{pid}."), seen
        # The slow-request log names the same request.
        request = list(seen.values())[0].split("=")[1].split(" ")[0]
        wait_for(lambda: f"request={request}" in px.log_text(), 5,
                 message="the slow-request line of the traced request")



TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_client_traceparent_reaches_the_server_and_the_log(shard_lab, sharded_proxy):
    """sqlcommenter style: a W3C traceparent in a comment of the client's
    statement goes on to the shard with the statement, and the slow-request
    line carries it; an invalid one is not logged."""
    import threading
    px = sharded_proxy(log_format="json", log_min_duration_ms=100,
                       extra_ini=USERS_MAP)
    with users_on_every_shard(shard_lab):
        with px.connect(autocommit=True) as conn:
            # Extended protocol (a parameter): the text is in the Parse.
            sql = ("select pg_sleep(0.6), count(*) from users where id = %s "
                   f"/*controller='orders',traceparent='{TRACEPARENT}'*/")
            worker = threading.Thread(target=conn.execute, args=(sql, (7,)))
            worker.start()
            seen = {}

            def on_a_shard():
                seen.update(statements_on_shards(shard_lab, "select pg_sleep(0.6)%traceparent=%"))
                return bool(seen)
            wait_for(on_a_shard, 10, message="the statement with its comment on a shard")
            worker.join(10)
            assert len(seen) == 1, seen  # routed by its key: one shard
            assert TRACEPARENT in list(seen.values())[0]
            conn.execute("select pg_sleep(0.2) /* traceparent='00-bad' */")

        def slow():
            return [e for e in json_lines(px) if e.get("event") == "slow_request"]
        wait_for(lambda: len(slow()) >= 2, 5, message="two slow-request lines")
        traced = [e for e in slow() if "count(*)" in e.get("sql", "")]
        assert len(traced) == 1 and traced[0]["traceparent"] == TRACEPARENT, slow()
        assert traced[0]["shards"] == list(seen)[0]
        untraced = [e for e in slow() if "00-bad" in e.get("sql", "")]
        assert len(untraced) == 1 and "traceparent" not in untraced[0], untraced

