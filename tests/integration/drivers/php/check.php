<?php
// PDO pgsql (Debian php-pgsql, libpq underneath) through pgshard: the checks
// of tests/integration/drivers/harness.py. Run by test_driver_php.py as
//   php check.php URL DENY_URL NAME=KEY[,KEY...] ...
// Prints one JSON object a line; a check that throws prints its error and
// the run goes on. PDO prepares each statement on the server (a named
// statement, PQprepare) and reuses it on each execute; results are text
// (bytea comes as a stream).

[$URL, $DENY_URL] = [$argv[1], $argv[2]];
$KEYS = [];
foreach (array_slice($argv, 3) as $arg) {
    [$name, $value] = explode('=', $arg, 2);
    $KEYS[$name] = $value;
}
function key_of(string $role): int { global $KEYS; return (int)$KEYS[$role]; }
function keys_of(string $role): array { global $KEYS; return array_map('intval', explode(',', $KEYS[$role])); }

function check(string $name, callable $body): void {
    $r = ['check' => $name];
    try {
        $body($r);
    } catch (Throwable $e) {
        $r['error'] = get_class($e) . ': ' . $e->getMessage();
        if ($e instanceof PDOException) $r['sqlstate'] = $e->getCode();
    }
    echo json_encode($r, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), "\n";
}

// PDO's DSN from postgresql://USER:PW@HOST:PORT/DB. PGSQL_ATTR_DISABLE_PREPARES
// (parameters with PQexecParams, no named statement) on every connection but
// the one of check "prepared": PDO sends an SQL "DEALLOCATE pdo_stmt_..."
// when a statement object goes away, and pgshard forwards it to the server,
// which knows the statement under pgshard's own name (26000): inside a
// transaction that aborts it, and PDO's commit() then rolls it back without
// a word (pgshard's known bug, README "Drivers and ORMs: other languages").
function connect_url(string $url, bool $server_prepares = false): PDO {
    $u = parse_url($url);
    return new PDO(sprintf('pgsql:host=%s;port=%d;dbname=%s', $u['host'], $u['port'], ltrim($u['path'], '/')),
                   $u['user'], $u['pass'], [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
                                            PDO::PGSQL_ATTR_DISABLE_PREPARES => !$server_prepares]);
}

function one(PDO $c, string $sql, array $params = []) {
    $s = $c->prepare($sql);
    $s->execute($params);
    $v = $s->fetchColumn();
    return $v === false ? null : $v;
}

function insert_named(PDO $c, int $k): int {
    $s = $c->prepare('insert into users (id, name) values (?, ?)');
    $s->execute([$k, "name-$k"]);
    return $s->rowCount();
}

// SQLSTATE and primary message of a PDOException.
function failure(array &$r, PDOException $e): void {
    $r['sqlstate'] = $e->errorInfo[0] ?? $e->getCode();
    $m = preg_replace('/^ERROR:\s+/', '', $e->errorInfo[2] ?? $e->getMessage());
    $r['message'] = explode("\n", $m)[0];
}

