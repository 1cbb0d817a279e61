// node-postgres (Debian node-pg, with its bundled pg-cursor) through pgshard:
// the checks of tests/integration/drivers/harness.py. Run by
// test_driver_node.py as
//   node check.js URL DENY_URL NAME=KEY[,KEY...] ...
// Prints one JSON object a line; a check that throws prints its error and
// the run goes on. node-pg sends one query at a time (the next only after
// ReadyForQuery): Parse/Bind/Describe/Execute/Sync in one write, Parse
// left out once a named statement is known to the connection; pg-cursor
// sends Execute with a row limit and Flush, and Sync only at close.
'use strict';
const pg = require('pg');
const Cursor = require('pg-cursor');

const [url, denyUrl, ...rest] = process.argv.slice(2);
const keys = Object.fromEntries(rest.map((a) => a.split('=', 2)));
const key = (role) => keys[role];
const keyList = (role) => keys[role].split(',');

async function check(name, body) {
  const r = { check: name };
  try {
    await body(r);
  } catch (e) {
    r.error = String(e.stack || e);
    if (e.code) r.sqlstate = e.code;
  }
  console.log(JSON.stringify(r));
}

async function connect(u) {
  const c = new pg.Client({ connectionString: u });
  await c.connect();
  return c;
}

const one = async (c, text, values) => {
  const res = await c.query({ text, values, rowMode: 'array' });
  return res.rows.length ? res.rows[0][0] : null;
};
const insertNamed = (c, k) =>
  c.query('insert into users (id, name) values ($1, $2)', [k, `name-${k}`]);

function failure(r, e) {
  if (!e.code) throw e;
  r.sqlstate = e.code;
  r.message = e.message;
}

function readCursor(cursor, n) {
  return new Promise((resolve, reject) =>
    cursor.read(n, (err, rows) => (err ? reject(err) : resolve(rows))));
}

async function types(r, k, binary) {
  const c = await connect(url);
  try {
    const data = Buffer.from([...Array(256).keys()]);
    await c.query('insert into users (id, name, tags, at, amount, data) values ($1, $2, $3, $4, $5, $6)',
      [k, null, ['a', 'b c', 'quote"d', null], '2024-02-29T13:14:15.123456Z',
        '12345.678901234567890', data]);
    let res;
    try {
      res = await c.query({
        text: 'select name, tags, at::text as at, amount, data from users where id = $1',
        values: [k], binary,
      });
    } catch (e) {
      // node-pg 8.8's binary: true ends its Bind after the count of result
      // format codes (1) without the code: PostgreSQL answers 08P01 too.
      failure(r, e);
      r.after = await one(c, 'select 1');
      return;
    }
    const row = res.rows[0];
    // JavaScript's Date keeps milliseconds only: at is read as text.
    r.name = row.name;
    r.tags = row.tags;
    r.at = row.at;
    r.amount = typeof row.amount === 'string' ? row.amount : String(row.amount);
    r.data = Buffer.from(row.data).toString('hex');
  } finally {
    await c.end();
  }
}

