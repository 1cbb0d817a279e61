# ruby-pg (Debian ruby-pg, libpq underneath) through pgshard: the checks of
# tests/integration/drivers/harness.py. Run by test_driver_ruby.py as
#   ruby check.rb URL DENY_URL NAME=KEY[,KEY...] ...
# Prints one JSON object a line; a check that raises prints its error and
# the run goes on. Results are decoded by PG::BasicTypeMapForResults; in
# binary it has no decoder for arrays and numeric, which are printed as
# {"binary": HEX}. The cursors are SQL cursors (DECLARE / FETCH).
require 'pg'
require 'json'
require 'time'

URL, DENY_URL, *rest = ARGV
KEYS = rest.map { |a| a.split('=', 2) }.to_h
def key(role) = Integer(KEYS.fetch(role))
def keys(role) = KEYS.fetch(role).split(',').map { |k| Integer(k) }

def check(name)
  r = { 'check' => name }
  begin
    yield r
  rescue StandardError => e
    r['error'] = "#{e.class}: #{e.message}"
    r['sqlstate'] = e.result&.error_field(PG::PG_DIAG_SQLSTATE) if e.is_a?(PG::Error)
  end
  puts JSON.generate(r)
  $stdout.flush
end

def connect(url)
  c = PG.connect(url)
  # NOTICEs (a rolled-back transaction's) would go to stderr: keep quiet.
  c.set_notice_processor { |_| }
  c
end

def one(c, sql, params = [])
  res = c.exec_params(sql, params)
  res.ntuples.zero? ? nil : res.getvalue(0, 0)
end

def insert_named(c, k)
  c.exec_params('insert into users (id, name) values ($1, $2)', [k, "name-#{k}"])
end

def failure(r, e)
  raise e unless e.is_a?(PG::Error) && e.result
  r['sqlstate'] = e.result.error_field(PG::PG_DIAG_SQLSTATE)
  r['message'] = e.result.error_field(PG::PG_DIAG_MESSAGE_PRIMARY)
end

def as_json(value)
  case value
  when Time then value.utc.iso8601(6)
  when BigDecimal then value.to_s('F')
  else value
  end
end

def types(r, k, format)
  c = connect(URL)
  tags = PG::TextEncoder::Array.new(elements_type: PG::TextEncoder::String.new)
                              .encode(['a', 'b c', 'quote"d', nil])
  data = (0..255).to_a.pack('C*')
  c.exec_params('insert into users (id, name, tags, at, amount, data) values ($1, $2, $3, $4, $5, $6)',
                [k, nil, tags, '2024-02-29 13:14:15.123456+00', '12345.678901234567890',
                 { value: data, format: 1 }])
  c.type_map_for_results = PG::BasicTypeMapForResults.new(c)
  res = c.exec_params('select name, tags, at, amount, data from users where id = $1', [k], format)
  row = res.values.first
  undecoded = ->(v) { v.is_a?(String) ? { 'binary' => v.unpack1('H*') } : as_json(v) }
  r['name'] = row[0]
  r['tags'] = format == 1 ? undecoded.call(row[1]) : row[1]
  r['at'] = as_json(row[2])
  r['amount'] = format == 1 ? undecoded.call(row[3]) : as_json(row[3])
  r['data'] = row[4].unpack1('H*')
ensure
  c&.close
end

check('connect') { |r| c = connect(URL); r['one'] = Integer(one(c, 'select 1')); c.close }
c = connect(URL)
check('crud') do |r|
  r['inserted'] = %w[crud_a crud_b deleted].sum { |role| insert_named(c, key(role)).cmd_tuples }
  r['read'] = one(c, 'select name from users where id = $1', [key('crud_a')])
  r['updated'] = c.exec_params('update users set name = $1 where id = $2',
                               ['updated', key('crud_b')]).cmd_tuples
  r['deleted'] = c.exec_params('delete from users where id = $1', [key('deleted')]).cmd_tuples
  r['left'] = Integer(one(c, 'select count(*) from users where id = $1', [key('deleted')]))
