"""Client authentication: trust, md5, scram-sha-256, and the errors.

psycopg/libpq show a failed login only as text, so the SQLSTATEs are read
from the ErrorResponse by the hand-written client in pgwire.py.
"""
import psycopg
import pytest

from pgwire import ServerError

METHODS = ["scram-sha-256", "md5", "trust"]
# AuthenticationRequest code the proxy must send first for each method.
FIRST_AUTH_CODE = {"scram-sha-256": 10, "md5": 5, "trust": 0}


def raw_login_error(px, **kwargs):
    with px.raw() as raw:
        with pytest.raises(ServerError) as exc:
            raw.login(**kwargs)
        # A failed login ends the connection.
        assert raw.closed_within(3), "connection left open after a failed login"
    return exc.value


@pytest.mark.parametrize("method", METHODS)
def test_login_succeeds(proxy, method):
    px = proxy(auth=method)
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select 'in'").fetchone() == ("in",)
        assert conn.info.parameter_status("server_version").startswith("15")
        assert conn.info.backend_pid != 0
    with px.raw() as raw:
        raw.login(user="app", password="secret")
        assert raw.auth_codes[0] == FIRST_AUTH_CODE[method], raw.auth_codes
        assert raw.auth_codes[-1] == 0
        assert raw.backend_key is not None, "no BackendKeyData"
        for name in ("server_version", "client_encoding", "DateStyle", "TimeZone",
                     "integer_datetimes", "standard_conforming_strings"):
            assert name in raw.parameters, f"no ParameterStatus for {name}"
        assert raw.simple_query("select 6 * 7") == [["42"]]
    # The admin user logs in to an ordinary database too.
    with px.connect(user="admin", password="adminpw", autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("method", ["scram-sha-256", "md5"])
def test_wrong_password(proxy, method):
    px = proxy(auth=method)
    err = raw_login_error(px, user="app", password="not-the-password")
    assert err.sqlstate == "28P01", err.fields
    assert err.severity == "FATAL"
    assert err.message.startswith("pgshard:"), err.message
    with pytest.raises(psycopg.OperationalError) as exc:
        px.connect(password="wrong")
    assert "pgshard:" in str(exc.value)
    # Another user's password is wrong too.
    err = raw_login_error(px, user="app", password="adminpw")
    assert err.sqlstate == "28P01"
    px.assert_alive()


def test_trust_ignores_password(proxy):
    px = proxy(auth="trust")
    with px.connect(password=None, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    with px.connect(password="anything", autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_user(proxy, method):
    px = proxy(auth=method)
    err = raw_login_error(px, user="nosuchuser", password="secret")
    assert err.sqlstate == "28000", err.fields
    assert err.message.startswith("pgshard:"), err.message
    with pytest.raises(psycopg.OperationalError) as exc:
        px.connect(user="nosuchuser")
    assert "pgshard:" in str(exc.value)
    px.assert_alive()


@pytest.mark.parametrize("method", METHODS)
def test_unknown_database(proxy, method):
    px = proxy(auth=method)
    err = raw_login_error(px, user="app", password="secret", database="nosuchdb")
    assert err.sqlstate == "3D000", err.fields
    assert err.message.startswith("pgshard:"), err.message
    with pytest.raises(psycopg.OperationalError) as exc:
        px.connect(dbname="nosuchdb")
    assert "pgshard:" in str(exc.value)
    px.assert_alive()


def test_many_logins_in_a_row(proxy):
    """SCRAM state is per connection: 50 sequential logins all succeed and
    interleaved failures do not disturb them."""
    px = proxy(auth="scram-sha-256")
    for i in range(50):
        if i % 10 == 5:
            with pytest.raises(psycopg.OperationalError):
                px.connect(password="bad")
        with px.connect(autocommit=True) as conn:
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
