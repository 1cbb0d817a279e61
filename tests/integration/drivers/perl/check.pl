# DBD::Pg (Debian libdbd-pg-perl, DBI, libpq underneath) through pgshard:
# the checks of tests/integration/drivers/harness.py. Run by
# test_driver_perl.py as
#   perl check.pl URL DENY_URL NAME=KEY[,KEY...] ...
# Prints one JSON object a line; a check that dies prints its error and the
# run goes on. DBD::Pg prepares every statement on the server (a named
# statement, PQprepare) and reuses it on each execute; it reads results in
# text only.
use strict;
use warnings;
use DBI;
use DBD::Pg qw(:pg_types);
use JSON::PP;
use IO::Select;

my ($URL, $DENY_URL, @rest) = @ARGV;
my %KEYS = map { split /=/, $_, 2 } @rest;
sub key { $KEYS{ $_[0] } + 0 }
sub keys_of { map { $_ + 0 } split /,/, $KEYS{ $_[0] } }
my $json = JSON::PP->new->canonical;

sub check {
    my ($name, $body) = @_;
    my %r = (check => $name);
    eval { $body->(\%r); 1 } or do {
        $r{error} = "$@";
        $r{sqlstate} = $DBI::state if $DBI::state;
    };
    print $json->encode(\%r), "\n";
}

