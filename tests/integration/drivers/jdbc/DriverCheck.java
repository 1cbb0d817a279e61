/*
 * pgJDBC through pgshard: the checks of tests/integration/drivers/harness.py
 * plus JDBC's own habits (prepareThreshold, batches, fetch-size cursors,
 * binaryTransfer). Run by test_driver_jdbc.py as
 *   java -cp postgresql.jar:DIR DriverCheck URL DENY_URL NAME=KEY[,KEY...] ...
 * Prints one JSON object a line; a check that throws prints its error and
 * the run goes on. What the driver sent is read from its own FINEST log
 * ("FE=> Parse(stmt=...)", "FE=> Execute(portal=...,limit=...)").
 */
import java.io.StringReader;
import java.math.BigDecimal;
import java.net.URI;
import java.sql.*;
import java.text.MessageFormat;
import java.time.OffsetDateTime;
import java.util.*;
import java.util.logging.*;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class DriverCheck {
  static String url, denyUrl;
  static final Map<String, String> keys = new HashMap<>();
  static final List<String> sent = Collections.synchronizedList(new ArrayList<>());

  interface Body {
    void run(Map<String, Object> r) throws Exception;
  }

  public static void main(String[] args) throws Exception {
    url = args[0];
    denyUrl = args[1];
    for (int i = 2; i < args.length; i++) {
      String[] kv = args[i].split("=", 2);
      keys.put(kv[0], kv[1]);
    }
    captureDriverLog();

    check("connect", r -> {
      try (Connection c = connect(url, ""); Statement s = c.createStatement()) {
        ResultSet rs = s.executeQuery("select 1");
        rs.next();
        r.put("one", rs.getInt(1));
      }
    });
    try (Connection c = connect(url, "")) {
      common(c);
    }
    jdbcOwn();
  }

  /* ---- the checks every driver's program runs ---- */

  static void common(Connection c) throws Exception {
    check("crud", r -> {
      int n = 0;
      try (PreparedStatement ins = c.prepareStatement("insert into users (id, name) values (?, ?)")) {
        for (String role : new String[] {"crud_a", "crud_b", "deleted"}) {
          ins.setLong(1, key(role));
          ins.setString(2, "name-" + key(role));
          n += ins.executeUpdate();
        }
      }
      r.put("inserted", n);
      r.put("read", one(c, "select name from users where id = ?", key("crud_a")));
      try (PreparedStatement up = c.prepareStatement("update users set name = ? where id = ?")) {
        up.setString(1, "updated");
        up.setLong(2, key("crud_b"));
        r.put("updated", up.executeUpdate());
      }
      try (PreparedStatement del = c.prepareStatement("delete from users where id = ?")) {
        del.setLong(1, key("deleted"));
        r.put("deleted", del.executeUpdate());
      }
      r.put("left", one(c, "select count(*) from users where id = ?", key("deleted")));
    });
    check("merged", r -> {
      r.put("count", one(c, "select count(*) from users"));
      r.put("ids", column(c, "select id from users order by id desc limit 2"));
    });
    check("ref", r -> {
      c.setAutoCommit(false);
      update(c, "insert into ref (k, v) values (?, ?)", 1, "one");
      c.commit();
      c.setAutoCommit(true);
      r.put("read", one(c, "select v from ref where k = ?", 1));
    });
    check("tx1", r -> {
      c.setAutoCommit(false);
      insertNamed(c, key("tx1_commit"));
      c.commit();
      insertNamed(c, key("tx1_rollback"));
      c.rollback();
      c.setAutoCommit(true);
    });
    check("tx2", r -> {
      c.setAutoCommit(false);
      insertNamed(c, key("tx2_commit_a"));
      insertNamed(c, key("tx2_commit_b"));
      c.commit();
      insertNamed(c, key("tx2_rollback_a"));
      insertNamed(c, key("tx2_rollback_b"));
      c.rollback();
      c.setAutoCommit(true);
    });
    /* One PreparedStatement each for the insert and the select, reused over
     * a transaction per key: past prepareThreshold (5) pgJDBC parses a named
     * statement once and then only binds it, whichever server pgshard gives
     * the next transaction. */
    check("prepared", r -> {
      r.put("parses", preparedOverTransactions(c, keys("prep"), r));
    });
    check("types_text", r -> types(r, "binaryTransfer=false", key("types_text")));
    check("types_binary", r -> types(r, "binaryTransfer=true&prepareThreshold=-1", key("types_binary")));
    check("unique", r -> {
      try {
        update(c, "insert into users (id, name) values (?, ?)", key("crud_a"), "again");
      } catch (SQLException e) {
        failure(r, e);
      }
      r.put("after", one(c, "select 1"));
    });
    check("refused", r -> {
      try (Connection d = connect(denyUrl, "")) {
        try {
          update(d, "update users set name = ?", "everywhere");
        } catch (SQLException e) {
          failure(r, e);
        }
        r.put("after", one(d, "select 1"));
      }
    });
    /* Inside a transaction: under 2pc a COPY over several shards needs one. */
    check("copy", r -> {
      c.setAutoCommit(false);
      StringBuilder rows = new StringBuilder();
      for (long k : keys("copy")) rows.append(k).append("\tname-").append(k).append("\n");
      CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
      r.put("rows", copy.copyIn("copy users (id, name) from stdin", new StringReader(rows.toString())));
      c.commit();
      c.setAutoCommit(true);
    });
    /* setFetchSize with autocommit off: a portal read 10 rows per Execute. */
    check("cursor_key", r -> {
      insertNamed(c, key("cursor"));
      c.setAutoCommit(false);
      int before = sent.size();
      try (PreparedStatement s = c.prepareStatement(
               "select g, u.name from users u, generate_series(1, 50) g where u.id = ? order by g")) {
        s.setFetchSize(10);
        s.setLong(1, key("cursor"));
        long rows = 0, sum = 0;
        try (ResultSet rs = s.executeQuery()) {
          while (rs.next()) {
            rows++;
            sum += rs.getLong(1);
          }
        }
        r.put("rows", rows);
        r.put("sum", sum);
      }
      r.put("limited_executes", countSent(before, "FE=> Execute(portal=C_", "limit=10"));
      c.commit();
      c.setAutoCommit(true);
    });
    check("cursor_keyless", r -> {
      c.setAutoCommit(false);
      int before = sent.size();
      try (PreparedStatement s = c.prepareStatement("select id from users order by id")) {
        s.setFetchSize(2);
        List<Object> ids = new ArrayList<>();
        try (ResultSet rs = s.executeQuery()) {
          while (rs.next()) ids.add(rs.getLong(1));
        }
        r.put("ids", ids);
        c.commit();
      } catch (SQLException e) {
        failure(r, e);
        c.rollback();
      }
      r.put("limited_executes", countSent(before, "FE=> Execute(portal=C_", "limit=2"));
      c.setAutoCommit(true);
      r.put("after", one(c, "select 1"));
    });
    check("notify", r -> {
      try (Connection listener = connect(url, ""); Connection notifier = connect(url, "")) {
        update(listener, "listen drivers_chan");
        update(notifier, "notify drivers_chan, 'hello through pgshard'");
        PGNotification[] got = listener.unwrap(PGConnection.class).getNotifications(10000);
        if (got != null && got.length > 0) {
          r.put("channel", got[0].getName());
          r.put("payload", got[0].getParameter());
        }
      }
    });
  }

  /* ---- JDBC's own ---- */

  static void jdbcOwn() {
    /* pinned and servers of each client of database app, as the admin
     * console's SHOW CLIENTS says, with one tuned and one untuned idle
     * connection open. */
    check("pinning", r -> {
      try (Connection tuned = connect(url, ""); Connection untuned = connectUntuned(url, "");
           Connection admin = connectUntuned(url.replace("app:secret@", "admin:adminpw@")
                                                 .replaceFirst("/app$", "/pgshard"),
                                             "preferQueryMode=simple")) {
        one(tuned, "select 1");
        one(untuned, "select 1");
        List<Object> clients = new ArrayList<>();
        try (Statement s = admin.createStatement(); ResultSet rs = s.executeQuery("show clients")) {
          while (rs.next())
            if (rs.getString("database").equals("app"))
              clients.add(Arrays.asList(rs.getString("pinned"), rs.getLong("servers")));
        }
        r.put("clients", clients);
      }
    });
    check("prepare_threshold_1", r -> {
      try (Connection c = connect(url, "prepareThreshold=1")) {
        r.put("parses", preparedOverTransactions(c, keys("prep1"), r));
      }
    });
    for (String role : new String[] {"batch_rewrite", "batch_rewrite_mixed", "batch_plain"}) {
      check(role, r -> {
        try (Connection c = connect(url, "reWriteBatchedInserts=" + !role.equals("batch_plain"))) {
          c.setAutoCommit(false);
          int before = sent.size();
          try (PreparedStatement ins = c.prepareStatement("insert into users (id, name) values (?, ?)")) {
            for (long k : keys(role)) {
              ins.setLong(1, k);
              ins.setString(2, "name-" + k);
              ins.addBatch();
            }
            int total = 0;
            for (int n : ins.executeBatch()) total += n == Statement.SUCCESS_NO_INFO ? 1 : n;
            r.put("rows", total);
            c.commit();
          } catch (SQLException e) {
            failure(r, e.getNextException() != null ? e.getNextException() : e);
            c.rollback();
          }
          r.put("multi_row_parses", countSent(before, "FE=> Parse(", "values ($1, $2),($3, $4)"));
          r.put("after", one(c, "select 1"));
        }
      });
    }
    /* The same batch in autocommit: pgJDBC sends every insert before one
     * Sync, an implicit transaction over both shards. */
    check("batch_autocommit", r -> {
      try (Connection c = connect(url, "")) {
        try (PreparedStatement ins = c.prepareStatement("insert into users (id, name) values (?, ?)")) {
          for (long k : keys("batch_auto")) {
            ins.setLong(1, k);
            ins.setString(2, "name-" + k);
            ins.addBatch();
          }
          ins.executeBatch();
          r.put("ok", true);
        } catch (SQLException e) {
          failure(r, e.getNextException() != null ? e.getNextException() : e);
        }
        r.put("after", one(c, "select 1"));
      }
    });
  }

  /* ---- helpers ---- */

  static List<Object> preparedOverTransactions(Connection c, long[] ks, Map<String, Object> r)
      throws SQLException {
    int before = sent.size();
    List<Object> names = new ArrayList<>();
    c.setAutoCommit(false);
    /* Texts of their own: pgJDBC keeps a connection's statements by text,
     * and the other checks' inserts are named statements by now. */
    try (PreparedStatement ins = c.prepareStatement("insert into users (name, id) values (?, ?)");
         PreparedStatement sel = c.prepareStatement("select name from users where ? = id")) {
      for (long k : ks) {
        ins.setString(1, "name-" + k);
        ins.setLong(2, k);
        ins.executeUpdate();
        c.commit();
      }
      for (long k : ks) {
        sel.setLong(1, k);
        try (ResultSet rs = sel.executeQuery()) {
          names.add(rs.next() ? rs.getString(1) : null);
        }
        c.commit();
      }
    }
    c.setAutoCommit(true);
    r.put("names", names);
    /* The statement names of the insert's Parse messages, in order ("null":
     * the unnamed statement). */
    List<Object> parses = new ArrayList<>();
    for (String line : sent.subList(before, sent.size()))
      if (line.contains("FE=> Parse(") && line.contains("insert into users (name, id)"))
        parses.add(line.replaceAll(".*Parse\\(stmt=([^,]*),.*", "$1"));
    return parses;
  }

  static void types(Map<String, Object> r, String params, long k) throws Exception {
    try (Connection c = connect(url, params)) {
      try (PreparedStatement ins = c.prepareStatement(
               "insert into users (id, name, tags, at, amount, data) values (?, ?, ?, ?, ?, ?)")) {
        ins.setLong(1, k);
        ins.setNull(2, Types.VARCHAR);
        ins.setArray(3, c.createArrayOf("text", new String[] {"a", "b c", "quote\"d", null}));
        ins.setObject(4, OffsetDateTime.parse("2024-02-29T13:14:15.123456Z"));
        ins.setBigDecimal(5, new BigDecimal("12345.678901234567890"));
        byte[] data = new byte[256];
        for (int i = 0; i < 256; i++) data[i] = (byte) i;
        ins.setBytes(6, data);
        ins.executeUpdate();
      }
      try (PreparedStatement sel =
               c.prepareStatement("select name, tags, at, amount, data from users where id = ?")) {
        sel.setLong(1, k);
        try (ResultSet rs = sel.executeQuery()) {
          rs.next();
          r.put("name", rs.getString(1));
          r.put("tags", Arrays.asList((Object[]) rs.getArray(2).getArray()));
          r.put("at", rs.getObject(3, OffsetDateTime.class).toString());
          r.put("amount", rs.getBigDecimal(4).toPlainString());
          StringBuilder hex = new StringBuilder();
          for (byte b : rs.getBytes(5)) hex.append(String.format("%02x", b));
          r.put("data", hex.toString());
        }
      }
    }
  }

  /* Every connection but the one check_pinning opens says the server is
   * 9.0 or later: pgJDBC then sends extra_float_digits and application_name
   * as startup parameters. Without it, it sends them as two SETs through
   * the extended protocol, which pgshard takes when they run (check
   * "pinning": neither way pins the session). */
  static final String TUNED = "assumeMinServerVersion=9.0";

  static Connection connect(String u, String params) throws Exception {
    return connectUntuned(u, params.isEmpty() ? TUNED : TUNED + "&" + params);
  }

  static Connection connectUntuned(String u, String params) throws Exception {
    /* pgJDBC's URL form: jdbc:postgresql://HOST:PORT/DB?user=...&password=... */
    URI uri = new URI(u);
    String[] userInfo = uri.getUserInfo().split(":", 2);
    String jdbc = "jdbc:postgresql://" + uri.getHost() + ":" + uri.getPort() + uri.getPath()
                  + "?user=" + userInfo[0] + "&password=" + userInfo[1]
                  + (params.isEmpty() ? "" : "&" + params);
    return DriverManager.getConnection(jdbc);
  }

  static PreparedStatement bind(Connection c, String sql, Object... params) throws SQLException {
    PreparedStatement s = c.prepareStatement(sql);
    for (int i = 0; i < params.length; i++) s.setObject(i + 1, params[i]);
    return s;
  }

  static int update(Connection c, String sql, Object... params) throws SQLException {
    try (PreparedStatement s = bind(c, sql, params)) {
      return s.executeUpdate();
    }
  }

  static Object one(Connection c, String sql, Object... params) throws SQLException {
    try (PreparedStatement s = bind(c, sql, params); ResultSet rs = s.executeQuery()) {
      return rs.next() ? rs.getObject(1) : null;
    }
  }

  static List<Object> column(Connection c, String sql) throws SQLException {
    List<Object> out = new ArrayList<>();
    try (PreparedStatement s = c.prepareStatement(sql); ResultSet rs = s.executeQuery()) {
      while (rs.next()) out.add(rs.getObject(1));
    }
    return out;
  }

  static void insertNamed(Connection c, long k) throws SQLException {
    update(c, "insert into users (id, name) values (?, ?)", k, "name-" + k);
  }

  static void failure(Map<String, Object> r, SQLException e) {
    r.put("sqlstate", e.getSQLState());
    String m = e.getMessage();
    /* pgJDBC prints "ERROR: <message>" (and a Where/Detail after). */
    r.put("message", m.replaceFirst("^ERROR: ", "").split("\n")[0]);
  }

  static long key(String role) {
    return Long.parseLong(keys.get(role));
  }

  static long[] keys(String role) {
    return Arrays.stream(keys.get(role).split(",")).mapToLong(Long::parseLong).toArray();
  }

  static int countSent(int from, String... parts) {
    int n = 0;
    outer:
    for (String line : sent.subList(from, sent.size())) {
      for (String p : parts)
        if (!line.contains(p)) continue outer;
      n++;
    }
    return n;
  }

  static void check(String name, Body body) {
    Map<String, Object> r = new LinkedHashMap<>();
    r.put("check", name);
    try {
      body.run(r);
    } catch (Throwable e) {
      r.put("error", e.toString());
      if (e instanceof SQLException) r.put("sqlstate", ((SQLException) e).getSQLState());
    }
    System.out.println(json(r));
    System.out.flush();
  }

  /* Every message pgJDBC logs at FINEST, formatted, in SENT. */
  static void captureDriverLog() {
    Logger log = Logger.getLogger("org.postgresql");
    log.setLevel(Level.FINEST);
    log.setUseParentHandlers(false);
    log.addHandler(new Handler() {
      public void publish(LogRecord rec) {
        String m = rec.getMessage();
        if (rec.getParameters() != null) {
          try {
            m = MessageFormat.format(m, rec.getParameters());
          } catch (IllegalArgumentException e) {
            /* keep the raw text */
          }
        }
        sent.add(m);
      }
      public void flush() {}
      public void close() {}
    });
  }

  static String json(Object v) {
    if (v == null) return "null";
    if (v instanceof Number || v instanceof Boolean) return v.toString();
    if (v instanceof Map) {
      StringJoiner j = new StringJoiner(", ", "{", "}");
      for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet())
        j.add(json(e.getKey().toString()) + ": " + json(e.getValue()));
      return j.toString();
    }
    if (v instanceof List) {
      StringJoiner j = new StringJoiner(", ", "[", "]");
      for (Object o : (List<?>) v) j.add(json(o));
      return j.toString();
    }
    StringBuilder s = new StringBuilder("\"");
    for (char ch : v.toString().toCharArray()) {
      if (ch == '"' || ch == '\\') s.append('\\').append(ch);
      else if (ch < 0x20) s.append(String.format("\\u%04x", (int) ch));
      else s.append(ch);
    }
    return s.append('"').toString();
  }
}