end
check('merged') do |r|
  r['count'] = Integer(one(c, 'select count(*) from users'))
  r['ids'] = c.exec('select id from users order by id desc limit 2').column_values(0).map { |v| Integer(v) }
end
check('ref') do |r|
  c.transaction { c.exec_params('insert into ref (k, v) values ($1, $2)', [1, 'one']) }
  r['read'] = one(c, 'select v from ref where k = $1', [1])
end
check('tx1') do
  c.transaction { insert_named(c, key('tx1_commit')) }
  c.exec('begin')
  insert_named(c, key('tx1_rollback'))
  c.exec('rollback')
end
check('tx2') do
  c.transaction do
    insert_named(c, key('tx2_commit_a'))
    insert_named(c, key('tx2_commit_b'))
  end
  c.exec('begin')
  insert_named(c, key('tx2_rollback_a'))
  insert_named(c, key('tx2_rollback_b'))
  c.exec('rollback')
end
# Statements prepared once (protocol Parse, named) and run in a transaction
# of their own each time.
check('prepared') do |r|
  c.prepare('ins', 'insert into users (id, name) values ($1, $2)')
  c.prepare('sel', 'select name from users where id = $1')
  keys('prep').each { |k| c.transaction { c.exec_prepared('ins', [k, "name-#{k}"]) } }
  r['names'] = keys('prep').map { |k| c.transaction { c.exec_prepared('sel', [k]).getvalue(0, 0) } }
end
check('types_text') { |r| types(r, key('types_text'), 0) }
check('types_binary') { |r| types(r, key('types_binary'), 1) }
check('unique') do |r|
  begin
    c.exec_params('insert into users (id, name) values ($1, $2)', [key('crud_a'), 'again'])
  rescue PG::Error => e
    failure(r, e)
  end
  r['after'] = Integer(one(c, 'select 1'))
end
check('refused') do |r|
  d = connect(DENY_URL)
  begin
    d.exec_params('update users set name = $1', ['everywhere'])
  rescue PG::Error => e
    failure(r, e)
  end
  r['after'] = Integer(one(d, 'select 1'))
  d.close
end
# Under 2pc a COPY over several shards runs in a transaction.
check('copy') do |r|
  c.transaction do
    res = c.copy_data('copy users (id, name) from stdin') do
      keys('copy').each { |k| c.put_copy_data("#{k}\tname-#{k}\n") }
    end
    r['rows'] = res.cmd_tuples
  end
end
# The cursors on a connection of their own: in session pooling, a session
# holding servers on both shards sends FETCH to both (pgshard's known bug,
# README "Drivers and ORMs: other languages"), and the shard without the
# cursor answers 34000.
check('cursor_key') do |r|
  insert_named(c, key('cursor'))
  cur = connect(URL)
  cur.transaction do
    cur.exec_params('declare c cursor for select g, u.name from users u, generate_series(1, 50) g' \
                    ' where u.id = $1 order by g', [key('cursor')])
    r['rows'] = r['sum'] = r['fetches'] = 0
    loop do
      res = cur.exec('fetch 10 from c')
      r['fetches'] += 1
      break if res.ntuples.zero?
      r['rows'] += res.ntuples
      r['sum'] += res.column_values(0).sum { |v| Integer(v) }
    end
    cur.exec('close c')
  end
  cur.close
end
check('cursor_keyless') do |r|
  cur = connect(URL)
  begin
    cur.transaction do
      cur.exec('declare c cursor for select id from users order by id')
      r['ids'] = cur.exec('fetch 2 from c').column_values(0).map { |v| Integer(v) }
    end
  rescue PG::Error => e
    failure(r, e)
  end
  r['after'] = Integer(one(cur, 'select 1'))
  cur.close
end
check('notify') do |r|
  listener = connect(URL)
  notifier = connect(URL)
  listener.exec('listen drivers_chan')
  notifier.exec("notify drivers_chan, 'hello through pgshard'")
  listener.wait_for_notify(10) do |channel, _pid, payload|
    r['channel'] = channel
    r['payload'] = payload
  end
  listener.close
  notifier.close
end
c.close
