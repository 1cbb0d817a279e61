"""TLS on both sides of pgshard.

Client side: [pgshard] client_tls with tls_cert_file / tls_key_file /
tls_ca_file, through psql, psycopg and the hand-written client (for the
SQLSTATEs libpq does not expose and for what a driver will not do).
Server side: the TLS lab (a primary that takes TLS connections only, its
certificate from the lab's CA) behind node conninfos with sslmode.

Certificates are made per module with the openssl program into a temporary
directory: a CA, pgshard's server certificate (CN and subjectAltName
localhost only, so that host 127.0.0.1 does not match it), client
certificates for users app and someone_else, and a second CA that signed
nothing pgshard presents.
"""
import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

import pgwire
from conftest import PGSHARD, PGSHARDCTL, PG_BIN
from support import clients_by_worker, wait_for

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl program is not installed")


# ---------------------------------------------------------------- certificates

def _openssl(cwd, *args):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)


def _make_ca(d, name):
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "30",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(d / f"{name}.key", 0o600)
    return d / f"{name}.crt"


def _make_cert(d, name, cn, ca, usage, san=None):
    _openssl(d, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    ext = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={usage}"]
    if san:
        ext.append(f"subjectAltName={san}")
    (d / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "30", "-extfile", f"{name}.ext")
    os.chmod(d / f"{name}.key", 0o600)
    return d / f"{name}.crt", d / f"{name}.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    c = SimpleNamespace(dir=d)
    c.ca = _make_ca(d, "ca")
    c.other_ca = _make_ca(d, "other_ca")
    c.server_crt, c.server_key = _make_cert(d, "server", "localhost", "ca", "serverAuth",
                                            san="DNS:localhost")
    c.other_server_crt, c.other_server_key = _make_cert(d, "other_server", "localhost",
                                                        "other_ca", "serverAuth",
                                                        san="DNS:localhost")
    c.app_crt, c.app_key = _make_cert(d, "client_app", "app", "ca", "clientAuth")
    c.else_crt, c.else_key = _make_cert(d, "client_else", "someone_else", "ca", "clientAuth")
    c.stranger_crt, c.stranger_key = _make_cert(d, "client_stranger", "app", "other_ca",
                                                "clientAuth")
    return c


def tls_keys(certs, mode, ca=False, **more):
    """[pgshard] overrides for client_tls = MODE with pgshard's certificate."""
    keys = dict(client_tls=mode, tls_cert_file=certs.server_crt, tls_key_file=certs.server_key)
    if ca:
        keys["tls_ca_file"] = certs.ca
    keys.update(more)
    return keys


def verify_full(certs, **more):
    """libpq options that verify pgshard as host localhost (reached at
    127.0.0.1: pgshard listens there only)."""
    opts = dict(sslmode="verify-full", sslrootcert=str(certs.ca), host="localhost",
                hostaddr="127.0.0.1")
    opts.update(more)
    return opts


def ssl_in_use(conn):
    return bool(conn.pgconn.ssl_in_use)


# ---------------------------------------------------------------- raw TLS client

def raw_tls(px, certs, cert=None, key=None):
    """A RawConn that asked for TLS, got 'S' and made the handshake (CA
    verified, host name not checked); CERT/KEY: a client certificate."""
    raw = px.raw()
    raw.send(pgwire.ssl_request())
    assert raw.read_byte() == b"S"
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    raw.sock = ctx.wrap_socket(raw.sock, server_hostname="localhost")
    return raw


# ---------------------------------------------------------------- client side

def test_disable_answers_n(proxy, certs):
    """client_tls = disable (the default) answers an SSLRequest 'N' even with
    a certificate configured, so sslmode=require fails on the client side."""
    px = proxy(tls_cert_file=certs.server_crt, tls_key_file=certs.server_key)
    with px.raw() as raw:
        raw.send(pgwire.ssl_request())
        assert raw.read_byte() == b"N"
        raw.login()
        assert raw.simple_query("select 'plain'") == [["plain"]]
    with pytest.raises(psycopg.OperationalError) as exc:
        px.connect(sslmode="require")
    assert "SSL" in str(exc.value)
    with px.connect(autocommit=True, sslmode="prefer") as conn:
        assert not ssl_in_use(conn)


def test_require_psycopg(proxy, certs):
    px = proxy(**tls_keys(certs, "require"))
    with px.connect(autocommit=True, sslmode="require") as conn:
        assert ssl_in_use(conn)
        assert conn.execute("select 'over tls'").fetchone() == ("over tls",)
        # Extended protocol, parameters, a prepared statement reused.
        for i in range(3):
            assert conn.execute("select %s::int + 1", (i,), prepare=True).fetchone() == (i + 1,)
        # A large result (about 8 MB): many records, several reads and writes.
        rows = conn.execute("select i, repeat('x', 800) from generate_series(1, 10000) i").fetchall()
        assert len(rows) == 10000 and rows[-1][0] == 10000 and len(rows[-1][1]) == 800
        # A large statement from the client (4 MB of text in one message).
        big = "y" * (4 * 1024 * 1024)
        assert conn.execute("select length(%s)", (big,)).fetchone() == (len(big),)
    px.assert_alive()


def test_require_refuses_plain_client(proxy, certs):
    px = proxy(**tls_keys(certs, "require"))
    with px.raw() as raw:
        with pytest.raises(pgwire.ServerError) as exc:
            raw.login()
        assert exc.value.sqlstate == "28000", exc.value.fields
        assert exc.value.severity == "FATAL"
        assert exc.value.message.startswith("pgshard:"), exc.value.message
        assert "SSL" in exc.value.message
        assert raw.closed_within(3)
    with pytest.raises(psycopg.OperationalError) as exc:
        px.connect(sslmode="disable")
    assert "pgshard:" in str(exc.value)
    # A cancel request needs no TLS (libpq sends it in the clear).
    with px.raw() as raw:
        raw.send(struct.pack("!iiii", 16, pgwire.CANCEL_REQUEST_CODE, 1, 2))
        assert raw.closed_within(3)
    with px.connect(autocommit=True, sslmode="prefer") as conn:
        assert ssl_in_use(conn)


def test_allow_serves_both(proxy, certs):
    px = proxy(**tls_keys(certs, "allow"))
    with px.connect(autocommit=True, sslmode="disable") as conn:
        assert not ssl_in_use(conn)
        assert conn.execute("select 1").fetchone() == (1,)
    with px.connect(autocommit=True, sslmode="require") as conn:
        assert ssl_in_use(conn)
        assert conn.execute("select 2").fetchone() == (2,)


def test_verify_full_psycopg_and_psql(proxy, certs):
    px = proxy(**tls_keys(certs, "require"))
    with px.connect(autocommit=True, **verify_full(certs)) as conn:
        assert ssl_in_use(conn)
        assert conn.execute("select 'verified'").fetchone() == ("verified",)
    psql = PG_BIN / "psql"
    conninfo = px.conninfo(**verify_full(certs))
    out = subprocess.run([str(psql), conninfo, "-XAtc", "select 'psql ' || 6 * 7", "-c",
                          "\\conninfo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout
    assert "psql 42" in out.stdout
    assert "SSL connection" in out.stdout, out.stdout
    out = subprocess.run([str(psql), px.conninfo(sslmode="require"), "-XAtc", "select 'req'"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    assert out.returncode == 0 and "req" in out.stdout, out.stdout


def test_wrong_ca_and_wrong_host_fail_on_the_client(proxy, certs):
    px = proxy(**tls_keys(certs, "require"))
    with pytest.raises(psycopg.OperationalError) as exc:
        px.connect(**verify_full(certs, sslrootcert=str(certs.other_ca)))
    assert "certificate verify failed" in str(exc.value)
    # The certificate names localhost, not 127.0.0.1.
    with pytest.raises(psycopg.OperationalError) as exc:
        px.connect(sslmode="verify-full", sslrootcert=str(certs.ca))
    assert "does not match host name" in str(exc.value)
    # verify-ca does not check the name.
    with px.connect(autocommit=True, sslmode="verify-ca", sslrootcert=str(certs.ca)) as conn:
        assert ssl_in_use(conn)
    with px.connect(autocommit=True, sslmode="require") as conn:
        assert conn.execute("select 'still here'").fetchone() == ("still here",)


def test_verify_ca_needs_a_client_certificate(proxy, certs):
    px = proxy(**tls_keys(certs, "verify-ca", ca=True))
    # No certificate: the handshake fails.
    with pytest.raises(psycopg.OperationalError):
        px.connect(sslmode="require")
    # One from another CA: the handshake fails too.
    with pytest.raises(psycopg.OperationalError):
        px.connect(sslmode="require", sslcert=str(certs.stranger_crt),
                   sslkey=str(certs.stranger_key))
    # verify-ca does not look at the name: someone_else's certificate logs in as app.
    for crt, key in ((certs.app_crt, certs.app_key), (certs.else_crt, certs.else_key)):
        with px.connect(autocommit=True, sslmode="require", sslcert=str(crt),
                        sslkey=str(key)) as conn:
            assert conn.execute("select 'cert ok'").fetchone() == ("cert ok",)
    with px.raw() as raw:
        with pytest.raises(pgwire.ServerError) as exc:
            raw.login()
        assert exc.value.sqlstate == "28000"


def test_verify_full_checks_the_common_name(proxy, certs):
    px = proxy(**tls_keys(certs, "verify-full", ca=True))
    with px.connect(autocommit=True, sslmode="require", sslcert=str(certs.app_crt),
                    sslkey=str(certs.app_key)) as conn:
        assert conn.execute("select current_user is not null").fetchone() == (True,)
    with raw_tls(px, certs, certs.else_crt, certs.else_key) as raw:
        with pytest.raises(pgwire.ServerError) as exc:
            raw.login()
        assert exc.value.sqlstate == "28000", exc.value.fields
        assert exc.value.message.startswith("pgshard:")
        assert "verify-full" in exc.value.message and "CN mismatch" in exc.value.message
    with raw_tls(px, certs, certs.app_crt, certs.app_key) as raw:
        raw.login()
        assert raw.simple_query("select 'raw tls'") == [["raw tls"]]


def test_plaintext_after_ssl_request_is_never_read(proxy, certs):
    """CVE-2021-23214: bytes that arrive with the SSLRequest are refused; bytes
    sent in the clear after the 'S' are taken as a TLS handshake and fail it:
    none is answered as a startup packet."""
    px = proxy(**tls_keys(certs, "allow"))
    with px.raw() as raw:
        raw.send(pgwire.ssl_request() + pgwire.startup_packet("app", "app"))
        fields = raw.read_error()
        assert fields["C"] == "08P01", fields
        assert raw.closed_within(3)
    with px.raw() as raw:
        raw.send(pgwire.ssl_request())
        assert raw.read_byte() == b"S"
        raw.send(pgwire.startup_packet("app", "app"))
        raw.sock.settimeout(5)
        data = b""
        try:
            while True:
                chunk = raw.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        # At most a TLS alert record (content type 21), never an 'R' or 'E'.
        assert data == b"" or data[0] == 21, data[:40]
    # A second SSLRequest inside TLS is refused.
    with raw_tls(px, certs) as raw:
        raw.send(pgwire.ssl_request())
        fields = raw.read_error()
        assert fields["C"] == "08P01", fields
    with px.connect(autocommit=True, sslmode="require") as conn:
        assert conn.execute("select 'unharmed'").fetchone() == ("unharmed",)


@pytest.mark.parametrize("side", ["client", "server", "both"])
def test_slow_reader_and_pipelining(proxy, tls_lab, certs, side):
    """Output over the high-water mark while the client reads nothing: pgshard
    stops reading the server and resumes when the client drains, with input
    already decrypted held back meanwhile (client TLS: the client's queued
    queries; server TLS: the server's rows). Then a thousand queries in one
    write, each one a transaction given back to the pool and taken again."""
    client_tls = side in ("client", "both")
    overrides = tls_keys(certs, "require") if client_tls else {}
    if side in ("server", "both"):
        overrides.update(lab=tls_lab, node_options=tls_node(tls_lab))
    px = proxy(pool_size=1, **overrides)
    raw = raw_tls(px, certs) if client_tls else px.raw()
    with raw:
        raw.sock.settimeout(30)
        raw.login()
        sql = "select i, repeat('z', 1000) from generate_series(1, 20000) i"
        raw.send(pgwire.query(sql) * 3)
        time.sleep(1.0)
        for _ in range(3):
            rows = raw.read_query_result()
            assert len(rows) == 20000 and rows[-1][0] == "20000"
        # About 20 kB sent, 60 kB of answers: both fit the sockets' buffers,
        # so one thread sends then reads (an SSL socket is not for two).
        raw.send(b"".join(pgwire.query(f"select {i}") for i in range(1000)))
        for i in range(1000):
            assert raw.read_query_result() == [[str(i)]]
        assert raw.simple_query("select 'drained'") == [["drained"]]


def test_tls_client_waits_for_a_server(proxy, certs):
    """A TLS client whose queries arrive while the pool's one server is
    taken: it waits, not reading; its queries already decrypted are run
    when the server comes back, the rest read from OpenSSL's buffers."""
    px = proxy(pool_size=1, **tls_keys(certs, "require"))
    with px.connect(sslmode="require") as holder:
        holder.execute("select 'holding the server'")
        with raw_tls(px, certs) as raw:
            raw.sock.settimeout(30)
            raw.login()
            raw.send(b"".join(pgwire.query(f"select {i}, repeat('k', 100)") for i in range(1500)))
            time.sleep(0.5)
            holder.commit()
            for i in range(1500):
                assert raw.read_query_result() == [[str(i), "k" * 100]]


def test_psycopg_pipeline_over_tls(proxy, certs):
    px = proxy(**tls_keys(certs, "require"))
    with px.connect(autocommit=True, sslmode="require") as conn:
        with conn.pipeline():
            cursors = [conn.execute("select %s::int, repeat('v', 2000)", (i,)) for i in range(300)]
        assert [c.fetchone()[0] for c in cursors] == list(range(300))


@pytest.mark.parametrize("auth", ["scram-sha-256", "md5"])
def test_scram_channel_binding(proxy, certs, auth):
    """Over TLS, SCRAM-SHA-256-PLUS is offered first and libpq binds the
    login to the connection (tls-server-end-point); in the clear, or with md5,
    there is nothing to bind to."""
    px = proxy(auth=auth, **tls_keys(certs, "allow"))
    if auth == "scram-sha-256":
        for binding in ("require", "prefer", "disable"):
            with px.connect(autocommit=True, sslmode="require", channel_binding=binding) as conn:
                assert conn.execute("select 'bound'").fetchone() == ("bound",)
        with raw_tls(px, certs) as raw:
            raw.send(pgwire.startup_packet("app", "app"))
            kind, payload = raw.read_message()
            assert kind == "R" and struct.unpack("!i", payload[:4])[0] == 10
            assert payload[4:].split(b"\0")[:2] == [b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]
        with px.raw() as raw:
            raw.send(pgwire.startup_packet("app", "app"))
            kind, payload = raw.read_message()
            assert payload[4:].split(b"\0")[:2] == [b"SCRAM-SHA-256", b""]
    else:
        with pytest.raises(psycopg.OperationalError) as exc:
            px.connect(sslmode="require", channel_binding="require")
        assert "channel binding" in str(exc.value)
    with pytest.raises(psycopg.OperationalError) as exc:
        px.connect(sslmode="disable", channel_binding="require")
    assert "channel binding" in str(exc.value)
    with px.connect(autocommit=True, sslmode="require", channel_binding="prefer") as conn:
        assert conn.execute("select 'prefer'").fetchone() == ("prefer",)


# ---------------------------------------------------------------- config

def run_check(config_path):
    return subprocess.run([str(PGSHARDCTL), "check", str(config_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)


def line_of(path, key):
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.startswith(key + " "):
            return number
    raise AssertionError(f"no {key} in {path}")


@pytest.mark.parametrize("case", ["missing_cert", "missing_key", "mismatched_key", "not_pem",
                                  "no_cert_for_require", "no_ca_for_verify"])
def test_bad_tls_config_is_refused_with_its_line(proxy, certs, tmp_path, case):
    px = proxy()  # a valid config, rewritten below
    keys = tls_keys(certs, "require")
    bad_key = "client_tls"
    if case == "missing_cert":
        keys["tls_cert_file"], bad_key = tmp_path / "nope.crt", "tls_cert_file"
    elif case == "missing_key":
        keys["tls_key_file"], bad_key = tmp_path / "nope.key", "tls_key_file"
    elif case == "mismatched_key":
        keys["tls_key_file"], bad_key = certs.app_key, "tls_key_file"
    elif case == "not_pem":
        junk = tmp_path / "junk.crt"
        junk.write_text("not a certificate\n")
        keys["tls_cert_file"], bad_key = junk, "tls_cert_file"
    elif case == "no_cert_for_require":
        del keys["tls_cert_file"]
        del keys["tls_key_file"]
    elif case == "no_ca_for_verify":
        keys["client_tls"] = "verify-full"
    px.apply(keys)
    px.write_config()
    out = run_check(px.config_path)
    assert out.returncode != 0, out.stdout
    line = line_of(px.config_path, bad_key)
    assert f":{line}:" in out.stdout, out.stdout
    # A reload with it keeps the running config; the log names the line.
    px.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f":{line}: {bad_key}" in px.log_text() or
             f":{line}: client_tls" in px.log_text(), 15, message="the reload's error")
    px.assert_alive()
    # pgshard refuses to start with it.
    proc = subprocess.run([str(PGSHARD), "-c", str(px.config_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=30)
    assert proc.returncode != 0
    assert f":{line}:" in proc.stdout, proc.stdout


def test_reload_swaps_the_certificate(proxy, certs):
    px = proxy(**tls_keys(certs, "require"))
    with px.connect(autocommit=True, **verify_full(certs)) as conn:
        assert ssl_in_use(conn)
    px.reconfigure(tls_cert_file=certs.other_server_crt, tls_key_file=certs.other_server_key)

    def other_ca_verifies():
        with px.connect(autocommit=True,
                        **verify_full(certs, sslrootcert=str(certs.other_ca))) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    wait_for(other_ca_verifies, 15, interval=0.2, message="the new certificate")
    with pytest.raises(psycopg.OperationalError):
        px.connect(**verify_full(certs))
    # Turned off by a reload: 'N' again.
    px.reconfigure(client_tls="disable")

    def plain_again():
        with px.raw() as raw:
            raw.send(pgwire.ssl_request())
            return raw.read_byte() == b"N"
    wait_for(plain_again, 15, interval=0.2, message="client_tls = disable")


# ---------------------------------------------------------------- server side

def tls_node(tls_lab, mode="verify-full", rootcert=None):
    return f"sslmode={mode} sslrootcert={rootcert or tls_lab.ca_file}"


def test_tls_only_server_end_to_end(proxy, tls_lab, certs):
    """pgshard to a server that takes TLS only, sslmode=verify-full, and TLS
    to the client too: queries, extended protocol, a large result both ways,
    COPY in and out."""
    px = proxy(lab=tls_lab, node_options=tls_node(tls_lab), **tls_keys(certs, "allow"))
    with tls_lab.connect_primary() as direct:
        direct.execute("drop table if exists tls_items")
        direct.execute("create table tls_items (id int primary key, payload text)")
    for sslmode in ("require", "disable"):
        with px.connect(autocommit=True, sslmode=sslmode) as conn:
            assert ssl_in_use(conn) == (sslmode == "require")
            # The server side is TLS whatever the client's side is.
            assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()"
                                ).fetchone() == (True,)
            for i in range(5):
                assert conn.execute("select %s::int * 2", (i,), prepare=True).fetchone() == (2 * i,)
            rows = conn.execute("select i, repeat('q', 1000) from generate_series(1, 8000) i"
                                ).fetchall()
            assert len(rows) == 8000 and rows[-1] == (8000, "q" * 1000)
            big = "w" * (3 * 1024 * 1024)
            assert conn.execute("select md5(%s)", (big,)).fetchone()[0] == \
                hashlib.md5(big.encode()).hexdigest()
            conn.execute("delete from tls_items")
            with conn.cursor() as cur:
                with cur.copy("copy tls_items (id, payload) from stdin") as copy:
                    for i in range(20000):
                        copy.write_row((i, f"row {i} " + "p" * 100))
                assert conn.execute("select count(*), max(id) from tls_items").fetchone() == \
                    (20000, 19999)
                out = bytearray()
                with cur.copy("copy (select * from tls_items order by id) to stdout") as copy:
                    for block in copy:
                        out += block
                lines = bytes(out).splitlines()
                assert len(lines) == 20000 and lines[-1].startswith(b"19999\trow 19999 ")
            with conn.transaction():
                conn.execute("insert into tls_items values (-1, 'in tx')")
            assert conn.execute("select payload from tls_items where id = -1").fetchone() == \
                ("in tx",)
    px.assert_alive()


def test_server_allow_mode_moves_to_tls(proxy, tls_lab):
    """sslmode=allow tries the clear first; the server refuses it and libpq
    tries again with TLS on a new socket, which pgshard follows."""
    px = proxy(lab=tls_lab, node_options="sslmode=allow")
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()"
                            ).fetchone() == (True,)
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select 'again'").fetchone() == ("again",)


def test_server_prefer_against_a_plain_server(proxy):
    """sslmode=prefer to a server without TLS: libpq hears 'N' and goes on in
    the clear on the same socket."""
    px = proxy(node_options="sslmode=prefer")
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()"
                            ).fetchone() == (False,)
        assert conn.execute("select count(*) from generate_series(1, 1000)").fetchone() == (1000,)


def test_server_plain_refused_and_wrong_certificate(proxy, tls_lab, certs):
    """A node pgshard cannot log in to over TLS gives the client a clean
    08006 naming the shard, not a hang."""
    for options, reason in (("sslmode=disable", "no encryption"),
                            (tls_node(tls_lab, rootcert=certs.ca), "certificate verify failed"),
                            ("sslmode=verify-full sslrootcert=" + str(tls_lab.ca_file) +
                             " host=localhost hostaddr=127.0.0.1", None)):
        px = proxy(lab=tls_lab, node_options=options, server_connect_timeout_ms=5000)
        if reason is None:
            # localhost is in the lab's certificate: this one works.
            with px.connect(autocommit=True) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            continue
        with px.raw(timeout=20) as raw:
            with pytest.raises(pgwire.ServerError) as exc:
                raw.login()
            assert exc.value.sqlstate == "08006", exc.value.fields
            assert exc.value.message.startswith("pgshard:")
            assert "shard s0" in exc.value.message, exc.value.message
            assert reason in exc.value.message, exc.value.message
        with pytest.raises(psycopg.OperationalError) as err:
            px.connect()
        assert "shard s0" in str(err.value)


def wait_servers_closed(tls_lab):
    """Until the primary has no client backend of database app but the
    monitor's: pgshard closed its servers (idle timeout)."""
    with tls_lab.connect_primary() as direct:
        wait_for(lambda: direct.execute(
            "select count(*) from pg_stat_activity where datname = 'app' and "
            "application_name <> 'pgshard monitor' and pid <> pg_backend_pid() and "
            "backend_type = 'client backend'").fetchone()[0] == 0, 20,
            message="idle servers closed")


def test_server_tls_with_pool_reuse_and_cancel(proxy, tls_lab):
    """Servers over TLS go back to the pool and are reused; a cancel reaches
    a TLS server; a server closed by pgshard says goodbye cleanly."""
    px = proxy(lab=tls_lab, node_options=tls_node(tls_lab), pool_size=2,
               server_idle_timeout_ms=500)
    pids = set()
    for i in range(6):
        with px.connect(autocommit=True) as conn:
            pids.add(conn.execute("select pg_backend_pid()").fetchone()[0])
    assert len(pids) <= 2, pids
    with px.connect(autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        timer.join()
        assert conn.execute("select 'after cancel'").fetchone() == ("after cancel",)
    # Idle servers closed by pgshard (server_idle_timeout_ms): gone from the
    # server without an error logged about the connection.
    wait_servers_closed(tls_lab)


def test_tls_server_moves_between_workers(proxy, tls_lab):
    """pool_size 1 over two workers: the one TLS server goes to whichever
    worker's client needs it, its libpq TLS session carried on by the next
    loop (records keep flowing both ways), and says goodbye cleanly at the
    end."""
    px = proxy(lab=tls_lab, node_options=tls_node(tls_lab), pool_size=1, workers=2,
               server_idle_timeout_ms=1000)
    groups = clients_by_worker(px, 1)
    conns = [groups[0][0], groups[1][0]]
    try:
        pids = set()
        for i in range(20):
            conn = conns[i % 2]
            pid, text = conn.execute("select pg_backend_pid(), repeat(%s, 20000)",
                                     (str(i % 10),)).fetchone()
            assert text == str(i % 10) * 20000
            pids.add(pid)
        assert len(pids) == 1, pids
        with tls_lab.connect_primary() as direct:
            assert direct.execute("select ssl from pg_stat_ssl where pid = %s",
                                  (pids.pop(),)).fetchone() == (True,)
    finally:
        for conn in conns:
            conn.close()
    wait_servers_closed(tls_lab)
    px.assert_alive()
