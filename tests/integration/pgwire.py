"""Just enough of the PostgreSQL v3 wire protocol, by hand, to misbehave.

The integration tests use psycopg for everything a well-behaved client does.
This module is for what a driver will not do: oversized or lying length
fields, unknown message types, SSLRequest followed by plaintext, a client that
disappears mid-query, and reading the exact ErrorResponse fields (SQLSTATE,
severity, message) that libpq does not expose for failed logins.

Everything is blocking sockets with timeouts; a test that expects a reply and
gets none fails with socket.timeout instead of hanging.
"""
import base64
import hashlib
import hmac
import os
import socket
import struct
import threading
import time

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class ProtocolError(AssertionError):
    """The peer said something this client did not expect."""


class ServerError(Exception):
    """An ErrorResponse, with its fields by one-letter code."""

    def __init__(self, fields):
        self.fields = fields
        super().__init__(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")

    @property
    def sqlstate(self):
        return self.fields.get("C")

    @property
    def message(self):
        return self.fields.get("M", "")

    @property
    def severity(self):
        return self.fields.get("V") or self.fields.get("S")


def parse_error_fields(payload):
    """ErrorResponse/NoticeResponse body -> {'S': ..., 'C': ..., 'M': ...}."""
    fields = {}
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        code = chr(payload[pos])
        end = payload.index(b"\0", pos + 1)
        fields[code] = payload[pos + 1:end].decode("utf-8", "replace")
        pos = end + 1
    return fields


# ---- message builders ----

def message(type_byte, payload=b""):
    """A typed message: type byte, int32 length (self-inclusive), payload."""
    if isinstance(type_byte, str):
        type_byte = type_byte.encode()
    return type_byte + struct.pack("!i", len(payload) + 4) + payload


def startup_packet(user="app", database="app", **params):
    body = struct.pack("!i", PROTOCOL_3_0)
    items = {"user": user, "database": database}
    items.update(params)
    for key, value in items.items():
        body += key.encode() + b"\0" + str(value).encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def ssl_request():
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def gssenc_request():
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def query(sql):
    return message("Q", sql.encode() + b"\0")


def terminate():
    return message("X")


# ---- client-side authentication ----

def _md5_response(user, password, salt):
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


class _Scram:
    """SCRAM-SHA-256 client without channel binding, as libpq does it."""

    def __init__(self, password):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.client_first_bare = "n=,r=" + self.nonce
        self.auth_message = None
        self.salted = None

    def first(self):
        return ("n,," + self.client_first_bare).encode()

    def final(self, server_first):
        server_first = server_first.decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise ProtocolError("SCRAM server nonce does not extend ours")
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        self.salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.new(self.salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = "c=biws,r=" + attrs["r"]
        self.auth_message = ",".join([self.client_first_bare, server_first, without_proof])
        signature = hmac.new(stored_key, self.auth_message.encode(), hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return (without_proof + ",p=" + base64.b64encode(proof).decode()).encode()

    def verify(self, server_final):
        attrs = dict(item.split("=", 1) for item in server_final.decode().split(","))
        server_key = hmac.new(self.salted, b"Server Key", hashlib.sha256).digest()
        expected = hmac.new(server_key, self.auth_message.encode(), hashlib.sha256).digest()
        if base64.b64decode(attrs.get("v", "")) != expected:
            raise ProtocolError("SCRAM server signature does not verify")


# ---- connection ----

class RawConn:
    """One TCP connection speaking the protocol by hand."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.parameters = {}
        self.backend_key = None
        self.auth_codes = []  # every AuthenticationRequest code received

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def send_in_background(self, data):
        """Send DATA from a thread, ignoring the peer closing on us.

        Used for messages the proxy must refuse from their header: it may
        answer and close before we finish writing, and the answer must still
        be readable here.
        """
        def run():
            try:
                self.sock.sendall(data)
            except OSError:
                pass
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by peer")
        self.buf += chunk

    def recv_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_byte(self):
        return self.recv_exact(1)

    def read_message(self):
        """-> (type as str, payload bytes). Raises EOFError on close."""
        header = self.recv_exact(5)
        type_byte, length = header[:1], struct.unpack("!i", header[1:])[0]
        if length < 4:
            raise ProtocolError(f"server sent message {type_byte!r} with length {length}")
        return type_byte.decode("latin-1"), self.recv_exact(length - 4)

    def read_error(self):
        """Read messages until an ErrorResponse; return its fields."""
        while True:
            kind, payload = self.read_message()
            if kind == "E":
                return parse_error_fields(payload)
            if kind in ("N", "S", "K"):
                continue
            raise ProtocolError(f"expected ErrorResponse, got {kind!r} {payload[:80]!r}")

    def closed_within(self, timeout):
        """True when the peer closes (EOF or reset) within TIMEOUT seconds.

        Any further messages that arrive first are discarded."""
        deadline = time.monotonic() + timeout
        self.buf = b""
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
        return False

    # ---- startup and auth ----

    def login(self, user="app", password="secret", database="app", **params):
        """Send a startup packet and authenticate. Returns when ReadyForQuery
        arrives; raises ServerError on an ErrorResponse."""
        self.send(startup_packet(user, database, **params))
        return self.authenticate(user, password)

    def authenticate(self, user, password):
        scram = None
        while True:
            kind, payload = self.read_message()
            if kind == "E":
                raise ServerError(parse_error_fields(payload))
            if kind == "R":
                code = struct.unpack("!i", payload[:4])[0]
                self.auth_codes.append(code)
                if code == 0:
                    continue
                if code == 3:
                    self.send(message("p", password.encode() + b"\0"))
                elif code == 5:
                    self.send(message("p", _md5_response(user, password, payload[4:8]).encode() + b"\0"))
                elif code == 10:
                    mechanisms = payload[4:].split(b"\0")
                    if b"SCRAM-SHA-256" not in mechanisms:
                        raise ProtocolError(f"no SCRAM-SHA-256 in {mechanisms!r}")
                    scram = _Scram(password)
                    first = scram.first()
                    self.send(message("p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
                elif code == 11:
                    self.send(message("p", scram.final(payload[4:])))
                elif code == 12:
                    scram.verify(payload[4:])
                else:
                    raise ProtocolError(f"unsupported authentication request {code}")
            elif kind == "S":
                name, value = payload.split(b"\0")[:2]
                self.parameters[name.decode()] = value.decode()
            elif kind == "K":
                self.backend_key = struct.unpack("!ii", payload)
            elif kind == "N":
                continue
            elif kind == "Z":
                return payload
            else:
                raise ProtocolError(f"unexpected message {kind!r} during startup")

    # ---- simple query ----

    def simple_query(self, sql):
        """Run SQL by the simple protocol. Returns a list of rows (lists of
        str/None) of the last result; raises ServerError on an error (after
        reading up to ReadyForQuery)."""
        self.send(query(sql))
        return self.read_query_result()

    def read_query_result(self):
        rows, error = [], None
        while True:
            kind, payload = self.read_message()
            if kind == "T":
                rows = []
            elif kind == "D":
                count = struct.unpack("!h", payload[:2])[0]
                pos, row = 2, []
                for _ in range(count):
                    length = struct.unpack("!i", payload[pos:pos + 4])[0]
                    pos += 4
                    if length < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos:pos + length].decode())
                        pos += length
                rows.append(row)
            elif kind == "E":
                error = ServerError(parse_error_fields(payload))
            elif kind == "Z":
                if error:
                    raise error
                return rows