check('connect', function (&$r) use ($URL) { $r['one'] = (int)one(connect_url($URL), 'select 1'); });
$c = connect_url($URL);
check('crud', function (&$r) use ($c) {
    $r['inserted'] = array_sum(array_map(fn($role) => insert_named($c, key_of($role)), ['crud_a', 'crud_b', 'deleted']));
    $r['read'] = one($c, 'select name from users where id = ?', [key_of('crud_a')]);
    $s = $c->prepare('update users set name = ? where id = ?');
    $s->execute(['updated', key_of('crud_b')]);
    $r['updated'] = $s->rowCount();
    $s = $c->prepare('delete from users where id = ?');
    $s->execute([key_of('deleted')]);
    $r['deleted'] = $s->rowCount();
    $r['left'] = (int)one($c, 'select count(*) from users where id = ?', [key_of('deleted')]);
});
check('merged', function (&$r) use ($c) {
    $r['count'] = (int)one($c, 'select count(*) from users');
    $r['ids'] = array_map('intval', $c->query('select id from users order by id desc limit 2')->fetchAll(PDO::FETCH_COLUMN));
});
check('ref', function (&$r) use ($c) {
    $c->beginTransaction();
    $c->prepare('insert into ref (k, v) values (?, ?)')->execute([1, 'one']);
    $c->commit();
    $r['read'] = one($c, 'select v from ref where k = ?', [1]);
});
check('tx1', function (&$r) use ($c) {
    $c->beginTransaction();
    insert_named($c, key_of('tx1_commit'));
    $c->commit();
    $c->beginTransaction();
    insert_named($c, key_of('tx1_rollback'));
    $c->rollBack();
});
check('tx2', function (&$r) use ($c) {
    $c->beginTransaction();
    insert_named($c, key_of('tx2_commit_a'));
    insert_named($c, key_of('tx2_commit_b'));
    $c->commit();
    $c->beginTransaction();
    insert_named($c, key_of('tx2_rollback_a'));
    insert_named($c, key_of('tx2_rollback_b'));
    $c->rollBack();
});
// One statement each, prepared on the server once and executed in a
// transaction of its own each time; the objects (and their DEALLOCATE) go
// away outside a transaction.
check('prepared', function (&$r) use ($URL) {
    $c = connect_url($URL, true);
    $ins = $c->prepare('insert into users (id, name) values (?, ?)');
    $sel = $c->prepare('select name from users where id = ?');
    foreach (keys_of('prep') as $k) {
        $c->beginTransaction();
        $ins->execute([$k, "name-$k"]);
        $c->commit();
    }
    $r['names'] = [];
    foreach (keys_of('prep') as $k) {
        $c->beginTransaction();
        $sel->execute([$k]);
        $r['names'][] = $sel->fetchColumn();
        $sel->closeCursor();
        $c->commit();
    }
});
check('types_text', function (&$r) use ($c) {
    $k = key_of('types_text');
    $s = $c->prepare('insert into users (id, name, tags, at, amount, data) values (?, ?, ?, ?, ?, ?)');
    $s->bindValue(1, $k, PDO::PARAM_INT);
    $s->bindValue(2, null, PDO::PARAM_NULL);
    $s->bindValue(3, '{a,"b c","quote\"d",NULL}');
    $s->bindValue(4, '2024-02-29 13:14:15.123456+00');
    $s->bindValue(5, '12345.678901234567890');
    $s->bindValue(6, implode('', array_map('chr', range(0, 255))), PDO::PARAM_LOB);
    $s->execute();
    $s = $c->prepare('select name, tags, at, amount, data from users where id = ?');
    $s->execute([$k]);
    $row = $s->fetch(PDO::FETCH_ASSOC);
    foreach (['name', 'tags', 'at', 'amount'] as $col) $r[$col] = $row[$col];
    $r['data'] = bin2hex(is_resource($row['data']) ? stream_get_contents($row['data']) : $row['data']);
});
check('unique', function (&$r) use ($c) {
    try {
        insert_named($c, key_of('crud_a'));
    } catch (PDOException $e) {
        failure($r, $e);
    }
    $r['after'] = (int)one($c, 'select 1');
});
check('refused', function (&$r) use ($DENY_URL) {
    $d = connect_url($DENY_URL);
    try {
        $d->prepare('update users set name = ?')->execute(['everywhere']);
    } catch (PDOException $e) {
        failure($r, $e);
    }
    $r['after'] = (int)one($d, 'select 1');
});
// pgsqlCopyFromArray; under 2pc a COPY over several shards runs in a
// transaction.
check('copy', function (&$r) use ($c) {
    $c->beginTransaction();
    $rows = array_map(fn($k) => "$k\tname-$k", keys_of('copy'));
    $r['ok'] = $c->pgsqlCopyFromArray('users', $rows, "\t", '\\\\N', 'id, name');
    $c->commit();
    $r['rows'] = (int)one($c, 'select count(*) from users where id = any(?::bigint[])',
                          ['{' . implode(',', keys_of('copy')) . '}']);
});
// The cursors on a connection of their own: in session pooling, a session
// holding servers on both shards sends FETCH to both (pgshard's known bug,
// README "Drivers and ORMs: other languages"), and the shard without the
// cursor answers 34000.
check('cursor_key', function (&$r) use ($c, $URL) {
    insert_named($c, key_of('cursor'));
    $cur = connect_url($URL);
    $cur->beginTransaction();
    $cur->prepare('declare c cursor for select g, u.name from users u, generate_series(1, 50) g'
                  . ' where u.id = ? order by g')->execute([key_of('cursor')]);
    $r['rows'] = $r['sum'] = $r['fetches'] = 0;
    while (true) {
        $rows = $cur->query('fetch 10 from c')->fetchAll(PDO::FETCH_NUM);
        $r['fetches']++;
        if (!$rows) break;
        $r['rows'] += count($rows);
        foreach ($rows as $row) $r['sum'] += (int)$row[0];
    }
    $cur->exec('close c');
    $cur->commit();
});
check('cursor_keyless', function (&$r) use ($URL) {
    $cur = connect_url($URL);
    $cur->beginTransaction();
    try {
        $cur->exec('declare c cursor for select id from users order by id');
        $r['ids'] = array_map('intval', $cur->query('fetch 2 from c')->fetchAll(PDO::FETCH_COLUMN));
        $cur->commit();
    } catch (PDOException $e) {
        failure($r, $e);
        $cur->rollBack();
    }
    $r['after'] = (int)one($cur, 'select 1');
});
check('notify', function (&$r) use ($URL) {
    $listener = connect_url($URL);
    $notifier = connect_url($URL);
    $listener->exec('listen drivers_chan');
    $notifier->exec("notify drivers_chan, 'hello through pgshard'");
    $got = $listener->pgsqlGetNotify(PDO::FETCH_ASSOC, 10000);
    if ($got) {
        $r['channel'] = $got['message'];
        $r['payload'] = $got['payload'];
    }
});