async function main() {
  await check('connect', async (r) => {
    const c = await connect(url);
    r.one = await one(c, 'select 1');
    await c.end();
  });
  const c = await connect(url);
  await check('crud', async (r) => {
    let n = 0;
    for (const role of ['crud_a', 'crud_b', 'deleted']) n += (await insertNamed(c, key(role))).rowCount;
    r.inserted = n;
    r.read = await one(c, 'select name from users where id = $1', [key('crud_a')]);
    r.updated = (await c.query('update users set name = $1 where id = $2',
      ['updated', key('crud_b')])).rowCount;
    r.deleted = (await c.query('delete from users where id = $1', [key('deleted')])).rowCount;
    r.left = Number(await one(c, 'select count(*) from users where id = $1', [key('deleted')]));
  });
  await check('merged', async (r) => {
    r.count = Number(await one(c, 'select count(*) from users'));
    const res = await c.query({ text: 'select id from users order by id desc limit 2', rowMode: 'array' });
    r.ids = res.rows.map((row) => Number(row[0]));
  });
  await check('ref', async (r) => {
    await c.query('begin');
    await c.query('insert into ref (k, v) values ($1, $2)', [1, 'one']);
    await c.query('commit');
    r.read = await one(c, 'select v from ref where k = $1', [1]);
  });
  await check('tx1', async () => {
    await c.query('begin');
    await insertNamed(c, key('tx1_commit'));
    await c.query('commit');
    await c.query('begin');
    await insertNamed(c, key('tx1_rollback'));
    await c.query('rollback');
  });
  await check('tx2', async () => {
    await c.query('begin');
    await insertNamed(c, key('tx2_commit_a'));
    await insertNamed(c, key('tx2_commit_b'));
    await c.query('commit');
    await c.query('begin');
    await insertNamed(c, key('tx2_rollback_a'));
    await insertNamed(c, key('tx2_rollback_b'));
    await c.query('rollback');
  });
  // Named statements: node-pg parses each once per connection and then
  // only binds it, in a transaction of its own each time.
  await check('prepared', async (r) => {
    for (const k of keyList('prep')) {
      await c.query('begin');
      await c.query({ name: 'ins', text: 'insert into users (id, name) values ($1, $2)',
        values: [k, `name-${k}`] });
      await c.query('commit');
    }
    r.names = [];
    for (const k of keyList('prep')) {
      await c.query('begin');
      const res = await c.query({ name: 'sel', text: 'select name from users where id = $1',
        values: [k] });
      await c.query('commit');
      r.names.push(res.rows[0] ? res.rows[0].name : null);
    }
  });
  await check('types_text', (r) => types(r, key('types_text'), false));
  await check('types_binary', (r) => types(r, key('types_binary'), true));
  await check('unique', async (r) => {
    try {
      await c.query('insert into users (id, name) values ($1, $2)', [key('crud_a'), 'again']);
    } catch (e) {
      failure(r, e);
    }
    r.after = await one(c, 'select 1');
  });
  await check('refused', async (r) => {
    const d = await connect(denyUrl);
    try {
      await d.query('update users set name = $1', ['everywhere']);
    } catch (e) {
      failure(r, e);
    }
    r.after = await one(d, 'select 1');
    await d.end();
  });
  await check('cursor_key', async (r) => {
    await insertNamed(c, key('cursor'));
    await c.query('begin');
    const cursor = c.query(new Cursor(
      'select g, u.name from users u, generate_series(1, 50) g where u.id = $1 order by g',
      [key('cursor')], { rowMode: 'array' }));
    r.rows = 0;
    r.sum = 0;
    r.reads = 0;
    for (;;) {
      const rows = await readCursor(cursor, 10);
      r.reads++;
      if (rows.length === 0) break;
      r.rows += rows.length;
      for (const row of rows) r.sum += row[0];
    }
    await new Promise((resolve) => cursor.close(resolve));
    await c.query('commit');
  });
  await check('cursor_keyless', async (r) => {
    await c.query('begin');
    const cursor = c.query(new Cursor('select id from users order by id', [], { rowMode: 'array' }));
    try {
      r.ids = (await readCursor(cursor, 2)).map((row) => Number(row[0]));
      await new Promise((resolve) => cursor.close(resolve));
      await c.query('commit');
    } catch (e) {
      failure(r, e);
      await c.query('rollback');
    }
    r.after = await one(c, 'select 1');
  });
  await check('notify', async (r) => {
    const listener = await connect(url);
    const notifier = await connect(url);
    try {
      const got = new Promise((resolve, reject) => {
        listener.on('notification', resolve);
        setTimeout(() => reject(new Error('no notification within 10 s')), 10000).unref();
      });
      await listener.query('listen drivers_chan');
      await notifier.query("notify drivers_chan, 'hello through pgshard'");
      const msg = await got;
      r.channel = msg.channel;
      r.payload = msg.payload;
    } finally {
      await listener.end();
      await notifier.end();
    }
  });
  // node-pg's own: several queries handed to the client at once are queued
  // by the driver and sent one after another, each after the previous one's
  // ReadyForQuery; over both shards in one transaction.
  await check('queued', async (r) => {
    const ks = keyList('queued');
    await c.query('begin');
    const all = ks.map((k) => insertNamed(c, k));
    all.push(c.query('commit'));
    r.rows = (await Promise.all(all)).slice(0, ks.length).reduce((n, res) => n + res.rowCount, 0);
  });
  await c.end();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