# DBI's DSN from postgresql://USER:PW@HOST:PORT/DB.
sub connect_url {
    my ($url) = @_;
    my ($user, $pw, $host, $port, $db) = $url =~ m{^postgresql://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)$}
        or die "bad url $url";
    return DBI->connect("dbi:Pg:dbname=$db;host=$host;port=$port", $user, $pw,
                        { AutoCommit => 1, RaiseError => 1, PrintError => 0, PrintWarn => 0 });
}

sub one {
    my ($dbh, $sql, @params) = @_;
    my ($v) = $dbh->selectrow_array($sql, undef, @params);
    return $v;
}

sub insert_named {
    my ($dbh, $k) = @_;
    return $dbh->do('insert into users (id, name) values (?, ?)', undef, $k, "name-$k");
}

# SQLSTATE and primary message of the error DBI just raised.
sub failure {
    my ($r, $dbh) = @_;
    $r->{sqlstate} = $dbh->state;
    (my $m = $dbh->errstr) =~ s/^ERROR:\s+//;
    $r->{message} = (split /\n/, $m)[0];
}

check('connect', sub {
    my $c = connect_url($URL);
    $_[0]{one} = one($c, 'select 1') + 0;
    $c->disconnect;
});
my $c = connect_url($URL);
check('crud', sub {
    my $r = shift;
    my $n = 0;
    $n += insert_named($c, key($_)) for qw(crud_a crud_b deleted);
    $r->{inserted} = $n;
    $r->{read} = one($c, 'select name from users where id = ?', key('crud_a'));
    $r->{updated} = $c->do('update users set name = ? where id = ?', undef, 'updated', key('crud_b')) + 0;
    $r->{deleted} = $c->do('delete from users where id = ?', undef, key('deleted')) + 0;
    $r->{left} = one($c, 'select count(*) from users where id = ?', key('deleted')) + 0;
});
check('merged', sub {
    my $r = shift;
    $r->{count} = one($c, 'select count(*) from users') + 0;
    $r->{ids} = [map { $_ + 0 } @{ $c->selectcol_arrayref('select id from users order by id desc limit 2') }];
});
check('ref', sub {
    my $r = shift;
    $c->begin_work;
    $c->do('insert into ref (k, v) values (?, ?)', undef, 1, 'one');
    $c->commit;
    $r->{read} = one($c, 'select v from ref where k = ?', 1);
});
check('tx1', sub {
    $c->begin_work;
    insert_named($c, key('tx1_commit'));
    $c->commit;
    $c->begin_work;
    insert_named($c, key('tx1_rollback'));
    $c->rollback;
});
check('tx2', sub {
    $c->begin_work;
    insert_named($c, key('tx2_commit_a'));
    insert_named($c, key('tx2_commit_b'));
    $c->commit;
    $c->begin_work;
    insert_named($c, key('tx2_rollback_a'));
    insert_named($c, key('tx2_rollback_b'));
    $c->rollback;
});
# One statement handle each, prepared on the server once and executed in a
# transaction of its own each time.
check('prepared', sub {
    my $r = shift;
    my $ins = $c->prepare('insert into users (id, name) values (?, ?)');
    my $sel = $c->prepare('select name from users where id = ?');
    for my $k (keys_of('prep')) {
        $c->begin_work;
        $ins->execute($k, "name-$k");
        $c->commit;
    }
    $r->{names} = [];
    for my $k (keys_of('prep')) {
        $c->begin_work;
        $sel->execute($k);
        my ($name) = $sel->fetchrow_array;
        $sel->finish;
        $c->commit;
        push @{ $r->{names} }, $name;
    }
});
check('types_text', sub {
    my $r = shift;
    my $k = key('types_text');
    my $ins = $c->prepare('insert into users (id, name, tags, at, amount, data) values (?, ?, ?, ?, ?, ?)');
    $ins->bind_param(6, undef, { pg_type => PG_BYTEA });
    $ins->execute($k, undef, ['a', 'b c', 'quote"d', undef], '2024-02-29 13:14:15.123456+00',
                  '12345.678901234567890', join('', map { chr } 0 .. 255));
    my $row = $c->selectrow_hashref('select name, tags, at, amount, data from users where id = ?', undef, $k);
    $r->{$_} = $row->{$_} for qw(name tags at amount);
    $r->{data} = unpack('H*', $row->{data});
});
check('unique', sub {
    my $r = shift;
    eval { insert_named($c, key('crud_a')); 1 } or failure($r, $c);
    $r->{after} = one($c, 'select 1') + 0;
});
check('refused', sub {
    my $r = shift;
    my $d = connect_url($DENY_URL);
    eval { $d->do('update users set name = ?', undef, 'everywhere'); 1 } or failure($r, $d);
    $r->{after} = one($d, 'select 1') + 0;
    $d->disconnect;
});
# Under 2pc a COPY over several shards runs in a transaction.
check('copy', sub {
    my $r = shift;
    $c->begin_work;
    $c->do('copy users (id, name) from stdin');
    $c->pg_putcopydata("$_\tname-$_\n") for keys_of('copy');
    $c->pg_putcopyend;
    $c->commit;
    $r->{rows} = scalar(keys_of('copy'));
});
# The cursors on a connection of their own: in session pooling, a session
# holding servers on both shards sends FETCH to both (pgshard's known bug,
# README "Drivers and ORMs: other languages"), and the shard without the
# cursor answers 34000.
check('cursor_key', sub {
    my $r = shift;
    insert_named($c, key('cursor'));
    my $cur = connect_url($URL);
    $cur->begin_work;
    $cur->do('declare c cursor for select g, u.name from users u, generate_series(1, 50) g'
             . ' where u.id = ? order by g', undef, key('cursor'));
    @$r{qw(rows sum fetches)} = (0, 0, 0);
    while (1) {
        my $rows = $cur->selectall_arrayref('fetch 10 from c');
        $r->{fetches}++;
        last unless @$rows;
        $r->{rows} += @$rows;
        $r->{sum} += $_->[0] for @$rows;
    }
    $cur->do('close c');
    $cur->commit;
    $cur->disconnect;
});
check('cursor_keyless', sub {
    my $r = shift;
    my $cur = connect_url($URL);
    $cur->begin_work;
    eval {
        $cur->do('declare c cursor for select id from users order by id');
        $r->{ids} = [map { $_->[0] + 0 } @{ $cur->selectall_arrayref('fetch 2 from c') }];
        $cur->commit;
        1;
    } or do {
        failure($r, $cur);
        $cur->rollback;
    };
    $r->{after} = one($cur, 'select 1') + 0;
    $cur->disconnect;
});
check('notify', sub {
    my $r = shift;
    my $listener = connect_url($URL);
    my $notifier = connect_url($URL);
    $listener->do('listen drivers_chan');
    $notifier->do(q{notify drivers_chan, 'hello through pgshard'});
    my $socket = IO::Select->new($listener->{pg_socket});
    my $deadline = time + 10;
    my $got;
    while (!($got = $listener->pg_notifies) && time < $deadline) {
        $socket->can_read(1);
    }
    ($r->{channel}, undef, $r->{payload}) = @$got if $got;
    $listener->disconnect;
    $notifier->disconnect;
});
$c->disconnect;
